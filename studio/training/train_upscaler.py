"""The built-in x4 latent upscaler, in diffusers' ``StableDiffusionUpscalePipeline`` layout, trained on the
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

``train-latent-upscaler`` runs both stages, each resumable (checkpoints every few minutes); the data, noise
and timesteps of step k are a pure function of the seed and k.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from studio.engine.upscale import EDGE_MARGIN
from studio.paths import TOKENIZER_DIR

from .common import (
    EMA,
    JsonLog,
    load_checkpoint,
    lr_at,
    require,
    resume,
    save_checkpoint,
    seed_everything,
    set_threads,
    training_state,
)
from .models import TextConfig, VaeConfig, build_text_encoder, build_vae, load_tokenizer
from .passthrough import FITTED_KERNELS, init_decoder_passthrough, init_encoder_passthrough, init_unet_copy
from .sr_data import HELDOUT_SEED, HR_SIZE, SCALE, TRAIN_SEED, SRPairs, bicubic, heldout_pairs, psnr, ssim
from .train_unet import tokenize

PIPELINE_SCALING_FACTOR = 0.08333  # StableDiffusionUpscalePipeline forces this value
MAX_NOISE_LEVEL = 350
# SD x4 upscaler's betas (the latents' schedule)
UPSCALER_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
# the low-res condition's: the same, but level 0 adds noise of std 1e-4 (SD's: 0.01, 1.3 grey levels)
LOW_RES_SCHEDULE = dict(UPSCALER_SCHEDULE, beta_start=1e-8)
NOISE_LEVEL = 0  # the noise level this model is used at (written to its folder's studio.json)
POOL_SEED_OFFSET = 500
LOWRES_CHANNELS = [0, 1, 2]
DETAIL_CHANNEL = 3
HEAD_LR_SCALE = 1 / 16
# scenes that choose the VAE stage's best checkpoint: neither training's nor the benchmark's (HELDOUT_SEED)
VALIDATION_SEED = 7_000_003


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
    pool_size: int = 1200  # scenes encoded once
    unet_batch: int = 6
    latent_crop: int = 64  # whole latents, for the same reason as vae_crop
    unet_steps: int = 6000
    time_budget_minutes: float | None = 30.0
    unet_lr: float = 3e-4
    warmup: int = 50
    ema_decay: float = 0.999
    clean_prob: float = 0.7  # this share at noise level 0 (the level the model is used at), the rest 0..350
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


UPSCALER_PRESETS: dict[str, UpscalerPreset] = {
    # ~1.5 hours on 2 CPU cores: VAE ~40 min (1300 steps of 4 whole pictures), pool ~1 min, UNet 30 min
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
    ),
    # for one GPU (config only: never run here)
    "gpu": UpscalerPreset(
        name="gpu",
        vae=VaeConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=16),
        unet=UpUnetConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=16),
        vae_steps=20000, vae_batch=32, vae_crop=256, pool_size=50000, unet_batch=64,
        latent_crop=64, unet_steps=100_000, time_budget_minutes=None, unet_lr=2e-4,
        warmup=1000, vae_warmup=500, ema_decay=0.9999, threads=8,
    ),
}


def build_upscaler_unet(cfg: UpUnetConfig | dict, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    if isinstance(cfg, dict):
        cfg = UpUnetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=7,  # 4 noisy latent + 3 low-res image
        out_channels=4,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
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


def _to_pm1(imgs: list[np.ndarray]) -> torch.Tensor:
    arr = np.stack(imgs).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _crop_origin(rng, scene, n: int, crop: int, grid: float) -> tuple[int, int]:
    """A crop of side ``crop`` in an n x n grid; half the time near an object (most of a picture is flat)."""
    if rng.random() < 0.5 and scene is not None and scene.objects:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        cx = obj.cx * n / grid + rng.uniform(-crop / 3, crop / 3)
        cy = obj.cy * n / grid + rng.uniform(-crop / 3, crop / 3)
        return (int(np.clip(round(cx - crop / 2), 0, n - crop)), int(np.clip(round(cy - crop / 2), 0, n - crop)))
    x0, y0 = (int(v) for v in rng.integers(0, n - crop + 1, size=2))
    return x0, y0


# ---------------------------------------------------------------- stage 1: the VAE


def _vae_from_cfg(cfg: dict | VaeConfig):
    if isinstance(cfg, dict):
        cfg = VaeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return build_vae(cfg)


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
    vae = _vae_from_cfg(cfg)
    init_encoder_passthrough(vae, len(LOWRES_CHANNELS))
    init_decoder_passthrough(vae, len(LOWRES_CHANNELS), kernels)
    rescale_latents(vae, 1.0 / PIPELINE_SCALING_FACTOR)  # pipeline units in, raw latents out of the encoder
    vae.register_to_config(scaling_factor=PIPELINE_SCALING_FACTOR)
    return vae


def head_param_groups(nets, lr: float, extra=()) -> list[dict]:
    """Optimizer groups: the last GroupNorm and convolution of each net at ``HEAD_LR_SCALE`` of the rate.
    They read the pass-through's shifted activations (about B_SHIFT = 16), so an Adam step of a given size
    there moves the output 16 times as much as elsewhere. ``nets``: modules with ``conv_norm_out`` and
    ``conv_out``; ``extra``: more parameters at the full rate."""
    nets = nets if isinstance(nets, list) else [nets]
    head = [p for n in nets for m in (n.conv_norm_out, n.conv_out) for p in m.parameters()]
    ids = {id(p) for p in head}
    rest = [p for n in nets for p in n.parameters() if id(p) not in ids] + list(extra)
    return [{"params": rest, "lr": lr, "lr_scale": 1.0},
            {"params": head, "lr": lr * HEAD_LR_SCALE, "lr_scale": HEAD_LR_SCALE}]


def structured_latent(vae, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """The latent the UNet learns (pipeline units): the exact low-res picture, and the encoder's detail."""
    d = vae.encode(hr).latent_dist.mean[:, DETAIL_CHANNEL : DETAIL_CHANNEL + 1] * PIPELINE_SCALING_FACTOR
    return torch.cat([lr, d], dim=1)


