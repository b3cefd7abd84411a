"""The built-in x4 latent upscaler's models, in diffusers' ``StableDiffusionUpscalePipeline`` layout, trained on the
built-in model's domain at 4x (``sr_data.SRPairs``: 256 px renders and their bicubic 64 px downsamplings).

The layout is Stable Diffusion x4 upscaler's, small, with a *structured latent* (``passthrough``): channels
0-2 of the pipeline-scaled latent (``0.08333 * latent``) are the low-res picture itself, in [-1, 1], and
channel 3 is a detail channel the encoder learns. So:
- ``vae``: an ``AutoencoderKL`` with 4x downsampling and 4 latent channels, from scratch. Its decoder starts as
  bilinear x4 upsampling of channels 0-2 and learns sharper edges (helped by the detail channel); its encoder
  learns to give the low-res picture on channels 0-2 (so encode -> decode round-trips) and the detail.
  Stage 1 trains it on whole 256 px pictures, the decoder fed the exact low-res picture.
- ``unet``: a ``UNet2DConditionModel`` with 7 input channels (4 noisy latent + the 3-channel low-res image,
  which is the latent's size: 64x64 -> 64x64x4 latents -> 256x256) and ``num_class_embeds`` 1000 (the class
  label is the noise level added to the low-res image by ``low_res_scheduler``, 0..``max_noise_level`` 350).
  It predicts the clean latent (``prediction_type`` "sample") and starts by copying its condition into
  channels 0-2: what it learns is the detail channel (and cleaning a noised condition). No cross-attention:
  the prompt plays no part (on this domain it mattered little), so guidance is a no-op rather than noise.
- ``text_encoder`` / ``tokenizer``: a tiny CLIP text model (untrained: the pipeline needs one) and the
  project's tokenizer.
- ``scheduler``: DDIM (clean-latent prediction, "trailing" spacing, the last step lands on the prediction);
  ``low_res_scheduler``: DDPM with SD x4's betas except a near-zero first one, so noise level 0 is a clean
  condition, the studio's default for this model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .common import require
from .models import TextConfig, VaeConfig, build_text_encoder, config_of, unet_of, vae_from_config
from .passthrough import init_decoder_passthrough, init_encoder_passthrough, init_unet_copy

PIPELINE_SCALING_FACTOR = 0.08333  # StableDiffusionUpscalePipeline forces this value
MAX_NOISE_LEVEL = 350
# SD x4 upscaler's betas (the latents' schedule)
UPSCALER_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
# the low-res condition's: the same, but level 0 adds noise of std 1e-4 (SD's: 0.01, 1.3 grey levels)
LOW_RES_SCHEDULE = dict(UPSCALER_SCHEDULE, beta_start=1e-8)
NOISE_LEVEL = 0  # the noise level this model is used at (written to its folder's studio.json)
# the pass-through's last GroupNorm (and convolution, in the VAE stage) learn at this share of the rate: they
# read activations shifted by passthrough.B_SHIFT = 16, where an Adam step moves the output 16 times as much
HEAD_LR_SCALE = 1 / 16
LOWRES_CHANNELS = [0, 1, 2]
DETAIL_CHANNEL = 3


@dataclass
class UpUnetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 96)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D")
    mid_block_type: str = "UNetMidBlock2D"
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8  # groups of 4 channels at the last stage: the pass-through needs that


@dataclass
class UpscalerPreset:
    name: str
    # norm groups of 4 channels at the decoder's last stage (the pass-through needs that)
    vae: VaeConfig = field(default_factory=lambda: VaeConfig(block_out_channels=(16, 48, 96), norm_num_groups=4))
    text: TextConfig = field(default_factory=lambda: TextConfig(
        hidden_size=8, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8))
    unet: UpUnetConfig = field(default_factory=UpUnetConfig)
    vae_steps: int = 1300
    vae_batch: int = 4
    # whole 256 px pictures: GroupNorm's statistics are the picture's, so a VAE tuned on crops shifts the
    # colours of whole pictures (measured: crops raised the crop PSNR and lowered the whole-picture one)
    vae_crop: int = 256
    # 2e-4 undid the fitted start's 35.6 dB within 100 steps (29.6), 5e-5 cost 1 dB, the free weights
    # writing into the pass-through rows: slower
    vae_lr: float = 3e-5
    vae_warmup: int = 100  # Adam's first steps on a network that is already right: slowly
    encoder_weight: float = 10.0  # the encoder's channels 0-2 against the low-res picture (MSE)
    detail_noise: float = 0.05  # added to the detail channel the decoder sees: it must carry more than that
    detail_l2: float = 1e-3  # keeps the detail channel near unit scale
    loss_margin: int = 16  # output px at each border left out of the loss (EDGE_MARGIN * SCALE)
    fitted_kernels: bool = True  # the decoder starts from passthrough.FITTED_KERNELS, else bilinear
    # the UNet stage (train_upscaler_unet): trained on the picture its prediction decodes to, the VAE frozen
    pool_size: int = 1200  # training scenes (drawn once, kept)
    unet_batch: int = 4
    # crops of 32 latent px (128 px decoded): the frozen decoder gives a crop what it gives the whole picture
    # to 54-61 dB inside the 16 px margin, at a quarter of the cost of whole pictures
    latent_crop: int = 32
    unet_steps: int = 6000
    time_budget_minutes: float | None = 35.0
    # 3e-4 undid the copy start (37.56 -> 35.83 dB in 8 min, the clean-latent loss); the VAE stage's 3e-5
    # climbed back past its start only after 700 steps
    unet_lr: float = 1e-4
    warmup: int = 100
    ema_decay: float = 0.995
    clean_prob: float = 1.0  # the condition clean (level 0, the studio's, studio.json) this share of the time
    self_condition: bool = True  # the noisy input made from the UNet's own prediction, as the sampler makes it
    unet_validate_every: int = 100
    unet_val_images: int = 8  # VALIDATION_SEED scenes scored in the studio per validation (0: none)
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


UPSCALER_PRESETS: dict[str, UpscalerPreset] = {
    # ~1.5 hours on 2 CPU cores: VAE ~40 min (1300 steps of 4 whole pictures), UNet 35 min
    "cpu": UpscalerPreset(name="cpu"),
    # seconds: the tests (tiny everything)
    "tiny": UpscalerPreset(
        name="tiny",
        vae=VaeConfig(block_out_channels=(16, 32, 48), norm_num_groups=4),
        text=TextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                        projection_dim=8),
        unet=UpUnetConfig(block_out_channels=(16, 16, 32), norm_num_groups=4),
        vae_steps=3, vae_batch=2, vae_crop=32, pool_size=4, unet_batch=2,
        latent_crop=16, unet_steps=3, time_budget_minutes=None, warmup=1, vae_warmup=1, ema_decay=0.9, threads=1,
        unet_validate_every=2, unet_val_images=1,
    ),
    # for one GPU (config only: never run here)
    "gpu": UpscalerPreset(
        name="gpu",
        vae=VaeConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=16),
        unet=UpUnetConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=16),
        vae_steps=20000, vae_batch=32, vae_crop=256, pool_size=50000, unet_batch=64,
        latent_crop=64, unet_steps=20_000, time_budget_minutes=None, unet_lr=5e-5,
        warmup=500, vae_warmup=500, ema_decay=0.999, threads=8, unet_validate_every=500, unet_val_images=16,
    ),
}


def build_upscaler_unet(cfg: UpUnetConfig | dict, cross_attention_dim: int):
    cfg = config_of(UpUnetConfig, cfg)
    return unet_of(
        cfg,
        cross_attention_dim,
        sample_size=64,
        in_channels=7,  # 4 noisy latent + 3 low-res image
        out_channels=4,
        mid_block_type=cfg.mid_block_type,
        num_class_embeds=1000,  # the low-res noise level (SD x4's layout)
    )


def make_schedulers():
    """(training DDPM, shipped DDIM sampler, low-res noise DDPM): clean-latent prediction, SD x4's betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(**UPSCALER_SCHEDULE, prediction_type="sample", clip_sample=False)
    # set_alpha_to_one: the last step returns the predicted latent itself, with no noise added back
    sample = DDIMScheduler(**UPSCALER_SCHEDULE, prediction_type="sample", clip_sample=False,
                           set_alpha_to_one=True, timestep_spacing="trailing")
    low_res = DDPMScheduler(**LOW_RES_SCHEDULE, clip_sample=False)
    return train, sample, low_res


