"""Diffusers pipeline folders written back as original (LDM / A1111 / sgm) single-file checkpoints, for tests.

diffusers reads those files (`from_single_file`, `diffusers.loaders.single_file_utils`) but has no writer; this
is the reverse of its converters, for the tiny random-weight pipelines of `studio.testing.tiny`:

  family  U-Net / VAE                                   text encoder(s)
  sd1     model.diffusion_model. / first_stage_model.   cond_stage_model.transformer.text_model.  (HF CLIP-L)
  sd2     model.diffusion_model. / first_stage_model.   cond_stage_model.model.  (OpenCLIP: fused qkv in_proj,
                                                        token_embedding, positional_embedding, ln_final)
  sdxl    model.diffusion_model. / first_stage_model.   conditioner.embedders.0.transformer.text_model.  (CLIP-L)
                                                        conditioner.embedders.1.model.  (OpenCLIP bigG, with
                                                        text_projection, stored transposed: x @ P)

U-Net: input_blocks.N.0 (resnets: in_layers.0/2, emb_layers.1, out_layers.0/3, skip_connection), input_blocks.N.1
(transformers, the diffusers inner keys unchanged), input_blocks.N.0.op (downsamplers), middle_block.0/1/2,
output_blocks.N.0/1 and .1.conv or .2.conv (upsamplers), time_embed.0/2, label_emb.0.0/0.2 (SDXL add_embedding),
out.0/2. VAE: encoder.down.i.block.j (nin_shortcut), down.i.downsample, mid.block_1/2, mid.attn_1.norm/q/k/v/
proj_out (1x1-conv-shaped weights), decoder.up.(n-1-i) (the up blocks are numbered from the bottom), norm_out.

`extras=True` (the default) adds what real files carry and diffusers' loaders skip: CLIP's position_ids, the
OpenCLIP logit_scale, SD 2.x's unused text_projection, and for SD 1.x / 2.x the LDM DDPM schedule buffers (betas,
alphas_cumprod...). `to_original(..., extras=False)` is the bare inverse of the converters.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from studio.testing.ldm_keys import split as _split
from studio.testing.ldm_keys import unet_to_original

VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    # family: ((component, prefix, layout), ...); layout "clip" (HF CLIP-L as is) or "open_clip"
    "sd1": (("text_encoder", "cond_stage_model.transformer.", "clip"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "open_clip"),),
    "sdxl": (
        ("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
        ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip"),
    ),
}
FAMILIES = tuple(TEXT_PREFIXES)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.index.json")

_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def vae_to_original(sd: dict[str, torch.Tensor], prefix: str = VAE_PREFIX) -> dict:
    """A diffusers AutoencoderKL state dict in the LDM layout (`prefix` + encoder.down.0.block.0...)."""
    n_up = 1 + max(int(m[1]) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, param = _split(key)
        if module in ("quant_conv", "post_quant_conv"):
            new = key
        elif m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)", module):
            new = f"{m[1]}.{_VAE_TOP[m[2]]}.{param}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            rest = m[3].replace("conv_shortcut", "nin_shortcut")
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{rest}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{param}"
            if param == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]  # the LDM attention is 1x1 convolutions
        else:
            raise KeyError(f"no LDM name for VAE key {key!r}")
        out[prefix + new] = value
    return out


def _with_text_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); the original layouts keep the prefix."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in sd.items()}


def clip_to_original(sd: dict[str, torch.Tensor], prefix: str) -> dict:
    """An HF CLIPTextModel state dict as SD 1.x / SDXL's first encoder store it: `prefix` + text_model...."""
    return {prefix + k: v for k, v in _with_text_model(sd).items()}