def decode_structured(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z / PIPELINE_SCALING_FACTOR).sample


def _mirror(img: np.ndarray, px: int) -> np.ndarray:
    return np.pad(img, ((px, px), (px, px), (0, 0)), mode="symmetric") if px else img


@torch.no_grad()
def vae_scores(vae, n: int = 16, seed: int = HELDOUT_SEED, margin: int = EDGE_MARGIN) -> dict:
    """PSNR on whole pictures (held-out by default): decoding (low-res, encoder's detail), (low-res, no
    detail), and the plain encode -> decode round trip; SSIM of the first. Each picture mirrored ``margin``
    low-res px beyond its edges and that cut off again, as the studio runs the model (upscale.EDGE_MARGIN)."""
    from .train_vae import to_uint8

    vae.eval()
    e = margin * SCALE
    out: dict[str, list[float]] = {"psnr_detail": [], "psnr_no_detail": [], "psnr_roundtrip": [], "ssim_detail": []}

    def cut(y: torch.Tensor) -> np.ndarray:
        img = to_uint8(y)[0]
        return img[e : img.shape[0] - e, e : img.shape[1] - e]

    for hr, lr, _c in heldout_pairs(n, seed):
        x, lo = _to_pm1([_mirror(hr, e)]), _to_pm1([_mirror(lr, margin)])
        z = structured_latent(vae, x, lo)
        dec = cut(decode_structured(vae, z))
        out["psnr_detail"].append(psnr(hr, dec))
        out["ssim_detail"].append(ssim(hr, dec))
        z0 = torch.cat([lo, torch.zeros_like(lo[:, :1])], dim=1)
        out["psnr_no_detail"].append(psnr(hr, cut(decode_structured(vae, z0))))
        rt = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out["psnr_roundtrip"].append(psnr(hr, cut(rt)))
    return {k: round(float(np.mean(v)), 4 if k.startswith("ssim") else 3) for k, v in out.items()}