@torch.no_grad()
def rescale_latents(vae, k: float) -> None:
    """Make the encoder's latents k times larger and the decoder expect them so (exact: 1x1 convolutions)."""
    lc = vae.config.latent_channels
    vae.quant_conv.weight[:lc] *= k
    vae.quant_conv.bias[:lc] *= k
    vae.quant_conv.bias[lc:] += 2 * math.log(k)  # log-variance
    vae.post_quant_conv.weight /= k


def new_upscaler_vae(cfg: VaeConfig | dict, kernels: list[torch.Tensor] | None = None):
    """A VAE whose encoder starts as a 4x4 box average into latent channels 0-2 and whose decoder as x4
    upsampling of them (bilinear, or ``kernels``: ``passthrough.FITTED_KERNELS``), in pipeline units."""
    vae = vae_from_config(cfg)
    init_encoder_passthrough(vae, len(LOWRES_CHANNELS))
    init_decoder_passthrough(vae, len(LOWRES_CHANNELS), kernels)
    rescale_latents(vae, 1.0 / PIPELINE_SCALING_FACTOR)  # pipeline units in, raw latents out of the encoder
    vae.register_to_config(scaling_factor=PIPELINE_SCALING_FACTOR)
    return vae


def structured_latent(vae, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """The latent the UNet learns (pipeline units): the exact low-res picture, and the encoder's detail."""
    d = vae.encode(hr).latent_dist.mean[:, DETAIL_CHANNEL : DETAIL_CHANNEL + 1] * PIPELINE_SCALING_FACTOR
    return torch.cat([lr, d], dim=1)


def decode_structured(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z / PIPELINE_SCALING_FACTOR).sample


def load_upscaler_vae(run_dir: Path):
    from diffusers import AutoencoderKL

    folder = Path(run_dir) / "vae" / "final"
    require(folder / "config.json", "trained upscaler VAE", f"run train-latent-upscaler --out {run_dir} first")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).float().eval()


