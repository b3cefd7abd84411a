"""The diffusers U-Net -> original (LDM openaimodel: input_blocks / middle_block / output_blocks) key mapping,
for the test writers of original-layout files: checkpoints (tests/ldm_layout.py) and ControlNets
(studio.testing.tinycontrol), so the two cannot drift apart."""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text_time embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",  # class_embed_type timestep / projection
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # num_class_embeds (an nn.Embedding: the x4 upscaler)
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

def split(key: str) -> tuple[str, str]:
    """("a.b.c", "weight") from "a.b.c.weight"."""
    module, _, param = key.rpartition(".")
    return module, param


def _resnet_unet(rest: str) -> str:
    module, param = split(rest)
    return f"{_RESNET_UNET[module]}.{param}"


def unet_to_original(sd: dict[str, torch.Tensor], layers_per_block: int, prefix: str = UNET_PREFIX) -> dict:
    """A diffusers UNet2DConditionModel state dict in the LDM openaimodel layout (`prefix` + input_blocks...)."""
    if not isinstance(layers_per_block, int):
        raise ValueError("per-block layers_per_block has no LDM layout (diffusers' converter takes an int)")
    n = layers_per_block + 1  # input_blocks per level: n - 1 resnets (+ attentions) and a downsampler
    up_with_attn = {int(m.group(1)) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, param = split(key)
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + i * n + j}.0.{_resnet_unet(rest)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + i * n + j}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{1 + int(m[1]) * n + layers_per_block}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet_unet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{i * n + j}.0.{_resnet_unet(rest)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{i * n + j}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            i = int(m[1])
            # The upsampler follows the last layer's resnet, and its attention where the level has one.
            slot = 2 if i in up_with_attn else 1
            new = f"output_blocks.{i * n + layers_per_block}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for U-Net key {key!r}")
        out[prefix + new] = value
    return out
