"""ControlNets in a run: loaded safely and offline, attached to the mode's diffusers pipeline.

Loading. A diffusers folder (config.json + weights) loads with ``from_pretrained(local_files_only=True)``. A single
file is read by ``weights.read_tensors`` (safetensors, or a pickle with ``weights_only=True``), converted from
lllyasviel's layout (``control_model.input_hint_block``, ``zero_convs``, ``middle_block_out``) by diffusers' own
``convert_controlnet_checkpoint`` where needed, and loaded strictly into a ``ControlNetModel`` whose config is the
family's shipped one (``resources/configs/controlnet-<family>/config.json``) corrected by what the tensors say
(levels, widths, transformer depths: SDXL's full / mid / small variants differ there) and by the checkpoint's U-Net
(attention heads: a ControlNet is a copy of its base U-Net's encoder, and head counts are not in the tensors).

Running. The pipeline of the mode (txt2img, img2img, inpaint; SD or SDXL) becomes its ControlNet variant by
``from_pipe`` (no weights copied), with one ControlNetModel or a list (diffusers' MultiControlNetModel). A1111's
weight is ``controlnet_conditioning_scale``, Guidance Start / End are ``control_guidance_start`` / ``_end`` (fractions
of the steps the run does), and the control modes map as A1111's extension implements them:
  Balanced                       plain: the ControlNet on both halves of the CFG batch.
  My prompt is more important    soft injection: the ControlNet's 13 (SDXL: 10) outputs scaled by 0.825 ** (n - i),
                                 deepest full; diffusers' guess_mode scales are logspace(-1, 0, n), the same numbers
                                 (10 ** (-1/12) = 0.825). Both halves of the CFG batch.
  ControlNet is more important   soft injection and the ControlNet on the conditional half only: diffusers'
                                 guess_mode=True exactly (used as it is when every control asks for it; per
                                 control, by a wrapper of that ControlNet's forward, when modes are mixed).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.control import ControlSpec
from ..core.errors import ModelError, RequestError, first_line, is_out_of_memory
from ..core.modelfiles import BASE, CONTROL_PREFIX, ModelFile, classify, controlnet_layout
from ..paths import configs_dir
from .weights import file_key, read_tensors

log = logging.getLogger(__name__)

# The base pipelines' classes -> their ControlNet variants (diffusers 0.42 names).
CONTROL_PIPES = {
    "StableDiffusionPipeline": "StableDiffusionControlNetPipeline",
    "StableDiffusionImg2ImgPipeline": "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionInpaintPipeline": "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline": "StableDiffusionXLControlNetInpaintPipeline",
}
CONTROL_MORE = "ControlNet is more important"
PROMPT_MORE = "My prompt is more important"
# The U-Net config fields a ControlNet shares with its base U-Net and that its tensors do not show.
_FROM_BASE = ("attention_head_dim", "num_attention_heads", "upcast_attention", "norm_num_groups", "norm_eps",
              "addition_time_embed_dim", "flip_sin_to_cos", "freq_shift", "resnet_time_scale_shift")


def resolve(model: str, folders) -> Path:
    """A control's model: a path, or a ControlNet's name in the model folders."""
    p = Path(model).expanduser()
    if p.exists():
        return p.resolve()
    from ..core.modellibrary import find, scan

    hit = find(scan(list(folders)), model.strip(), "controlnet")
    if hit is None:
        raise ModelError(f"ControlNet not found: {model}")
    return hit.path


def describe(path: Path) -> ModelFile:
    """The ControlNet a path holds (header only), or ModelError naming what it is instead."""
    found = classify(path)
    if found.kind == "controlnet":
        return found
    if found.kind == "unknown":
        raise ModelError(found.note or f"{path.name} is not a ControlNet")
    raise ModelError(f"{path.name} is not a ControlNet but a {found.kind}")


def check_family(controls: tuple[ControlSpec, ...], arch: str, model_name: str, folders) -> list[Path]:
    """Every control's file, refused before any weights are read when it is not a ControlNet or is one of another
    family than the checkpoint (arch: the checkpoint's ARCHS id)."""
    base = arch.split("-")[0]
    paths = []
    for i, c in enumerate(controls):
        path = resolve(c.model, folders)
        found = describe(path)
        if found.arch and base in BASE and found.arch != base:
            raise RequestError(
                f"Control {i}: {found.name} is an {BASE[found.arch]} ControlNet and {model_name} an {BASE[base]} "
                f"model: choose an {BASE[base]} ControlNet"
            )
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _count(keys, pattern: str) -> int:
    import re

    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def infer_config(sd: dict, family: str, base_config: dict | None = None) -> dict:
    """The ControlNetModel config for diffusers-layout tensors: the family's shipped config, with the layout the
    tensors show and the heads of the base U-Net (``base_config``) where its levels match."""
    folder = configs_dir() / f"controlnet-{family or 'sd1'}"
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"The configuration for {BASE.get(family, family)} ControlNets is missing ({folder})") from e
    keys = list(sd)
    levels = _count(keys, r"down_blocks\.(\d+)\.")
    channels = [int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)]
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(levels)]
    depth = [max(1, _count(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for i in range(levels)]
    proj = next((sd[k] for k in keys if k.endswith("attentions.0.proj_in.weight")), None)
    to_k = next((sd[k] for k in keys if k.endswith("attn2.to_k.weight")), None)
    hint = [int(sd["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    hint += [int(sd[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"].shape[0])
             for i in range(_count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.") // 2)]  # fmt: skip
    cfg.update(
        in_channels=int(sd["conv_in.weight"].shape[1]),
        block_out_channels=channels,
        layers_per_block=_count(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        transformer_layers_per_block=depth,
        conditioning_channels=int(sd["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        conditioning_embedding_out_channels=hint,
    )
    if to_k is not None:
        cfg["cross_attention_dim"] = int(to_k.shape[1])
    if proj is not None:
        cfg["use_linear_projection"] = proj.ndim == 2
    if "add_embedding.linear_1.weight" in sd:
        cfg.update(addition_embed_type="text_time",
                   projection_class_embeddings_input_dim=int(sd["add_embedding.linear_1.weight"].shape[1]))
    else:
        cfg.update(addition_embed_type=None, projection_class_embeddings_input_dim=None)
    base = dict(base_config or {})
    if base and len(base.get("block_out_channels", ())) == levels:
        cfg.update({k: base[k] for k in _FROM_BASE if k in base})
    heads = cfg.get("attention_head_dim")
    if isinstance(heads, list) and len(heads) != levels:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]
    return cfg


def _original_to_diffusers(sd: dict) -> dict:
    """lllyasviel's layout (prefix stripped) -> diffusers' names, by diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    blocks = _count(sd, r"input_blocks\.(\d+)\.")
    downsamplers = _count(sd, r"input_blocks\.(\d+)\.0\.op\.")
    lpb = blocks // (downsamplers + 1) - 1 if blocks else 2
    out = convert_controlnet_checkpoint(sd, {"layers_per_block": lpb})
    # The converter leaves SDXL's text_time embedding (label_emb) out.
    for i in (0, 2):
        for p in ("weight", "bias"):
            if f"label_emb.0.{i}.{p}" in sd:
                out[f"add_embedding.linear_{1 if i == 0 else 2}.{p}"] = sd[f"label_emb.0.{i}.{p}"]
    return {k: v for k, v in out.items() if v is not None}


def load_controlnet(path: Path, family: str, base_config: dict | None, dtype, device):
    """A ControlNetModel from a diffusers folder or a single file, on `device` in `dtype`; ModelError otherwise."""
    import torch
    from diffusers import ControlNetModel

    name = path.name
    try:
        if path.is_dir():
            net = ControlNetModel.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
            return net.to(device).eval()
        tensors, _meta = read_tensors(path, "ControlNet")
        keys = list(tensors)
        if controlnet_layout(keys) == "original":
            if any(k.startswith(CONTROL_PREFIX) for k in keys):
                tensors = {k[len(CONTROL_PREFIX):]: v for k, v in tensors.items() if k.startswith(CONTROL_PREFIX)}
            tensors = _original_to_diffusers(tensors)
        elif controlnet_layout(keys) != "diffusers":
            raise ModelError(f"{name} is not a ControlNet (no ControlNet tensors in it)")
        cfg = infer_config(tensors, family, base_config)
        with torch.device("meta"):
            net = ControlNetModel.from_config(cfg)
        missing, unexpected = net.load_state_dict(tensors, strict=False, assign=True)
        if missing or unexpected:
            what = f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else ""
            what += ("; " if what else "") + (f"{len(unexpected)} unknown (e.g. {unexpected[0]})" if unexpected else "")
            raise ModelError(f"{name} is not a complete {BASE.get(family, family)} ControlNet: {what}")
        net = net.to(device=device)
        return (net if net.dtype == dtype else net.to(dtype)).eval()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - shape mismatches, corrupt tensors: one line for the artist
        if is_out_of_memory(e):
            raise
        raise ModelError(f"Cannot load ControlNet {name}: {first_line(e)}") from e


# ---------------------------------------------------------------------------------------------------------------
# Running


def _soft(net, cond_only: bool, cfg: bool):
    """A shallow copy of `net` (the weights shared) whose outputs are soft-injected (guess_mode's scales) and, for
    `cond_only` under CFG, zero on the unconditional half of the batch: guess_mode for this ControlNet alone."""
    import torch

    inner = net.forward
    wrapped = copy.copy(net)

    def forward(*args, **kwargs):
        want_dict = kwargs.get("return_dict", True)
        kwargs.update(guess_mode=True, return_dict=False)
        down, mid = inner(*args, **kwargs)
        if cond_only and cfg:
            half = mid.shape[0] // 2
            down = [torch.cat([torch.zeros_like(d[:half]), d[half:]]) for d in down]
            mid = torch.cat([torch.zeros_like(mid[:half]), mid[half:]])
        if not want_dict:
            return down, mid
        from diffusers.models.controlnets.controlnet import ControlNetOutput

        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    wrapped.forward = forward  # an instance attribute of the copy: the cached ControlNet is untouched
    return wrapped


def control_picture(c: ControlSpec, index: int, size: tuple[int, int], init_size: tuple[int, int] | None,
                    box: tuple[int, int, int, int] | None) -> tuple[Any, str]:
    """The control image as the run needs it (PIL, `size`), and a note when it had to be resized. `box`: the
    inpaint crop ("only masked"), in the init image's pixels (`init_size`): the control image covers the whole
    picture, so the same region is cut out of it."""
    from PIL import Image

    assert c.image is not None
    img = Image.fromarray(np.ascontiguousarray(c.image)).convert("RGB")
    note = ""
    if box is not None and init_size is not None:
        if img.size != init_size:
            note = f"Control {index}: its image ({img.width}x{img.height}) was resized to the picture's {init_size[0]}x{init_size[1]}"
            img = img.resize(init_size, Image.Resampling.LANCZOS)
        img = img.crop(box)
        return (img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)), note
    if img.size != size:
        note = f"Control {index}: its image ({img.width}x{img.height}) was resized to the picture's {size[0]}x{size[1]}"
        # A1111's default "Crop and Resize": the middle cut to the picture's aspect, then scaled.
        w, h = img.size
        scale = max(size[0] / w, size[1] / h)
        cw, ch = min(w, round(size[0] / scale)), min(h, round(size[1] / scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS)
    return img, note


def control_region(image: np.ndarray, size: tuple[int, int], rect, multiple: int) -> np.ndarray:
    """The part of a whole-picture control image under one upscale tile: scaled to the output `size` (w, h), cut to
    `rect` (x, y, w, h) and padded as the tile is (upscale.pad_to)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if img.size != tuple(size):
        img = img.resize((int(size[0]), int(size[1])), Image.Resampling.LANCZOS)
    x, y, w, h = rect
    part = np.asarray(img)[y : y + h, x : x + w]
    return np.pad(part, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")  # as upscale.pad_to


@dataclass
class Controls:
    """The engine's ControlNets: the last ones loaded, cached by file version, device and dtype."""

    cache: dict[tuple, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the last attach changed (a resized control image)
    loads: int = 0

    def get(self, path: Path, family: str, base_config: dict, dtype, device):
        key = (*file_key(path, "ControlNet"), family, str(dtype), str(device),
               json.dumps({k: base_config.get(k) for k in _FROM_BASE}, sort_keys=True, default=str))
        net = self.cache.get(key)
        if net is None:
            while len(self.cache) >= 4:  # at most MAX_CONTROLS resident
                self.cache.pop(next(iter(self.cache)))
            net = load_controlnet(path, family, base_config, dtype, device)
            self.loads += 1
            try:  # A1111's "Model: name [hash]" in the metadata: hashed once, cached by path, size and mtime
                from ..core.metadata import model_hash

                model_hash(path)
            except (OSError, ModelError):
                pass
            self.cache[key] = net
        return net

    def clear(self) -> None:
        self.cache.clear()

    def attach(self, model, r, pipe, kwargs: dict, folders, plan=None):
        """The ControlNet variant of `pipe` and its call's arguments for the request's controls."""
        import diffusers

        cls_name = CONTROL_PIPES.get(type(pipe).__name__)
        if cls_name is None:
            raise RequestError(f"Controls are not supported with {type(pipe).__name__}")
        arch = model.layout.arch or ("sdxl" if model.family == "sdxl" else "sd1")
        paths = check_family(tuple(r.controls), arch, model.name, folders)
        unet_cfg = dict(model.base.unet.config)
        family = arch.split("-")[0]
        nets, images, notes = [], [], []
        modes = [c.mode for c in r.controls]
        all_control = all(m == CONTROL_MORE for m in modes)
        cfg = r.cfg > 1.0
        size = (int(r.width), int(r.height))
        init_size = None
        box = None
        if plan is not None and plan.cropped and r.init_image is not None:
            init_size = (int(r.init_image.shape[1]), int(r.init_image.shape[0]))
            box = tuple(int(v) for v in plan.box)
        for i, (c, path) in enumerate(zip(r.controls, paths, strict=True)):
            net = self.get(path, family, unet_cfg, model.dtype, model.device)
            if int(net.config.cross_attention_dim) != int(unet_cfg.get("cross_attention_dim", 0)) or list(
                net.config.block_out_channels) != list(unet_cfg.get("block_out_channels", [])):
                raise RequestError(f"Control {i}: {path.stem} does not fit {model.name} (its U-Net has other widths): "
                                   "choose a ControlNet made for this model's family")  # fmt: skip
            if not all_control and c.mode != "Balanced":
                net = _soft(net, cond_only=c.mode == CONTROL_MORE, cfg=cfg)
            nets.append(net)
            img, note = control_picture(c, i, size, init_size, box)
            images.append(img)
            if note:
                notes.append(note)
        self.notes = notes
        cpipe = getattr(diffusers, cls_name).from_pipe(pipe, controlnet=nets[0] if len(nets) == 1 else nets)
        cpipe.set_progress_bar_config(disable=True)
        one = len(nets) == 1
        key = "image" if cls_name.endswith(("ControlNetPipeline",)) else "control_image"
        kwargs[key] = images[0] if one else images
        weights = [float(c.weight) for c in r.controls]
        starts = [float(c.start) for c in r.controls]
        ends = [float(c.end) for c in r.controls]
        kwargs.update(
            controlnet_conditioning_scale=weights[0] if one else weights,
            control_guidance_start=starts[0] if one else starts,
            control_guidance_end=ends[0] if one else ends,
            guess_mode=all_control,
        )
        return cpipe, kwargs
