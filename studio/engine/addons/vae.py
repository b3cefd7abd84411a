"""VAE override (``load_vae``, ``swap_vae``, ``restore_vae``): a VAE file in the diffusers or the original (LDM) layout,
built with the loaded model's own VAE config; the model's VAE is kept to be put back."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...core.errors import ModelError, first_line
from ..weights import read_tensors
from .common import is_tensor, quiet

_VAE_PREFIXES = ("first_stage_model.", "vae.")
_VAE_TOP = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_OLD_ATTN = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _vae_layout(keys: Iterable[str], name: str) -> tuple[str, str]:
    """("diffusers" | "original", prefix) of a VAE's keys; ModelError for what is not a VAE."""
    keys = list(keys)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelError(f"{name} is a full checkpoint, not a VAE")
    prefix = next((p for p in _VAE_PREFIXES if any(k.startswith(p + "encoder.") for k in keys)), "")
    stripped = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in stripped):
        return "diffusers", prefix
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in stripped):
        return "original", prefix
    sample = ", ".join(keys[:2]) or "nothing"
    raise ModelError(f"{name} is not a VAE (it holds {sample})")


def load_vae(path: str | Path, config_dir: str | Path, dtype=None):
    """An AutoencoderKL from a VAE file, built with the VAE config of a diffusers model folder (``vae/config.json``).

    Both layouts: diffusers (``encoder.down_blocks.0.resnets.0...``) and the original one
    (``encoder.down.0.block.0...``, possibly ``first_stage_model.``-prefixed), converted by diffusers'
    ``from_single_file``. ModelError for a broken file, something that is not a VAE, or a VAE of another shape.
    """
    import torch
    from diffusers import AutoencoderKL

    p = Path(path)
    name = p.name
    data, _meta = read_tensors(p, "VAE")
    if "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = dict(data["state_dict"])
    data = {k: v for k, v in data.items() if isinstance(k, str) and is_tensor(v)}
    layout, prefix = _vae_layout(data, name)
    config_dir = Path(config_dir)
    if not (config_dir / "vae" / "config.json").is_file():
        raise ModelError(f"Cannot use {name}: the model folder {config_dir.name} has no vae/config.json")
    try:
        with quiet():
            if layout == "diffusers":
                config = AutoencoderKL.load_config(str(config_dir), subfolder="vae", local_files_only=True)
                vae = AutoencoderKL.from_config(config)
                sd = {}
                for k, v in data.items():
                    if not k.startswith(prefix):
                        continue
                    k = k[len(prefix) :]
                    if not k.startswith(_VAE_TOP):
                        continue  # training leftovers (loss., model_ema....)
                    if ".attentions." in k:
                        for old, new in _OLD_ATTN.items():
                            k = k.replace(old, new)
                    sd[k] = v
                vae.load_state_dict(sd, strict=True)
            else:
                vae = AutoencoderKL.from_single_file(
                    data, config=str(config_dir), subfolder="vae", local_files_only=True
                )
    except (RuntimeError, ValueError, KeyError, IndexError, OSError) as e:
        raise ModelError(f"{name} does not fit this model's VAE ({_mismatch(e)})") from e
    vae.requires_grad_(False)
    vae.eval()
    if dtype is not None:
        with quiet():  # diffusers warns about casting with to(); nothing of this VAE must stay in float32
            vae.to(dtype=dtype)
    bad = next((k for k, t in vae.state_dict().items() if t.device == torch.device("meta")), None)
    if bad:
        raise ModelError(f"{name} does not fit this model's VAE (it has no weights for {bad})")
    return vae


def _mismatch(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"size mismatch for ([\w.]+)", text)
    if m:
        return f"a layer of another size: {m.group(1)}"
    m = re.search(r'Missing key\(s\) in state_dict: "([^"]+)"', text)
    if m:
        return f"missing weights, e.g. {m.group(1)}"
    m = re.search(r'Unexpected key\(s\) in state_dict: "([^"]+)"', text)
    if m:
        return f"weights this VAE does not have, e.g. {m.group(1)}"
    return first_line(e)


_OWN_VAE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the model's U-Net -> its own VAE


def _vae_flags(src, dst) -> None:
    for flag in ("use_tiling", "use_slicing"):
        if hasattr(src, flag) and hasattr(dst, flag):
            setattr(dst, flag, getattr(src, flag))


def _own_key(pipe):
    unet = getattr(pipe, "unet", None)
    return pipe if unet is None else unet


def swap_vae(pipe, vae) -> None:
    """Decode with `vae` (moved to the current VAE's device and dtype); ``None`` puts the model's own back.

    The model's own VAE is remembered per U-Net, so every pipeline of a model (``from_pipe``) restores the same
    one, even one made after the swap."""
    if vae is None:
        restore_vae(pipe)
        return
    current = pipe.vae
    key = _own_key(pipe)
    if key not in _OWN_VAE:
        _OWN_VAE[key] = current
    if vae is current:
        return
    with quiet():
        vae.to(device=current.device, dtype=current.dtype)
    _vae_flags(current, vae)
    pipe.vae = vae


def restore_vae(pipe) -> None:
    """Put the model's own VAE back (nothing to do when it was never swapped)."""
    own = _OWN_VAE.get(_own_key(pipe))
    if own is None or pipe.vae is own:
        return
    _vae_flags(pipe.vae, own)
    pipe.vae = own


def own_vae(pipe):
    """The model's own VAE (the current one when it was never swapped)."""
    return _OWN_VAE.get(_own_key(pipe), pipe.vae)