def bicubic_scores(n: int, seed: int = HELDOUT_SEED) -> dict:
    pairs = heldout_pairs(n, seed)
    return {"psnr": float(np.mean([psnr(h, bicubic(lo, h.shape[0])) for h, lo, _ in pairs])),
            "ssim": float(np.mean([ssim(h, bicubic(lo, h.shape[0])) for h, lo, _ in pairs]))}


def bar_score(scores: dict, bic: dict) -> float:
    """How far the bar (better than bicubic on PSNR and on SSIM) is passed: the smaller of the two margins,
    0.001 of SSIM counted as 1 dB (measured: training trades them, SSIM rising while PSNR dips)."""
    return round(min(scores["psnr_detail"] - bic["psnr"], 1000.0 * (scores["ssim_detail"] - bic["ssim"])), 4)


def train_upscaler_vae(run_dir: Path, preset: UpscalerPreset, seed: int = 0, checkpoint_every_s: float = 180.0,
                       eval_images: int = 16, progress: bool = True) -> dict:
    out = Path(run_dir) / "vae"
    out.mkdir(parents=True, exist_ok=True)
    final = out / "final"
    if (final / "config.json").exists():
        return json.loads((out / "result.json").read_text())
    log = JsonLog(out / "log.jsonl")
    seed_everything(seed)
    ckpt_path = out / "checkpoint.pt"
    src = SRPairs(TRAIN_SEED + 7 + seed)
    vae = new_upscaler_vae(preset.vae, FITTED_KERNELS if preset.fitted_kernels else None)
    quant = [*vae.quant_conv.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(head_param_groups([vae.decoder, vae.encoder], preset.vae_lr, quant), weight_decay=0.0,
                            betas=(0.9, 0.99))
    start, _ = resume(load_checkpoint(ckpt_path), {"model": vae}, opt, what="upscaler VAE training")
    steps, B, c = preset.vae_steps, preset.vae_batch, preset.vae_crop
    scores0 = vae_scores(vae, eval_images) if eval_images and start == 0 else None
    if scores0:
        log.write(step=0, **scores0)
    # the best on the validation scenes is what ships: Adam's first steps off a good start cost more than
    # they bring back for a while (measured: 35.6 -> 29.6 dB in 100 steps at lr 2e-4)
    best_path = out / "best.pt"
    kept = load_checkpoint(best_path)
    best = {k: v for k, v in kept.items() if k != "model"} if kept else {}
    bic = bicubic_scores(8, VALIDATION_SEED) if eval_images else {}
    if eval_images and not best and start == 0:
        best = {"step": 0, **vae_scores(vae, 8, seed=VALIDATION_SEED)}
        best["score"] = bar_score(best, bic)
        save_checkpoint(best_path, {"model": vae.state_dict(), **best})

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"model": vae}, opt, step=step, preset=preset.to_dict()))

    halves = [[*vae.encoder.parameters(), *vae.quant_conv.parameters()],
              [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]]
    vae.train()
    last_save = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="upscaler-vae", disable=not progress,
               mininterval=5)
    cl = c // SCALE
    for step in bar:
        lr_now = lr_at(step, steps, preset.vae_warmup, preset.vae_lr)
        for g in opt.param_groups:
            g["lr"] = lr_now * g["lr_scale"]
        rng = np.random.default_rng([seed, step, 0xAE])
        his, los = [], []
        for j in range(B):
            index = step * B + j
            scene = src.ds.scene(index)
            hr, lr, _cap = src.pair(index)
            x0, y0 = _crop_origin(rng, scene, HR_SIZE // SCALE, cl, 64.0)
            his.append(hr[y0 * SCALE : (y0 + cl) * SCALE, x0 * SCALE : (x0 + cl) * SCALE])
            los.append(lr[y0 : y0 + cl, x0 : x0 + cl])
        x, lo = _to_pm1(his), _to_pm1(los)
        m = vae.encode(x).latent_dist.mean * PIPELINE_SCALING_FACTOR
        d = m[:, DETAIL_CHANNEL : DETAIL_CHANNEL + 1]
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        z = torch.cat([lo, d + preset.detail_noise * torch.randn(d.shape, generator=g)], dim=1)
        y = decode_structured(vae, z)
        # the studio mirrors a margin around the input and cuts it off: the outermost pixels, which zero
        # padding spoils, are never shown, so they are not trained either
        lm = preset.loss_margin if y.shape[-1] > 4 * preset.loss_margin else 0
        diff = (y - x)[..., lm : y.shape[-2] - lm, lm : y.shape[-1] - lm]
        rec = diff.abs().mean() + 2.0 * diff.pow(2).mean()
        enc = (m[:, LOWRES_CHANNELS] - lo).pow(2).mean()
        loss = rec + preset.encoder_weight * enc + preset.detail_l2 * d.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # each half clipped on its own: one norm over both let the decoder's (large) gradients scale the
        # encoder's to nothing, and it stopped learning (measured: its low-res MSE stuck at 0.3-0.8)
        for half in halves:
            torch.nn.utils.clip_grad_norm_(half, 1.0)
        opt.step()
        if step % 10 == 0:
            mse = (y - x).pow(2).mean().item() / 4.0
            log.write(step=step, loss=round(loss.item(), 5), psnr_batch=round(10 * np.log10(1 / max(mse, 1e-10)), 2),
                      enc_mse=round(enc.item(), 6), detail_std=round(d.std().item(), 3), lr=lr_now)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if eval_images and step % 100 == 99:
            val = vae_scores(vae, 8, seed=VALIDATION_SEED)
            val["score"] = bar_score(val, bic)
            log.write(step=step + 1, validation=val)
            if val["score"] > best.get("score", -1e9):
                best = {"step": step + 1, **val}
                save_checkpoint(best_path, {"model": vae.state_dict(), **best})
            vae.train()
        if time.time() - last_save > checkpoint_every_s:
            save(step + 1)
            last_save = time.time()
    save(steps)
    kept = load_checkpoint(best_path)
    if kept:
        vae.load_state_dict(kept["model"])
        log.write(best={k: v for k, v in kept.items() if k != "model"})
    vae.eval()
    result = {"steps": steps, "best_step": best.get("step", steps), "before": scores0,
              **(vae_scores(vae, eval_images) if eval_images else {})}
    vae.save_pretrained(final)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**{k: v for k, v in result.items() if k != "before"})
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------- stage 2: the text encoder and the UNet


