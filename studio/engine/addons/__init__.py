"""Add-ons on a loaded diffusers pipeline, one module each (as diffusers' ``loaders/``):

- ``lora``: LoRAs as named PEFT adapters (``LoraSet``, ``lora_set``);
- ``embeddings``: textual-inversion embeddings (``load_embeddings``, ``prompt_with_embeddings``);
- ``vae``: a VAE override (``load_vae``, ``swap_vae``, ``restore_vae``);
- ``hashes``: what A1111 writes for them in the infotext (``lora_hash``, ``embedding_hash``, ``vae_hash``);
- ``common``: what they share (the pipeline's base model, the libraries kept quiet while one loads).

Their files are read by ``studio.engine.weights``: pickles only with ``torch.load(weights_only=True)``, a pickle that
would run code refused unread. The names below are the package's API (``from studio.engine import addons``).
"""

from ..weights import file_key, read_tensors
from .common import BASE_LABELS, model_base
from .embeddings import LoadedEmbedding, embedding_vectors, load_embeddings, loaded_embeddings, prompt_with_embeddings
from .hashes import addnet_hash, embedding_hash, lora_hash, vae_hash
from .lora import LoadedLora, LoraSet, lora_set
from .vae import load_vae, own_vae, restore_vae, swap_vae

__all__ = [
    "BASE_LABELS",
    "LoadedEmbedding",
    "LoadedLora",
    "LoraSet",
    "addnet_hash",
    "embedding_hash",
    "embedding_vectors",
    "file_key",
    "load_embeddings",
    "load_vae",
    "loaded_embeddings",
    "lora_hash",
    "lora_set",
    "model_base",
    "own_vae",
    "prompt_with_embeddings",
    "read_tensors",
    "restore_vae",
    "swap_vae",
    "vae_hash",
]
