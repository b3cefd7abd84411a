"""Tiny random-weight pipelines with the real architectures (SD txt2img, 9-channel inpaint, the x4 upscaler),
for tests, benchmarks and the stand-in demo.

A few MB, built in seconds, saved in the diffusers folder layout with the shipped CLIP tokenizer.

Three families (`build_tiny_pipeline(..., family=...)`), each in the layout of its real checkpoints:
  sd1   SD 1.x: CLIP ViT-L text encoder (quick_gelu), conv proj_in/proj_out in the transformers, PNDM.
  sd2   SD 2.x: OpenCLIP ViT-H text encoder (gelu; tokenizer pad "!"), linear projections, per-level head dims,
        v-prediction DDIM for txt2img (as stabilityai/stable-diffusion-2-1), epsilon PNDM for the inpainter
        (as stable-diffusion-2-inpainting).
  sdxl  SDXL: two text encoders (CLIP ViT-L, and OpenCLIP bigG with a projection: CLIPTextModelWithProjection;
        tokenizer_2 pads with "!"), a U-Net with text_time additional embeddings and per-level transformer
        depths, the SDXL VAE scaling, Euler.
Each has a 9-channel inpainting variant (kind="inpaint").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..paths import TOKENIZER_DIR

FAMILIES = ("sd1", "sd2", "sdxl")

SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_SIZES = {
    # unet channels, vae channels, text hidden size, unet sample size
    "tiny": ((32, 64), (32, 64), 32, 32),
    # SD 1.5 shapes: 860M-param U-Net, CLIP ViT-L/14 text encoder, 4-level VAE
    "sd15": ((320, 640, 1280, 1280), (128, 256, 512, 512), 768, 64),
}


def build_tiny_pipeline(
    path: str | Path, kind: str = "txt2img", seed: int = 0, size: str = "tiny", family: str = "sd1"
) -> Path:
    """Write a random-weight Stable Diffusion pipeline folder; `kind` is txt2img or inpaint (9-channel U-Net).

    `family` is sd1 (the default; `size` may then be "sd15" for the real SD 1.5 shapes), sd2 or sdxl (tiny only).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
    if family != "sd1":
        if size != "tiny":
            raise ValueError(f"the {family} family is built in the tiny size only")
        build = build_tiny_sd2 if family == "sd2" else build_tiny_sdxl
        return build(path, kind, seed)
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" on stderr otherwise
    path = Path(path)
    unet_ch, vae_ch, hidden, sample = _SIZES[size]
    torch.manual_seed(seed)
    n = len(unet_ch)
    if size == "tiny":
        down = ("DownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "UpBlock2D")
        heads, layers, groups, text_layers, inter = 2, 2, 32, 2, 37
    else:
        down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
        heads, layers, groups, text_layers, inter = 8, 2, 32, 12, 3072
    unet = UNet2DConditionModel(
        sample_size=sample,
        in_channels=9 if kind == "inpaint" else 4,
        out_channels=4,
        block_out_channels=unet_ch,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=hidden,
        attention_head_dim=heads,
        norm_num_groups=groups,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_ch,
        down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
        up_block_types=("UpDecoderBlock2D",) * len(vae_ch),
        latent_channels=4,
        layers_per_block=1 if size == "tiny" else 2,
        norm_num_groups=32,
        sample_size=sample * 2 ** (len(vae_ch) - 1),
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=text_layers,
            num_attention_heads=4 if size == "tiny" else 12,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="quick_gelu",
            projection_dim=hidden,
        )
    )
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text.save_pretrained(path / "text_encoder")
    CLIPTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(path / "tokenizer")
    # Written as SD 1.5 ships it: the extra keys (clip_sample...) are read by the other schedulers.
    (path / "scheduler").mkdir()
    sched = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.42.1", **SD_SCHEDULER}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
    cls = "StableDiffusionInpaintPipeline" if kind == "inpaint" else "StableDiffusionPipeline"
    index = {
        "_class_name": cls,
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


# The SD 2.x and SDXL tiny pipelines: the real repos' layouts (stabilityai/stable-diffusion-2-1,
# stabilityai/stable-diffusion-2-inpainting, stabilityai/stable-diffusion-xl-base-1.0,
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1) at toy widths.
SDXL_SCHEDULER = {
    **SD_SCHEDULER,
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
SDXL_VAE_SCALING = 0.13025
# The SDXL text encoders: CLIP ViT-L (width 16 here) and OpenCLIP bigG (width 32, projected to 32). The widths
# differ as in the real model: diffusers tells the two apart in a single file by their widths. bigG has 10 layers
# so that the key diffusers looks for to recognise an SDXL file (resblocks.9) exists.
SDXL_TEXT_WIDTHS = (16, 32)
SDXL_TEXT2_LAYERS = 10
SDXL_POOLED_DIM = 32
SDXL_TIME_EMBED_DIM = 8


def _check_kind(kind: str) -> None:
    if kind not in ("txt2img", "inpaint"):
        raise ValueError(f"unknown kind {kind!r} (txt2img or inpaint)")


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _tiny_clip(cls, hidden: int, act: str, layers: int = 2, projection_dim: int | None = None):
    """A CLIP text transformer with the real vocabulary and context (the shipped tokenizer), at toy width.

    bos/eos/pad ids 0/2/1 as the SD 2.x and SDXL repos' configs have them (transformers then pools at the argmax
    token id, the end token, as OpenCLIP does).
    """
    from transformers import CLIPTextConfig

    return cls(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_act=act,
            projection_dim=projection_dim or hidden,
        )
    )