@torch.no_grad()
def build_sr_pool(vae, size: int, seed: int, progress: bool = True) -> dict:
    """``size`` scenes as structured latents (pipeline units), with their low-res images (no captions: the
    UNet reads no text)."""
    src = SRPairs(TRAIN_SEED + POOL_SEED_OFFSET + seed)
    vae.eval()
    n_lat = HR_SIZE // SCALE
    lat = torch.empty(size, 4, n_lat, n_lat, dtype=torch.float16)
    lrs = torch.empty(size, 3, n_lat, n_lat, dtype=torch.uint8)
    centres = torch.full((size, 2), -1.0)
    for s in tqdm(range(0, size, 8), desc="encode pool", disable=not progress, mininterval=5):
        idx = range(s, min(size, s + 8))
        his, los = [], []
        for i in idx:
            scene = src.ds.scene(i)
            hr, lr, _cap = src.pair(i)
            his.append(hr)
            los.append(lr)
            lrs[i] = torch.from_numpy(lr).permute(2, 0, 1)
            o = scene.objects[i % len(scene.objects)]
            centres[i] = torch.tensor([o.cx, o.cy])
        lat[s : s + len(idx)] = structured_latent(vae, _to_pm1(his), _to_pm1(los)).half()
    return {"lat": lat, "lr": lrs, "centres": centres, "size": size, "seed": seed}


