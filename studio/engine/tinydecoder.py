"""Tiny latent decoders (TAESD, TAESDXL, the built-in models' own) as true-colour live previews and, when the artist
asks, as the final decode.

The files come in two layouts, both loaded into diffusers' ``AutoencoderTiny``:
- madebyollin's original one (ComfyUI's ``models/vae_approx/taesd_decoder.safetensors``, A1111's
  ``models/VAE-approx/``): the decoder is an ``nn.Sequential`` whose keys are ``1.weight``, ``3.conv.0.weight``...
  Index 0 is the input clamp (``tanh(x / 3) * 3``), which diffusers' ``DecoderTiny.forward`` applies itself, so the
  original layer ``k`` is diffusers' ``decoder.layers.{k - 1}``. ReLU and Upsample layers hold no weights: the gaps
  between indices, and the convolutions' shapes, give the architecture (stages, blocks per stage, width, latent
  channels), so taesd (4 channels, 8x), taesd3 / taef1 (16 channels) and our own 4x decoders all read the same way.
- a diffusers ``AutoencoderTiny`` folder (``config.json`` + weights), read with ``from_pretrained``.

A tiny decoder reads the latents as the sampler carries them (already multiplied by the VAE's scaling factor), as
TAESD does; it writes [-1, 1] RGB at the full VAE's output size. A1111's older ``VAE-approx/model.pt`` is a different
network and is not read.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ModelError
from .preview import to_uint8
from .weights import file_key, read_tensors

log = logging.getLogger(__name__)

# The studio's own decoder file, kept in a model's folder (the built-in models ship one).
OWN_FILE = "tiny_decoder.safetensors"
# ComfyUI's and the original repository's names, by the family whose latents they read.
FAMILY_STEMS = {"sd": ("taesd_decoder", "taesd"), "sdxl": ("taesdxl_decoder", "taesdxl"), "sd3": ("taesd3_decoder",)}
SUFFIXES = (".safetensors", ".pth", ".pt")
APPROX_DIRS = ("vae_approx", "VAE-approx")  # ComfyUI's and A1111's folder names

_KEY = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class Architecture:
    latent_channels: int
    width: int
    blocks: tuple[int, ...]  # AutoencoderTinyBlocks per stage; an x2 upsampling between stages
    out_channels: int = 3

    @property
    def scale(self) -> int:
        return 2 ** (len(self.blocks) - 1)


def build(arch: Architecture):
    """An ``AutoencoderTiny`` whose decoder has ``arch`` (its encoder is a one-block stub: only decoding is used)."""
    from diffusers import AutoencoderTiny

    n = len(arch.blocks)
    return AutoencoderTiny(
        latent_channels=arch.latent_channels,
        out_channels=arch.out_channels,
        decoder_block_out_channels=(arch.width,) * n,
        num_decoder_blocks=arch.blocks,
        encoder_block_out_channels=(8,),
        num_encoder_blocks=(1,),
        upsampling_scaling_factor=2,
    )


def _strip_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    """A decoder-only file as is; a whole TAESD file (``encoder.*`` + ``decoder.*``) or a flat diffusers file
    (``decoder.layers.*``) reduced to the decoder's original-layout keys."""
    if any(k.startswith("decoder.layers.") for k in sd):
        return to_original_keys(sd)
    for prefix in ("decoder.", "taesd_decoder."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def infer_architecture(sd: dict[str, Any], name: str = "file") -> Architecture:
    """Stages, blocks and width of an original-layout decoder from its keys and shapes."""
    layers: dict[int, str] = {}
    for k in sd:
        m = _KEY.match(k)
        if not m:
            raise ModelError(f"{name} is not a TAESD decoder (unexpected weight {k})")
        i, rest = int(m.group(1)), m.group(2)
        kind = "block" if rest.startswith(("conv.", "skip.")) else "conv"
        if layers.setdefault(i, kind) != kind:
            raise ModelError(f"{name} is not a TAESD decoder (layer {i})")
    if not layers or min(layers) != 1 or layers[1] != "conv":
        raise ModelError(f"{name} is not a TAESD decoder (no input convolution)")
    first = sd["1.weight"]
    latent_channels, width = int(first.shape[1]), int(first.shape[0])
    blocks: list[int] = [0]
    for i in sorted(layers)[1:]:
        if layers[i] == "block":
            blocks[-1] += 1
        elif f"{i}.bias" in sd:  # the output convolution (the stages' own ones have no bias)
            out_channels = int(sd[f"{i}.weight"].shape[0])
            if i != max(layers):
                raise ModelError(f"{name} is not a TAESD decoder (layers after the output)")
            return Architecture(latent_channels, width, tuple(blocks), out_channels)
        else:
            blocks.append(0)
    raise ModelError(f"{name} is not a TAESD decoder (no output convolution)")


def to_diffusers_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """Original ``k.rest`` -> ``decoder.layers.{k - 1}.rest``."""
    out = {}
    for k, v in sd.items():
        m = _KEY.match(k)
        assert m is not None
        out[f"decoder.layers.{int(m.group(1)) - 1}.{m.group(2)}"] = v
    return out


def to_original_keys(decoder_state: dict[str, Any]) -> dict[str, Any]:
    """An ``AutoencoderTiny``'s decoder weights in the original layout (what the studio ships)."""
    out = {}
    for k, v in decoder_state.items():
        m = re.match(r"^(?:decoder\.)?layers\.(\d+)\.(.+)$", k)
        if m:
            out[f"{int(m.group(1)) + 1}.{m.group(2)}"] = v
    return out


def load_module(path: str | Path):
    """An ``AutoencoderTiny`` (float32, eval) from a decoder file or a diffusers folder; ModelError, one line."""
    p = Path(path)
    if p.is_dir():
        from diffusers import AutoencoderTiny

        try:
            return AutoencoderTiny.from_pretrained(p, local_files_only=True).float().eval()
        except Exception as e:  # noqa: BLE001 - a broken folder: one line
            raise ModelError(f"Cannot load tiny decoder {p.name}: {str(e).splitlines()[0] if str(e) else e}") from e
    sd, _meta = read_tensors(p, "tiny decoder")
    sd = _strip_prefix(sd)
    arch = infer_architecture(sd, p.name)
    module = build(arch)
    missing, unexpected = module.load_state_dict(to_diffusers_keys(sd), strict=False)
    wrong = [k for k in missing if k.startswith("decoder.")] + list(unexpected)
    if wrong:
        raise ModelError(f"{p.name} is not a TAESD decoder (weights do not fit: {wrong[0]})")
    return module.float().eval()


def _is_tiny_folder(p: Path) -> bool:
    try:
        return json.loads((p / "config.json").read_text()).get("_class_name") == "AutoencoderTiny"
    except (OSError, ValueError, AttributeError):
        return False


def find(model_path: str | Path | None, family: str, extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    """The tiny decoder for a model: its own (``tiny_decoder.safetensors`` in its folder), else a family file
    (``taesd_decoder.*`` for SD 1.x/2.x, ``taesdxl_decoder.*`` for SDXL) in a ``vae_approx`` / ``VAE-approx``
    folder beside the model or up to three levels up (ComfyUI's ``models/checkpoints/x`` -> ``models/vae_approx``)
    or in ``extra_dirs`` (the library's folders), else in the model folder, beside the model or in ``extra_dirs``
    themselves; or a diffusers ``AutoencoderTiny`` folder of those names."""
    if model_path is None:
        return None
    mp = Path(model_path)
    if mp.is_dir() and (mp / OWN_FILE).is_file():
        return mp / OWN_FILE
    stems = FAMILY_STEMS.get(family, ())
    if not stems:
        return None
    places: list[Path] = [mp] if mp.is_dir() else []
    for up in (mp.parent, mp.parent.parent, mp.parent.parent.parent, *extra_dirs):
        places += [up / d for d in APPROX_DIRS]
    places += [mp.parent, *extra_dirs]  # a file dropped beside the checkpoints
    for place in places:
        for stem in stems:
            for suffix in SUFFIXES:
                f = place / (stem + suffix)
                if f.is_file():
                    return f
            if (place / stem).is_dir() and _is_tiny_folder(place / stem):
                return place / stem
    return None


class TinyDecoder:
    """A loaded tiny decoder: ``decode`` (torch, [-1, 1]) and ``preview`` (one numpy latent -> uint8 RGB)."""

    def __init__(self, module, path: Path):
        self.module = module
        self.path = Path(path)
        cfg = module.config
        self.latent_channels = int(cfg.latent_channels)
        self.scale = int(cfg.upsampling_scaling_factor) ** (len(cfg.num_decoder_blocks) - 1)

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) as the sampler carries them -> (B, 3, h * scale, w * scale) in [-1, 1]."""
        device = next(self.module.parameters()).device  # the model's device (a GPU's previews stay on it)
        return self.module.decoder(latents.to(device, torch.float32)).clamp(-1, 1).cpu()

    def preview(self, latent: np.ndarray) -> np.ndarray:
        """One (C, h, w) latent -> HxWx3 uint8 at the decoder's output size."""
        x = torch.from_numpy(np.asarray(latent, np.float32))[None]
        return to_uint8(self.decode(x)[0].permute(1, 2, 0).numpy())


_cache: dict[tuple, TinyDecoder] = {}


def load(path: str | Path) -> TinyDecoder:
    """A tiny decoder, cached by file version (path, size, mtime)."""
    p = Path(path)
    key = file_key(p / "config.json" if p.is_dir() else p, "tiny decoder")
    if key not in _cache:
        _cache.clear()  # one at a time: a model change replaces it
        _cache[key] = TinyDecoder(load_module(p), p)
    return _cache[key]


def for_model(model_path: str | Path | None, family: str, vae_scale: int, latent_channels: int,
              extra_dirs: tuple[Path, ...] = ()) -> TinyDecoder | None:
    """The model's tiny decoder when one is found and fits its VAE (scale, latent channels); None otherwise (a
    broken or unfitting file: one log line, the linear factors stay)."""
    try:
        found = find(model_path, family, extra_dirs)
    except OSError:
        return None
    if found is None:
        return None
    try:
        tiny = load(found)
    except ModelError as e:
        log.warning("tiny decoder not used: %s", e)
        return None
    if tiny.scale != vae_scale or tiny.latent_channels != latent_channels:
        log.warning("tiny decoder %s not used: it decodes %dx from %d channels, the model's VAE %dx from %d",
                    found.name, tiny.scale, tiny.latent_channels, vae_scale, latent_channels)
        return None
    return tiny
