"""Tiny random-weight pipelines with the real architectures (SD txt2img, 9-channel inpaint, the x4 upscaler),
for tests, benchmarks and the stand-in demo.

A few MB, built in seconds, saved in the diffusers folder layout with the shipped CLIP tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..paths import TOKENIZER_DIR

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


def build_tiny_pipeline(path: str | Path, kind: str = "txt2img", seed: int = 0, size: str = "tiny") -> Path:
    """Write a random-weight Stable Diffusion pipeline folder; `kind` is txt2img or inpaint (9-channel U-Net)."""
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
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.kind == "upscale":
        print(build_tiny_upscaler(a.path, a.seed))
    else:
        print(build_tiny_pipeline(a.path, a.kind, a.seed, a.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