def open_clip_to_original(sd: dict[str, torch.Tensor], prefix: str) -> dict:
    """An HF CLIPTextModel(WithProjection) state dict in the OpenCLIP layout (SD 2.x, SDXL's second encoder)."""
    sd = _with_text_model(sd)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif m := re.fullmatch(r"text_model\.final_layer_norm\.(\w+)", key):
            out[prefix + f"ln_final.{m[1]}"] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # OpenCLIP projects x @ P
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(\w+)", key):
            out[prefix + f"transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
    for (layer, param), parts in sorted(qkv.items()):
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[prefix + f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return out


def _load_components(pipeline) -> tuple[dict, dict]:
    """(model_index, {component name: the loaded model}) of a pipeline folder or a DiffusionPipeline."""
    if not isinstance(pipeline, (str, Path)):
        comps = {k: v for k, v in pipeline.components.items() if isinstance(v, torch.nn.Module)}
        return dict(pipeline.config), comps
    import diffusers
    import transformers

    root = Path(pipeline)
    index = json.loads((root / "model_index.json").read_text())
    comps = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        lib, cls = index.get(name) or (None, None)
        if cls is None:
            continue
        module = diffusers if lib == "diffusers" else transformers
        comps[name] = getattr(module, cls).from_pretrained(root, subfolder=name, local_files_only=True)
    return index, comps


def family_of(pipeline) -> str:
    """sd1, sd2 or sdxl: two text encoders are SDXL, a gelu (OpenCLIP) text encoder SD 2.x, else SD 1.x."""
    _, comps = _load_components(pipeline)
    return _family(comps)


def _family(comps: dict) -> str:
    if "text_encoder_2" in comps:
        return "sdxl"
    return "sd2" if comps["text_encoder"].config.hidden_act == "gelu" else "sd1"


def _schedule_buffers(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """The DDPM buffers an LDM checkpoint carries (ldm.models.diffusion.ddpm.DDPM.register_schedule)."""
    t = scheduler_config.get("num_train_timesteps", 1000)
    b0, b1 = scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012)
    betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), t, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac),
    }
    return {k: v.float() for k, v in bufs.items()}


def to_original(pipeline, family: str | None = None, extras: bool = True) -> dict[str, torch.Tensor]:
    """The U-Net, VAE and text encoder(s) of a pipeline folder (or DiffusionPipeline) under the original keys.

    `family` (sd1, sd2, sdxl) is read from the pipeline unless given. The tensors are detached copies.
    """
    _, comps = _load_components(pipeline)
    family = family or _family(comps)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    unet = comps["unet"]
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_original(unet.state_dict(), unet.config.layers_per_block))
    sd.update(vae_to_original(comps["vae"].state_dict()))
    for name, prefix, layout in TEXT_PREFIXES[family]:
        model = comps[name]
        text_sd = model.state_dict()
        if layout == "clip":
            sd.update(clip_to_original(text_sd, prefix))
            if extras:
                positions = model.config.max_position_embeddings
                sd[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
        else:
            sd.update(open_clip_to_original(text_sd, prefix))
            if extras:
                sd[prefix + "logit_scale"] = torch.tensor(math.log(1 / 0.07))
                if prefix + "text_projection" not in sd:  # SD 2.x: OpenCLIP's projection, unused by SD
                    width = model.config.hidden_size
                    sd[prefix + "text_projection"] = torch.eye(width)
    if extras and family in ("sd1", "sd2"):
        sched = {}
        if isinstance(pipeline, (str, Path)):
            path = Path(pipeline) / "scheduler" / "scheduler_config.json"
            sched = json.loads(path.read_text()) if path.exists() else {}
        else:
            sched = dict(pipeline.scheduler.config)
        sd.update(_schedule_buffers(sched))
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_single_file(
    pipeline,
    out_path: str | Path,
    dtype: torch.dtype = torch.float32,
    family: str | None = None,
    extras: bool = True,
) -> Path:
    """Write `to_original(pipeline)` as one .safetensors file; floating tensors cast to `dtype`."""
    from safetensors.torch import save_file

    sd = to_original(pipeline, family=family, extras=extras)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out_path), metadata={"format": "pt"})
    return out_path


def write_config_folder(pipeline_dir: str | Path, out_dir: str | Path, tokenizers: bool = True) -> Path:
    """The pipeline folder minus its weights: what `from_single_file(config=...)` needs for a tiny model.

    model_index.json, each component's config (config.json, scheduler_config.json...) and, with `tokenizers`,
    the tokenizer folders whole (without them, pass tokenizer=/tokenizer_2= objects to from_single_file).
    """
    src, dst = Path(pipeline_dir), Path(out_dir)
    if dst.exists():
        shutil.rmtree(dst)
    skip = () if tokenizers else ("tokenizer", "tokenizer_2")
    shutil.copytree(
        src,
        dst,
        ignore=lambda d, names: [
            n for n in names if any(Path(n).match(p) for p in WEIGHT_PATTERNS) or (Path(d) == src and n in skip)
        ],
    )
    return dst