def _save_pipeline(pipe, path: Path, scheduler: str, scheduler_config: dict) -> Path:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if path.exists():
        shutil.rmtree(path)
    pipe.save_pretrained(path, safe_serialization=True)
    # Written whole, as the real repos ship it: the extra keys (clip_sample, skip_prk_steps...) are read by the
    # other schedulers a sampler switch builds from this config.
    sched = {"_class_name": scheduler, "_diffusers_version": diffusers.__version__, **scheduler_config}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
    return path


def build_tiny_sd2(path: str | Path, kind: str = "txt2img", seed: int = 0, prediction_type: str | None = None) -> Path:
    """Write a random-weight pipeline folder of the SD 2.x layout (StableDiffusionPipeline / ...InpaintPipeline).

    As stabilityai/stable-diffusion-2-1 is built, in small: an OpenCLIP-H-like text encoder (CLIPTextModel, gelu,
    width 32) whose tokenizer pads with "!", a U-Net with linear proj_in/proj_out, per-level attention head dims,
    attention in the high-resolution level (input_blocks.1/2, as in the real U-Net) and upcast attention.
    txt2img is v-prediction (DDIM) as 2.1 is, inpaint (9 input channels) epsilon (PNDM) as 2-inpainting is;
    `prediction_type` overrides that.
    """
    import torch
    from diffusers import (
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    _check_kind(kind)
    inpaint = kind == "inpaint"
    prediction_type = prediction_type or ("epsilon" if inpaint else "v_prediction")
    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=not inpaint,
        norm_num_groups=32,
    )
    vae = _tiny_vae(0.18215)
    text = _tiny_clip(CLIPTextModel, hidden, "gelu")
    sched_cfg = {**SD_SCHEDULER, "prediction_type": prediction_type}
    sched_cls = PNDMScheduler if inpaint else DDIMScheduler
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!"),
        unet=unet,
        scheduler=sched_cls.from_config(_accepted(sched_cls, sched_cfg)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save_pipeline(pipe, Path(path), sched_cls.__name__, sched_cfg)


def build_tiny_sdxl(path: str | Path, kind: str = "txt2img", seed: int = 0) -> Path:
    """Write a random-weight pipeline folder of the SDXL layout (StableDiffusionXLPipeline / ...InpaintPipeline).

    As stabilityai/stable-diffusion-xl-base-1.0 is built, in small (close to diffusers' own tiny SDXL test
    config): CLIPTextModel (quick_gelu, width 16) and CLIPTextModelWithProjection (gelu, width 32, 10 layers,
    projection 32), tokenizer and tokenizer_2 (pad "!"); a U-Net whose cross-attention takes both encoders'
    penultimate states concatenated (16 + 32 = 48), with text_time additional embeddings (pooled 32 + 6 time ids
    x 8 = 80), linear projections, transformer_layers_per_block (1, 2), no attention in the first level; the
    SDXL VAE scaling (0.13025); Euler. inpaint: 9 input channels, requires_aesthetics_score False.
    """
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    _check_kind(kind)
    inpaint = kind == "inpaint"
    torch.manual_seed(seed)
    w1, w2 = SDXL_TEXT_WIDTHS
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9 if inpaint else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED_DIM,
        cross_attention_dim=w1 + w2,
        norm_num_groups=32,
    )
    vae = _tiny_vae(SDXL_VAE_SCALING)
    text = _tiny_clip(CLIPTextModel, w1, "quick_gelu")
    text_2 = _tiny_clip(CLIPTextModelWithProjection, w2, "gelu", SDXL_TEXT2_LAYERS, SDXL_POOLED_DIM)
    parts = dict(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(_accepted(EulerDiscreteScheduler, SDXL_SCHEDULER)),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    if inpaint:
        pipe = StableDiffusionXLInpaintPipeline(**parts, requires_aesthetics_score=False)
    else:
        pipe = StableDiffusionXLPipeline(**parts)
    return _save_pipeline(pipe, Path(path), "EulerDiscreteScheduler", SDXL_SCHEDULER)


def _accepted(cls, config: dict) -> dict:
    """The keys of `config` that scheduler class `cls` takes (from_config warns about the others)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}


# The schedulers of stabilityai/stable-diffusion-x4-upscaler: the low-res image is noised by a DDPM schedule
# (noise_level, at most max_noise_level = 350), the latents are denoised by a v-prediction DDIM.
X4_LOW_RES_SCHEDULER = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "variance_type": "fixed_small",
}
X4_SCHEDULER = {**SD_SCHEDULER, "prediction_type": "v_prediction"}
X4_MAX_NOISE_LEVEL = 350
X4_VAE_SCALING = 0.08333


def build_tiny_upscaler(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight pipeline folder of the SD x4 upscaler's layout (StableDiffusionUpscalePipeline).

    As stabilityai/stable-diffusion-x4-upscaler is built, in small: a U-Net with 7 input channels (4 latent
    channels + the 3 RGB channels of the low-res image, concatenated) and `num_class_embeds` (the noise level
    of that image is its class label), linear projections and cross-attention only in the attention blocks;
    a VAE of 3 blocks (4x downsampling, latent scaling 0.08333), so the latents have the low-res image's size
    and decode to 4x it; a DDPM low-res scheduler and a v-prediction DDIM; max_noise_level 350; the shipped
    CLIP tokenizer and a tiny CLIP text model. The U-Net's sample size is 32 (32 px input tiles, 128 px out).
    """
    import diffusers
    import torch
    import transformers
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    path = Path(path)
    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=7,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, False),
        num_class_embeds=1000,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=X4_VAE_SCALING,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="gelu",
            projection_dim=hidden,
        )
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        unet=unet,
        low_res_scheduler=DDPMScheduler(**X4_LOW_RES_SCHEDULER),
        scheduler=DDIMScheduler(**{k: v for k, v in X4_SCHEDULER.items() if k != "skip_prk_steps"}),
        max_noise_level=X4_MAX_NOISE_LEVEL,
    )
    if path.exists():
        shutil.rmtree(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Build a random-weight pipeline folder (tests, benchmarks, demo).")
    p.add_argument("path")
    p.add_argument("--kind", choices=("txt2img", "inpaint", "upscale"), default="txt2img")
    p.add_argument("--size", choices=tuple(_SIZES), default="tiny")
    p.add_argument("--family", choices=FAMILIES, default="sd1")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.kind == "upscale":
        print(build_tiny_upscaler(a.path, a.seed))
    else:
        print(build_tiny_pipeline(a.path, a.kind, a.seed, a.size, a.family))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