def models_from_upscaler_checkpoint(ck: dict, use_ema: bool = True):
    preset = ck["preset"]
    text_encoder = build_text_encoder(TextConfig(**preset["text"]))
    unet = build_upscaler_unet(preset["unet"], preset["text"]["hidden_size"])
    src = ck["ema"]["shadow"] if use_ema else {"unet": ck["unet"], "text_encoder": ck["text_encoder"]}
    unet.load_state_dict(src["unet"])
    text_encoder.load_state_dict(src["text_encoder"])
    return text_encoder.eval(), unet.eval()


def unet_from_config(config_json: str, state: dict | None = None):
    """A UNet of a diffusers config (JSON, as the UNet stage's checkpoints keep it), with ``state`` loaded."""
    from diffusers import UNet2DConditionModel

    # the folder it was read from is no part of the config (save_pretrained would write it into the next one)
    unet = UNet2DConditionModel.from_config({k: v for k, v in json.loads(config_json).items() if k != "_name_or_path"})
    if state is not None:
        unet.load_state_dict(state)
    return unet.eval()


def copy_start_models(text: TextConfig | dict, unet_cfg: UpUnetConfig | dict):
    """(text encoder, UNet) as the UNet stage starts them: an untrained text encoder (the UNet has no
    cross-attention) and a UNet that copies its condition into channels 0-2, with zero detail."""
    text = TextConfig(**text) if isinstance(text, dict) else text
    text_encoder = build_text_encoder(text)
    unet = build_upscaler_unet(unet_cfg, text.hidden_size)
    init_unet_copy(unet, [4 + c for c in LOWRES_CHANNELS], LOWRES_CHANNELS)  # after the 4 latent channels
    return text_encoder, unet


def upscale_pipeline(vae, text_encoder, tokenizer, unet):
    """The StableDiffusionUpscalePipeline of these parts, with the shipped sampler and low-res noise schedule."""
    from diffusers import StableDiffusionUpscalePipeline

    _train, sample, low_res = make_schedulers()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=low_res,
        scheduler=sample, safety_checker=None, feature_extractor=None, watermarker=None,
        max_noise_level=MAX_NOISE_LEVEL,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
