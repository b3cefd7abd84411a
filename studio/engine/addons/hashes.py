"""The add-ons' hashes as A1111 writes them in the infotext (its modules/hashes.py: calculate_sha256 and
addnet_hash_safetensors); one implementation, cached on disk by path, size and mtime: studio.core.filehash."""

from __future__ import annotations

from pathlib import Path

from ...core.filehash import embedding_short_hash, file_hash, lora_short_hash, vae_short_hash


def addnet_hash(path: str | Path) -> str:
    """The full "addnet" sha256: a ``.safetensors`` file's bytes after its 8-byte length and JSON header (so that
    editing the metadata keeps the hash), the whole file for any other format."""
    return file_hash(path, "addnet")


def lora_hash(path: str | Path) -> str:
    """A1111's LoRA short hash (``Lora hashes: "name: abcdef012345"``): the first 12 hex digits of the addnet hash."""
    return lora_short_hash(path)


def embedding_hash(path: str | Path) -> str:
    """A1111's textual-inversion hash (``TI hashes``): the first 12 hex digits of the file's sha256."""
    return embedding_short_hash(path)


def vae_hash(path: str | Path) -> str:
    """A1111's ``VAE hash``: the first 10 hex digits of the file's sha256."""
    return vae_short_hash(path)