def _pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionUpscalePipeline

    _train, sample, low_res = make_schedulers()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=low_res,
        scheduler=sample, safety_checker=None, feature_extractor=None, watermarker=None,
        max_noise_level=MAX_NOISE_LEVEL,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale_with_pipeline(pipe, lr: np.ndarray, caption: str = "", steps: int = 4, noise_level: int = NOISE_LEVEL,
                          seed: int = 0, guidance_scale: float = 0.0) -> np.ndarray:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    out = pipe(prompt=caption, image=Image.fromarray(lr), num_inference_steps=steps, noise_level=noise_level,
               guidance_scale=guidance_scale, generator=g, output_type="np").images[0]
    return (np.clip(out, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def evaluate_pipeline(pipe, n: int = 16, steps: int = 4, noise_level: int = NOISE_LEVEL, captions: bool = False) -> dict:
    pm, sm = [], []
    for i, (hr, lr, cap) in enumerate(heldout_pairs(n)):
        out = upscale_with_pipeline(pipe, lr, cap if captions else "", steps=steps, noise_level=noise_level, seed=i)
        pm.append(psnr(hr, out))
        sm.append(ssim(hr, out))
    bic = bicubic_scores(n)
    return {"n": n, "inference_steps": steps, "noise_level": noise_level, "psnr": float(np.mean(pm)),
            "ssim": float(np.mean(sm)), "bicubic_psnr": bic["psnr"], "bicubic_ssim": bic["ssim"]}


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


def copy_start_models(text: TextConfig | dict, unet_cfg: UpUnetConfig | dict):
    """(text encoder, UNet) as the UNet stage starts them: an untrained text encoder (the UNet has no
    cross-attention) and a UNet that copies its condition into channels 0-2, with zero detail."""
    text = TextConfig(**text) if isinstance(text, dict) else text
    text_encoder = build_text_encoder(text)
    unet = build_upscaler_unet(unet_cfg, text.hidden_size)
    init_unet_copy(unet, [4 + c for c in LOWRES_CHANNELS], LOWRES_CHANNELS)  # after the 4 latent channels
    return text_encoder, unet


def train_upscaler_unet(run_dir: Path, preset: UpscalerPreset, seed: int = 0, checkpoint_every_s: float = 180.0,
                        max_minutes: float | None = None, eval_images: int = 16, progress: bool = True) -> dict:
    from .train_unet import AdaptiveThreads

    run_dir = Path(run_dir)
    out = run_dir / "unet"
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    t_start = time.time()
    vae = load_upscaler_vae(run_dir)
    tokenizer = load_tokenizer()
    pool_path = out / "pool.pt"
    pool = load_checkpoint(pool_path)
    if pool is None or pool["size"] != preset.pool_size or pool["seed"] != seed:
        pool = build_sr_pool(vae, preset.pool_size, seed, progress=progress)
        save_checkpoint(pool_path, pool)
    n_pool = pool["size"]
    text_encoder, unet = copy_start_models(preset.text, preset.unet)
    params = head_param_groups(unet, preset.unet_lr)
    opt = torch.optim.AdamW(params, weight_decay=1e-2, betas=(0.9, 0.99))
    modules = {"unet": unet, "text_encoder": text_encoder}
    ema = EMA(modules, preset.ema_decay)
    sched, _sample, low_res = make_schedulers()
    ckpt_path = out / "checkpoint.pt"
    ck = load_checkpoint(ckpt_path)
    start, trained_s = resume(ck, modules, opt, ema, "upscaler UNet training")
    with torch.no_grad():
        h_empty = text_encoder(tokenize(tokenizer, [""]).long()).last_hidden_state
    (out / "train_config.json").write_text(json.dumps({"preset": preset.to_dict(), "seed": seed}, indent=2))
    log = JsonLog(out / "log.jsonl")

    def save(step: int, done: bool = False) -> None:
        save_checkpoint(ckpt_path, training_state(modules, opt, ema, step=step, trained_s=trained_s,
                                                  preset=preset.to_dict(), done=done))

    budget_s = preset.time_budget_minutes * 60 if preset.time_budget_minutes else None
    steps = preset.unet_steps
    B, c = preset.unet_batch, preset.latent_crop
    n_lat = pool["lat"].shape[-1]
    step = start
    if ck is None or not ck.get("done"):
        set_threads(preset.threads)
        threads = AdaptiveThreads() if preset.threads > 1 else None
        unet.train()
        text_encoder.train()
        it = itertools.count(start) if budget_s else range(start, steps)
        bar = tqdm(it, initial=start, total=None if budget_s else steps, desc="upscaler-unet", disable=not progress,
                   mininterval=5)
        last_save, ema_loss = time.time(), None
        for step in bar:
            t0 = time.time()
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            rng = np.random.default_rng([seed, step, 0x0E7])
            idx = torch.randint(0, n_pool, (B,), generator=g)
            zs, ls = [], []
            for i in idx.tolist():
                cx, cy = pool["centres"][i].tolist()
                if rng.random() < 0.5:
                    x0 = int(np.clip(round(cx * n_lat / 64 + rng.uniform(-c / 3, c / 3) - c / 2), 0, n_lat - c))
                    y0 = int(np.clip(round(cy * n_lat / 64 + rng.uniform(-c / 3, c / 3) - c / 2), 0, n_lat - c))
                else:
                    x0, y0 = (int(v) for v in rng.integers(0, n_lat - c + 1, size=2))
                zs.append(pool["lat"][i, :, y0 : y0 + c, x0 : x0 + c])
                ls.append(pool["lr"][i, :, y0 : y0 + c, x0 : x0 + c])
            z0 = torch.stack(zs).float()  # pipeline units already
            lr_img = torch.stack(ls).float() / 127.5 - 1.0
            clean = torch.rand(B, generator=g) < preset.clean_prob
            nl = torch.where(clean, torch.zeros(B, dtype=torch.long),
                             torch.randint(0, MAX_NOISE_LEVEL + 1, (B,), generator=g))
            lr_noisy = low_res.add_noise(lr_img, torch.randn(lr_img.shape, generator=g), nl)
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (B,), generator=g)
            zt = sched.add_noise(z0, noise, t)
            for gr in opt.param_groups:
                base = preset.unet_lr * gr["lr_scale"]
                if budget_s:
                    frac = trained_s / budget_s
                    gr["lr"] = lr_at(int(frac * 100_000), 100_000, 0, base) * min(1.0, (step + 1) / preset.warmup)
                else:
                    gr["lr"] = lr_at(step, steps, preset.warmup, base)
            h = h_empty.expand(B, -1, -1)  # the UNet reads no text (no cross-attention)
            pred = unet(torch.cat([zt, lr_noisy], dim=1), t, encoder_hidden_states=h, class_labels=nl).sample
            per = (pred - z0).pow(2).mean(dim=(1, 2, 3))  # the clean latent, at every noise level alike
            loss = per.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.update(modules)
            dt = time.time() - t0
            trained_s += dt
            if threads is not None:
                threads.record(step, dt)
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            if step % 20 == 0:
                log.write(step=step, loss=round(loss.item(), 6), loss_ema=round(ema_loss, 6),
                          detail_mse=round((pred - z0)[:, DETAIL_CHANNEL].pow(2).mean().item(), 6),
                          lr=opt.param_groups[0]["lr"], step_s=round(dt, 3), threads=torch.get_num_threads(),
                          trained_min=round(trained_s / 60, 2))
                bar.set_postfix(loss=f"{ema_loss:.4f}")
            if time.time() - last_save > checkpoint_every_s:
                save(step + 1)
                last_save = time.time()
            if budget_s and trained_s >= budget_s:
                break
            if max_minutes is not None and time.time() - t_start > max_minutes * 60:
                save(step + 1)
                print(f"stopped at step {step + 1} (--max-minutes)")
                return {"steps": step + 1, "stopped_early": True}
        step += 1
        save(step, done=True)
    else:
        step = int(ck["step"])
    result = {"steps": step, "training_minutes": round(trained_s / 60, 1)}
    if eval_images:
        te, un = models_from_upscaler_checkpoint(load_checkpoint(ckpt_path))
        result.update(evaluate_pipeline(_pipeline(vae, te, tokenizer, un), n=eval_images))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**result)
    print(json.dumps(result))
    return result


