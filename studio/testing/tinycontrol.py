"""Tiny random-weight ControlNets with the real architecture, for tests and demos.

A ControlNet's hint encoder downsamples its image 8x (three stride-2 convolutions, as every released ControlNet),
so it needs a base model whose VAE scales 8x: `build_tiny_control_pipeline` is the tiny pipeline of `tiny.py`
with a four-level (8x) tiny VAE. `build_tiny_controlnet` copies that pipeline's U-Net encoder (diffusers'
``ControlNetModel.from_unet``, as the ControlNet paper initialises it) with a small hint encoder, and gives the
zero convolutions random weights (zero, as trained from scratch, they would make every control a no-op and every
test of it pass blindly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .tiny import SDXL_VAE_SCALING, build_tiny_pipeline

HINT_CHANNELS = (8, 8, 16, 16)  # four entries: the 8x hint encoder (input_hint_block.0 ... .14) of the real ones


def build_tiny_control_pipeline(path: str | Path, family: str = "sd1", kind: str = "txt2img", seed: int = 0) -> Path:
    """A tiny pipeline folder (tiny.py's) with an 8x VAE, so a ControlNet's hint encoder fits its latents."""
    from diffusers import AutoencoderKL

    path = build_tiny_pipeline(path, kind, seed=seed, family=family)
    import torch

    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=SDXL_VAE_SCALING if family == "sdxl" else 0.18215,
    )
    shutil.rmtree(path / "vae")
    vae.save_pretrained(path / "vae", safe_serialization=True)
    return path


def tiny_controlnet(pipeline_dir: str | Path, seed: int = 0):
    """A random-weight ControlNetModel for the tiny pipeline's U-Net."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_dir) / "unet", local_files_only=True)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            # Zero-initialised layers (the hint encoder's conv_out, the zero convs) get weights; the rest is
            # perturbed too, so that a ControlNet is not a copy of the U-Net.
            p.add_(torch.randn(p.shape, generator=g) * (0.2 if p.abs().max() == 0 else 0.02))
    return net.eval()


def save_controlnet(net, dest: str | Path, layout: str = "diffusers", prefix: str = "control_model.") -> Path:
    """`net` written as a diffusers folder (layout "folder"), or as one .safetensors file in diffusers' key names
    ("diffusers") or in lllyasviel's original layout ("original", keys under `prefix`: "control_model." as A1111's
    files, "" as ComfyUI's conversions)."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if layout == "folder":
        net.save_pretrained(dest, safe_serialization=True)
        return dest
    sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if layout == "original":
        sd = {prefix + k: v for k, v in controlnet_to_original(sd, int(net.config.layers_per_block)).items()}
    elif layout != "diffusers":
        raise ValueError(f"unknown layout {layout!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dest))
    return dest


# diffusers' ControlNet-only names -> the original ones (diffusers' convert_controlnet_checkpoint reversed).
def controlnet_to_original(sd: dict, layers_per_block: int) -> dict:
    """A diffusers ControlNetModel state dict in the original layout: its own parts (the hint block, the zero
    convs, the middle block's output) here, its U-Net encoder by the checkpoints' mapping (studio.testing.ldm_keys)."""
    import re

    from .ldm_keys import unet_to_original

    own = {"controlnet_cond_embedding.conv_in": "input_hint_block.0",
           "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}
    out, encoder = {}, {}
    for key, v in sd.items():
        module, _, param = key.rpartition(".")
        if module in own:
            out[f"{own[module]}.{param}"] = v
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = v
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = v
        else:
            encoder[key] = v
    return {**out, **unet_to_original(encoder, layers_per_block, prefix="")}
