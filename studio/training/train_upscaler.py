"""The built-in x4 latent upscaler, in diffusers' ``StableDiffusionUpscalePipeline`` layout, trained on the
built-in model's domain at 4x (``sr_data.SRPairs``: 256 px renders and their bicubic 64 px downsamplings).

The layout is Stable Diffusion x4 upscaler's, small:
- ``vae``: an ``AutoencoderKL`` with 4x downsampling and 4 latent channels (the built-in model's VAE
  architecture), fine-tuned from the built-in VAE on 256 px crops (stage 1, the same L1 + 2*MSE + KL loss as
  ``train_vae``). The pipeline always uses ``scaling_factor`` 0.08333 (it overwrites any other value), so the
  encoder's mean (and the decoder's input) are rescaled, exactly, to make ``0.08333 * latent`` unit std.
- ``unet``: a ``UNet2DConditionModel`` with 7 input channels (4 noisy latent + the 3-channel low-res image,
  which is the latent's size: 64x64 -> 64x64x4 latents -> 256x256) and ``num_class_embeds`` 1000: the class
  label is the noise level added to the low-res image by ``low_res_scheduler`` (0..``max_noise_level`` 350).
  v-prediction, as SD x4; trained on random 32x32 latent crops (the network is fully convolutional).
- ``text_encoder`` / ``tokenizer``: a tiny CLIP text model (the captions matter little here; dropped 20% of
  the time) and the project's tokenizer. Trained jointly with the UNet, as ``train_unet`` does.
- ``scheduler``: DDIM (v-prediction, "trailing" spacing so a few steps start at t = 999);
  ``low_res_scheduler``: DDPM; the betas of SD x4 (scaled_linear 0.0001 -> 0.02).

``train-latent-upscaler`` runs both stages, each resumable (checkpoints every few minutes); the data, crops,
noise and timesteps of step k are a pure function of the seed and k.
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
from .sr_data import HR_SIZE, SCALE, TRAIN_SEED, SRPairs, bicubic, heldout_pairs, psnr, ssim
from .train_unet import tokenize

PIPELINE_SCALING_FACTOR = 0.08333  # StableDiffusionUpscalePipeline forces this value
MAX_NOISE_LEVEL = 350
# SD x4 upscaler's betas (both schedulers)
UPSCALER_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
BUILTIN_VAE = Path("models/builtin/vae")
POOL_SEED_OFFSET = 500


@dataclass
class UpUnetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 96)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 16


@dataclass
class UpscalerPreset:
    name: str
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(
        hidden_size=8, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8))
    unet: UpUnetConfig = field(default_factory=UpUnetConfig)
    vae_init_builtin: bool = True  # fine-tune the built-in model's VAE (same architecture) instead of scratch
    vae_steps: int = 700
    vae_batch: int = 4
    # whole 256 px pictures: GroupNorm's statistics are the picture's, so a VAE tuned on crops shifts the
    # colours of whole pictures (measured: crops raised the crop PSNR and lowered the whole-picture one)
    vae_crop: int = 256
    vae_lr: float = 2e-4
    vae_kl_weight: float = 1e-7
    latent_std: float = 1.0  # std of 0.08333 * latent the UNet sees
    pool_size: int = 1200  # scenes encoded once
    unet_batch: int = 6
    latent_crop: int = 64  # whole latents, for the same reason as vae_crop
    unet_steps: int = 6000
    time_budget_minutes: float | None = 25.0
    unet_lr: float = 5e-4
    text_lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.999
    uncond_prob: float = 0.2
    low_noise_prob: float = 0.5  # this share of noise levels drawn from 0..40 (inference uses ~20), the rest 0..350
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


UPSCALER_PRESETS: dict[str, UpscalerPreset] = {
    # ~1 hour on 2 CPU cores: VAE ~30 min (700 steps of 4 whole pictures), pool ~1 min, UNet 25 min
    "cpu": UpscalerPreset(name="cpu"),
    # seconds: the tests (from scratch, tiny everything)
    "tiny": UpscalerPreset(
        name="tiny",
        vae=VaeConfig(block_out_channels=(8, 16, 16), norm_num_groups=8),
        text=TextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                        projection_dim=8),
        unet=UpUnetConfig(block_out_channels=(16, 16, 32), norm_num_groups=8),
        vae_init_builtin=False, vae_steps=3, vae_batch=2, vae_crop=32, pool_size=4, unet_batch=2,
        latent_crop=16, unet_steps=3, time_budget_minutes=None, warmup=1, ema_decay=0.9, threads=1,
    ),
    # for one GPU (config only: never run here)
    "gpu": UpscalerPreset(
        name="gpu",
        vae=VaeConfig(block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=32),
        text=TextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        projection_dim=64),
        unet=UpUnetConfig(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=32),
        vae_init_builtin=False, vae_steps=20000, vae_batch=32, vae_crop=128, pool_size=50000, unet_batch=128,
        latent_crop=64, unet_steps=100_000, time_budget_minutes=None, unet_lr=2e-4, text_lr=2e-4,
        warmup=1000, ema_decay=0.9999, threads=8,
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
        num_class_embeds=1000,  # the low-res noise level (SD x4's layout)
    )


def make_schedulers():
    """(training DDPM, shipped DDIM sampler, low-res noise DDPM), all v-prediction with SD x4's betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(**UPSCALER_SCHEDULE, prediction_type="v_prediction", clip_sample=False)
    sample = DDIMScheduler(**UPSCALER_SCHEDULE, prediction_type="v_prediction", clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
    low_res = DDPMScheduler(**UPSCALER_SCHEDULE, clip_sample=False)
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


@torch.no_grad()
def vae_psnr_256(vae, n: int = 16) -> float:
    from .train_vae import to_uint8

    vae.eval()
    scores = []
    for hr, _lr, _c in heldout_pairs(n):
        y = vae.decode(vae.encode(_to_pm1([hr])).latent_dist.mode()).sample
        scores.append(psnr(hr, to_uint8(y)[0]))
    return float(np.mean(scores))


def train_upscaler_vae(run_dir: Path, preset: UpscalerPreset, seed: int = 0, checkpoint_every_s: float = 180.0,
                       eval_images: int = 16, progress: bool = True) -> dict:
    out = Path(run_dir) / "vae"
    out.mkdir(parents=True, exist_ok=True)
    final = out / "final"
    if (final / "config.json").exists():
        return json.loads((out / "result.json").read_text())
    seed_everything(seed)
    vae = _vae_from_cfg(preset.vae)
    if preset.vae_init_builtin:
        from diffusers import AutoencoderKL

        require(BUILTIN_VAE / "config.json", "built-in VAE", "the repository's models/builtin")
        vae.load_state_dict(AutoencoderKL.from_pretrained(BUILTIN_VAE, local_files_only=True).float().state_dict())
    opt = torch.optim.AdamW(vae.parameters(), lr=preset.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    ckpt_path = out / "checkpoint.pt"
    start, _ = resume(load_checkpoint(ckpt_path), {"model": vae}, opt, what="upscaler VAE training")
    log = JsonLog(out / "log.jsonl")
    src = SRPairs(TRAIN_SEED + 7 + seed)
    steps, B, c = preset.vae_steps, preset.vae_batch, preset.vae_crop
    psnr0 = vae_psnr_256(vae, eval_images) if eval_images and start == 0 else None

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"model": vae}, opt, step=step, preset=preset.to_dict()))

    vae.train()
    last_save = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="upscaler-vae", disable=not progress,
               mininterval=5)
    for step in bar:
        lr = lr_at(step, steps, min(20, steps // 10), preset.vae_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([seed, step, 0xAE])
        crops = []
        for j in range(B):
            index = step * B + j
            scene = src.ds.scene(index)
            hr, _lr, _cap = src.pair(index)
            x0, y0 = _crop_origin(rng, scene, HR_SIZE, c, 64.0)
            crops.append(hr[y0 : y0 + c, x0 : x0 + c])
        x = _to_pm1(crops)
        post = vae.encode(x).latent_dist
        # the posterior mean decoded: the upscaler's PSNR is bounded by this reconstruction
        y = vae.decode(post.mode()).sample
        rec = (y - x).abs().mean() + 2.0 * (y - x).pow(2).mean()
        loss = rec + preset.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 10 == 0:
            mse = (y - x).pow(2).mean().item() / 4.0
            log.write(step=step, loss=round(loss.item(), 5), psnr_batch=round(10 * np.log10(1 / max(mse, 1e-10)), 2),
                      lr=lr)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if eval_images and step % 100 == 99:
            log.write(step=step, psnr_256=round(vae_psnr_256(vae, 8), 2))
            vae.train()
        if time.time() - last_save > checkpoint_every_s:
            save(step + 1)
            last_save = time.time()
    save(steps)
    vae.eval()
    # the pipeline's fixed scaling factor: rescale so that 0.08333 * latent has std preset.latent_std
    with torch.no_grad():
        pairs = [SRPairs(TRAIN_SEED + 9 + seed).pair(i)[0] for i in range(32)]
        std = float(torch.cat([vae.encode(_to_pm1(pairs[i : i + 8])).latent_dist.mean for i in range(0, 32, 8)]).std())
    k = preset.latent_std / (PIPELINE_SCALING_FACTOR * std)
    rescale_latents(vae, k)
    vae.register_to_config(scaling_factor=PIPELINE_SCALING_FACTOR)
    result = {"steps": steps, "latent_std_before": std, "rescaled_by": k,
              "psnr_256_before": psnr0, "psnr_256": vae_psnr_256(vae, eval_images) if eval_images else None}
    vae.save_pretrained(final)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**result)
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------- stage 2: the text encoder and the UNet


@torch.no_grad()
def build_sr_pool(vae, tokenizer, size: int, seed: int, progress: bool = True) -> dict:
    """Encode ``size`` high-res scenes to latent means (unscaled), with their low-res images and captions."""
    src = SRPairs(TRAIN_SEED + POOL_SEED_OFFSET + seed)
    vae.eval()
    n_lat = HR_SIZE // SCALE
    lat = torch.empty(size, 4, n_lat, n_lat, dtype=torch.float16)
    lrs = torch.empty(size, 3, n_lat, n_lat, dtype=torch.uint8)
    centres = torch.full((size, 2), -1.0)
    captions = []
    for s in tqdm(range(0, size, 8), desc="encode pool", disable=not progress, mininterval=5):
        idx = range(s, min(size, s + 8))
        his = []
        for i in idx:
            scene = src.ds.scene(i)
            hr, lr, cap = src.pair(i)
            his.append(hr)
            lrs[i] = torch.from_numpy(lr).permute(2, 0, 1)
            captions.append(cap)
            o = scene.objects[i % len(scene.objects)]
            centres[i] = torch.tensor([o.cx, o.cy])
        lat[s : s + len(idx)] = vae.encode(_to_pm1(his)).latent_dist.mean.half()
    ids = tokenize(tokenizer, captions).to(torch.int32)
    return {"lat": lat, "lr": lrs, "centres": centres, "ids": ids, "size": size, "seed": seed}


def _min_snr_v_weights(scheduler, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / (snr + 1)


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


def upscale_with_pipeline(pipe, lr: np.ndarray, caption: str = "", steps: int = 4, noise_level: int = 20,
                          seed: int = 0, guidance_scale: float = 0.0) -> np.ndarray:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    out = pipe(prompt=caption, image=Image.fromarray(lr), num_inference_steps=steps, noise_level=noise_level,
               guidance_scale=guidance_scale, generator=g, output_type="np").images[0]
    return (np.clip(out, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def evaluate_pipeline(pipe, n: int = 16, steps: int = 4, noise_level: int = 20, captions: bool = False) -> dict:
    pm, sm, pb, sb = [], [], [], []
    for i, (hr, lr, cap) in enumerate(heldout_pairs(n)):
        out = upscale_with_pipeline(pipe, lr, cap if captions else "", steps=steps, noise_level=noise_level, seed=i)
        bic = bicubic(lr, hr.shape[0])
        pm.append(psnr(hr, out))
        sm.append(ssim(hr, out))
        pb.append(psnr(hr, bic))
        sb.append(ssim(hr, bic))
    return {"n": n, "inference_steps": steps, "noise_level": noise_level, "psnr": float(np.mean(pm)),
            "ssim": float(np.mean(sm)), "bicubic_psnr": float(np.mean(pb)), "bicubic_ssim": float(np.mean(sb))}


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
        pool = build_sr_pool(vae, tokenizer, preset.pool_size, seed, progress=progress)
        save_checkpoint(pool_path, pool)
    n_pool = pool["size"]
    empty_ids = tokenize(tokenizer, [""])[0].long()
    text_encoder = build_text_encoder(preset.text)
    unet = build_upscaler_unet(preset.unet, preset.text.hidden_size)
    params = [
        {"params": list(unet.parameters()), "lr": preset.unet_lr, "base_lr": preset.unet_lr},
        {"params": list(text_encoder.parameters()), "lr": preset.text_lr, "base_lr": preset.text_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=1e-2, betas=(0.9, 0.99))
    modules = {"unet": unet, "text_encoder": text_encoder}
    ema = EMA(modules, preset.ema_decay)
    sched, _sample, low_res = make_schedulers()
    ckpt_path = out / "checkpoint.pt"
    ck = load_checkpoint(ckpt_path)
    start, trained_s = resume(ck, modules, opt, ema, "upscaler UNet training")
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
            z0 = torch.stack(zs).float() * PIPELINE_SCALING_FACTOR
            lr_img = torch.stack(ls).float() / 127.5 - 1.0
            low = torch.rand(B, generator=g) < preset.low_noise_prob
            nl = torch.where(low, torch.randint(0, 41, (B,), generator=g),
                             torch.randint(0, MAX_NOISE_LEVEL + 1, (B,), generator=g))
            lr_noisy = low_res.add_noise(lr_img, torch.randn(lr_img.shape, generator=g), nl)
            ids = pool["ids"][idx].long()
            ids[torch.rand(B, generator=g) < preset.uncond_prob] = empty_ids
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (B,), generator=g)
            zt = sched.add_noise(z0, noise, t)
            target = sched.get_velocity(z0, noise, t)
            for gr in opt.param_groups:
                if budget_s:
                    frac = trained_s / budget_s
                    gr["lr"] = lr_at(int(frac * 100_000), 100_000, 0, gr["base_lr"]) * min(1.0, (step + 1) / preset.warmup)
                else:
                    gr["lr"] = lr_at(step, steps, preset.warmup, gr["base_lr"])
            h = text_encoder(ids).last_hidden_state
            pred = unet(torch.cat([zt, lr_noisy], dim=1), t, encoder_hidden_states=h, class_labels=nl).sample
            per = (pred - target).pow(2).mean(dim=(1, 2, 3))
            loss = (per * _min_snr_v_weights(sched, t)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), 1.0)
            opt.step()
            ema.update(modules)
            dt = time.time() - t0
            trained_s += dt
            if threads is not None:
                threads.record(step, dt)
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            if step % 20 == 0:
                log.write(step=step, loss=round(loss.item(), 5), loss_ema=round(ema_loss, 5), v_mse=round(per.mean().item(), 5),
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


def export_upscaler(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, fp16: bool = True) -> Path:
    """Write the diffusers folder (StableDiffusionUpscalePipeline): UNet and VAE float16, text encoder float32."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    vae = load_upscaler_vae(run_dir)
    ckpt = require(run_dir / "unet" / "checkpoint.pt", "upscaler UNet checkpoint",
                   f"run train-latent-upscaler --out {run_dir} first")
    ck = load_checkpoint(ckpt)
    text_encoder, unet = models_from_upscaler_checkpoint(ck, use_ema=use_ema)
    pipe = _pipeline(vae, text_encoder, load_tokenizer(), unet)
    if fp16:
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if fp16:
        # the text encoder's weights as float16 too (its 49408-word embedding is most of it), its config still
        # saying float32: transformers then loads it as float32, so a plain from_pretrained stays all-float32
        from safetensors.torch import load_file, save_file

        for f in (out_dir / "text_encoder").glob("*.safetensors"):
            sd = load_file(str(f))
            save_file({k: v.half() if v.dtype.is_floating_point else v for k, v in sd.items()}, str(f),
                      metadata={"format": "pt"})
    tok_dir = out_dir / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok_dir.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TOKENIZER_DIR / name, tok_dir / name)
    info = {"training_step": int(ck["step"]), "training_minutes": round(float(ck.get("trained_s", 0)) / 60, 1),
            "ema": use_ema,
            "weights_dtype": "float16 (text_encoder config float32: loaded as float32)" if fp16 else "float32"}
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


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
    if args.unet_steps is not None:
        preset.unet_steps = args.unet_steps
        preset.time_budget_minutes = None
    if args.time_budget_minutes is not None:
        preset.time_budget_minutes = args.time_budget_minutes
    set_threads(preset.threads)
    train_upscaler_vae(Path(args.out), preset, seed=args.seed, eval_images=args.eval_images)
    train_upscaler_unet(Path(args.out), preset, seed=args.seed, max_minutes=args.max_minutes,
                        eval_images=args.eval_images)


def main_export_upscaler(args) -> None:
    out = export_upscaler(args.run_dir, args.out, use_ema=not args.no_ema, fp16=not args.fp32)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"exported {out} ({size / 1e6:.1f} MB)")
