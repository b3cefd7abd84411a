"""Architectures and presets of the built-in model (diffusers / transformers classes, small sizes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from studio.paths import TOKENIZER_DIR

# The training noise schedule, like Stable Diffusion's.
BETA_START = 0.00085
BETA_END = 0.012
BETA_SCHEDULE = "scaled_linear"
NUM_TRAIN_TIMESTEPS = 1000
# The scheduler arguments that must match between training (DDPM) and the shipped sampler (Euler).
NOISE_SCHEDULE = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    beta_start=BETA_START,
    beta_end=BETA_END,
    beta_schedule=BETA_SCHEDULE,
    prediction_type="epsilon",
)


@dataclass
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: downsampling 4
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_add_attention: bool = False


@dataclass
class TextConfig:
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    projection_dim: int = 64


@dataclass
class UnetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 8
    norm_num_groups: int = 16
    in_channels: int = 9  # 4 noisy latent + 1 mask + 4 masked-image latent (inpainting layout)
    # A wide input convolution with zero padding turns the constant mask channel (all ones in text-to-image)
    # into a position signal: a 3x3 one leaves the UNet nearly blind to where it is on a 16x16 latent.
    conv_in_kernel: int = 3


@dataclass
class Preset:
    name: str
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    # stage (a)
    vae_steps: int = 2500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-7
    # stage (b)+(c)
    pool_size: int = 32000  # images encoded once to latents
    unet_steps: int = 5000
    unet_batch: int = 32
    unet_lr: float = 3e-4
    text_lr: float = 3e-4
    warmup: int = 200
    ema_decay: float = 0.999
    full_mask_prob: float = 0.6  # plain text-to-image samples (mask all ones)
    uncond_prob: float = 0.1
    noise_offset: float = 0.1
    latent_scale: float = 1.0  # multiplies the VAE's 1/std scaling factor (< 1: a noisier schedule in effect)
    # Loss weight at high noise, where the layout is decided: the epsilon loss weighs an error in the predicted
    # image by the SNR, next to nothing there. The weight is raised to x0_floor / SNR (at most high_noise_cap),
    # so the image-space error keeps at least x0_floor's weight. 0 = min-SNR weighting alone.
    x0_floor: float = 0.0
    high_noise_cap: float = 10.0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # ~1 hour on 2 CPU cores (the U-Net stage needs ~2.5 hours to reach the shipped model's quality: see its
    # card). The settings that made the shipped model follow position words: a wide input convolution,
    # latents carried at 0.4x unit std (a noisier schedule in effect), more weight at high noise
    "cpu": Preset(
        name="cpu",
        unet=UnetConfig(conv_in_kernel=11),
        latent_scale=0.4,
        x0_floor=0.2,
        high_noise_cap=15.0,
    ),
    # a few minutes' smoke run
    "tiny": Preset(
        name="tiny",
        vae=VaeConfig(block_out_channels=(8, 16, 16), norm_num_groups=8),
        text=TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
        unet=UnetConfig(block_out_channels=(16, 32, 32), norm_num_groups=8, attention_head_dim=8),
        vae_steps=20,
        vae_batch=8,
        pool_size=256,
        unet_steps=20,
        unet_batch=8,
        warmup=5,
        ema_decay=0.9,
    ),
    # a bigger model for one GPU (config only: never run here)
    "gpu": Preset(
        name="gpu",
        vae=VaeConfig(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32),
        text=TextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, projection_dim=128),
        unet=UnetConfig(block_out_channels=(128, 256, 256), layers_per_block=2, norm_num_groups=32, conv_in_kernel=11),
        latent_scale=0.4,
        x0_floor=0.2,
        high_noise_cap=15.0,
        vae_steps=20000,
        vae_batch=64,
        pool_size=200000,
        unet_steps=60000,
        unet_batch=256,
        unet_lr=2e-4,
        text_lr=2e-4,
        warmup=1000,
        ema_decay=0.9999,
    ),
}


def build_vae(cfg: VaeConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=64,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def config_of(cls, cfg):
    """``cfg`` if it is a ``cls`` already, else the ``cls`` of its dict (as a checkpoint stores it: lists for
    tuples)."""
    if isinstance(cfg, dict):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return cfg


def vae_from_config(cfg: dict | VaeConfig):
    return build_vae(config_of(VaeConfig, cfg))


def build_text_encoder(cfg: TextConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=77,
        projection_dim=cfg.projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(conf)


def unet_of(cfg, cross_attention_dim: int, **layout):
    """A ``UNet2DConditionModel`` with ``cfg``'s blocks and widths (a ``UnetConfig`` or the latent upscaler's);
    ``layout``: the rest (sample size, channels, ...)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        **layout,
    )


def build_unet(cfg: UnetConfig, cross_attention_dim: int):
    return unet_of(cfg, cross_attention_dim, sample_size=16, in_channels=cfg.in_channels, out_channels=4,
                   conv_in_kernel=cfg.conv_in_kernel)


def load_tokenizer(path: str | Path | None = None):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path or TOKENIZER_DIR), local_files_only=True)


def tokenize(tokenizer, captions: list[str]):
    """Exactly as the diffusers pipelines do: pad to 77 with truncation."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