def export_upscaler(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, fp16: bool = True,
                    unet_copy: bool = False) -> Path:
    """Write the diffusers folder (StableDiffusionUpscalePipeline): UNet and VAE float16, text encoder float32.
    ``unet_copy``: the UNet of the pass-through start rather than the trained one (the measured better one,
    when the UNet's training cost more than the detail channel brought)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    vae = load_upscaler_vae(run_dir)
    if unet_copy:
        cfg = run_dir / "unet" / "train_config.json"
        d = json.loads(cfg.read_text())["preset"] if cfg.exists() else UPSCALER_PRESETS["cpu"].to_dict()
        seed_everything(0)  # the same files each time (the copy reads none of the random weights)
        text_encoder, unet = (m.eval() for m in copy_start_models(d["text"], d["unet"]))
        ck = {"step": 0, "trained_s": 0.0}
    else:
        ckpt = require(run_dir / "unet" / "checkpoint.pt", "upscaler UNet checkpoint",
                       f"run train-latent-upscaler --out {run_dir} first")
        ck = load_checkpoint(ckpt)
        text_encoder, unet = models_from_upscaler_checkpoint(ck, use_ema=use_ema)
    pipe = _pipeline(vae, text_encoder, load_tokenizer(), unet)
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if fp16:
        # float16 files, loaded as float32 (configs say nothing of a dtype; the text encoder's says float32):
        # a plain from_pretrained stays all-float32. The last GroupNorm and convolution of each network stay
        # float32: they carry the pass-through's shift of 16, where float16's spacing (1/64) would move every
        # output by up to a grey level.
        from safetensors.torch import load_file, save_file

        for part in ("text_encoder", "unet", "vae"):
            for f in (out_dir / part).glob("*.safetensors"):
                sd = load_file(str(f))
                save_file({k: v.half() if v.dtype.is_floating_point and not _is_head(k) else v
                           for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    tok_dir = out_dir / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok_dir.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TOKENIZER_DIR / name, tok_dir / name)
    info = {"training_step": int(ck["step"]), "training_minutes": round(float(ck.get("trained_s", 0)) / 60, 1),
            "ema": use_ema and not unet_copy, "unet": "pass-through start (a copy of the condition)" if unet_copy
            else "trained",
            "weights_dtype": "float16 but the last GroupNorm and convolution of each network (float32); loaded as float32"
            if fp16 else "float32"}
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # the condition's noise level the studio uses with this model (upscale.x4_noise_level)
    (out_dir / "studio.json").write_text(json.dumps({"noise_level": NOISE_LEVEL}, indent=2) + "\n")
    return out_dir


def _is_head(key: str) -> bool:
    return ".conv_out." in f".{key}" or ".conv_norm_out." in f".{key}"


def load_upscale_pipeline(folder: str | Path, dtype=torch.float32):
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main_train_upscaler(args) -> None:
    preset = UPSCALER_PRESETS[args.preset]
    if args.threads is not None:
        preset.threads = args.threads
    if args.vae_steps is not None:
        preset.vae_steps = args.vae_steps
    if getattr(args, "vae_lr", None) is not None:
        preset.vae_lr = args.vae_lr
    if args.unet_steps is not None:
        preset.unet_steps = args.unet_steps
        preset.time_budget_minutes = None
    if args.time_budget_minutes is not None:
        preset.time_budget_minutes = args.time_budget_minutes
    set_threads(preset.threads)
    stage = getattr(args, "stage", "all")
    if stage in ("all", "vae"):
        train_upscaler_vae(Path(args.out), preset, seed=args.seed, eval_images=args.eval_images)
    if stage in ("all", "unet"):
        train_upscaler_unet(Path(args.out), preset, seed=args.seed, max_minutes=args.max_minutes,
                            eval_images=args.eval_images)


def main_export_upscaler(args) -> None:
    out = export_upscaler(args.run_dir, args.out, use_ema=not args.no_ema, fp16=not args.fp32,
                          unet_copy=getattr(args, "unet_copy", False))
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"exported {out} ({size / 1e6:.1f} MB)")
