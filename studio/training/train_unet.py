"""Stages (b)+(c): the CLIP-architecture text encoder and the (inpainting) UNet, trained jointly.

The images are encoded once by the trained VAE into a pool of latents (with, for each image, one random
inpainting mask and the latent of the masked image), then the denoiser trains on the epsilon loss from the
pool. ``full_mask_prob`` of the samples use the all-ones mask with a black-hole (all zero) masked image:
exactly what StableDiffusionInpaintPipeline feeds the UNet for plain text-to-image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .common import (
    EMA,
    AdaptiveThreads,
    JsonLog,
    StepLoop,
    load_checkpoint,
    require,
    resume,
    save_checkpoint,
    seed_everything,
    set_threads,
    training_state,
)
from .data import IMAGE_SIZE, ShapesDataset, random_mask, to_tensor_batch
from .models import (
    NOISE_SCHEDULE,
    NUM_TRAIN_TIMESTEPS,
    PRESETS,
    Preset,
    TextConfig,
    UnetConfig,
    build_text_encoder,
    build_unet,
    config_of,
    load_tokenizer,
    tokenize,
)
from .train_vae import TRAIN_SEED, load_trained_vae

POOL_SEED_OFFSET = 1000


def latent_mask(mask: np.ndarray) -> torch.Tensor:
    """64x64 mask -> 1x16x16, the way StableDiffusionInpaintPipeline resizes it (nearest)."""
    m = torch.from_numpy(mask)[None, None]
    return F.interpolate(m, size=(IMAGE_SIZE // 4, IMAGE_SIZE // 4))[0]


@torch.no_grad()
def build_pool(vae, tokenizer, size: int, seed: int, batch: int = 128, progress: bool = True) -> dict:
    """Encode ``size`` dataset images (and one masked copy each) to latent means (unscaled)."""
    ds = ShapesDataset(TRAIN_SEED + POOL_SEED_OFFSET + seed)
    vae.eval()
    lat = torch.empty(size, 4, 16, 16, dtype=torch.float16)
    mlat = torch.empty(size, 4, 16, 16, dtype=torch.float16)
    masks = torch.empty(size, 1, 16, 16, dtype=torch.uint8)
    captions: list[str] = []
    for s in tqdm(range(0, size, batch), desc="encode pool", disable=not progress, mininterval=5):
        idx = range(s, min(size, s + batch))
        imgs, ms = [], []
        for i in idx:
            img, cap = ds.sample(i)
            imgs.append(img)
            captions.append(cap)
            ms.append(random_mask(np.random.default_rng([seed, i, 77])))
        x = to_tensor_batch(imgs)
        m = torch.from_numpy(np.stack(ms))[:, None]
        lat[s : s + len(idx)] = vae.encode(x).latent_dist.mean.half()
        mlat[s : s + len(idx)] = vae.encode(x * (m < 0.5)).latent_dist.mean.half()
        masks[s : s + len(idx)] = F.interpolate(m, size=(16, 16)).to(torch.uint8)
    uniq = sorted(set(captions))
    ids_u = tokenize(tokenizer, uniq)
    where = {c: k for k, c in enumerate(uniq)}
    ids = ids_u[torch.tensor([where[c] for c in captions])].to(torch.int32)
    blank = vae.encode(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).latent_dist.mean.half()
    return {"lat": lat, "mlat": mlat, "mask": masks, "ids": ids, "blank": blank, "size": size, "seed": seed}


def loss_weights(
    scheduler, t: torch.Tensor, gamma: float = 5.0, x0_floor: float = 0.0, cap: float = 10.0
) -> torch.Tensor:
    """Min-SNR-gamma weights for the epsilon loss, raised at high noise to ``x0_floor / SNR`` (at most ``cap``).

    In image (x0) terms the epsilon loss weighs errors by the SNR, so where the layout is decided (SNR ~ 0.01)
    getting the object's place wrong costs nearly nothing: the model then takes the layout from the noise."""
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma) / snr
    if x0_floor > 0:
        w = torch.maximum(w, torch.clamp(x0_floor / snr, max=cap))
    return w


def make_noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)


def train_unet(
    run_dir: Path,
    preset: Preset,
    steps: int | None = None,
    seed: int = 0,
    checkpoint_every_s: float = 180.0,
    max_minutes: float | None = None,
    progress: bool = True,
    adaptive_threads: bool = True,
    time_budget_minutes: float | None = None,
    init_from: Path | None = None,
    pool_from: Path | None = None,
) -> dict:
    """Train for ``steps`` steps, or, with ``time_budget_minutes``, for that much training time (the learning
    rate schedule then follows the fraction of the budget spent: a shared CPU's speed is unpredictable)."""
    run_dir = Path(run_dir)
    out = run_dir / "unet"
    out.mkdir(parents=True, exist_ok=True)
    set_threads(preset.threads)
    steps = int(steps or preset.unet_steps)
    seed_everything(seed)
    t_start = time.time()

    if init_from:
        require(Path(init_from), "--init-from checkpoint", "a train-unet run's unet/checkpoint.pt")
    if pool_from:
        require(Path(pool_from), "--pool-from latent pool", "a train-unet run's unet/pool.pt")
    vae = load_trained_vae(run_dir)
    # latent_scale < 1 carries the latents smaller than unit std: the same as shifting the noise schedule to
    # more noise (SNR / latent_scale**2), which a 16x16 latent needs: with SD's schedule, made for 64x64
    # latents, the layout of the image still shows through the noise at the last timesteps
    sf = float(vae.config.scaling_factor) * preset.latent_scale
    tokenizer = load_tokenizer()
    pool_path = Path(pool_from) if pool_from else out / "pool.pt"
    pool = load_checkpoint(pool_path)
    if pool is None or pool["size"] != preset.pool_size or pool["seed"] != seed:
        pool = build_pool(vae, tokenizer, preset.pool_size, seed, progress=progress)
        save_checkpoint(pool_path, pool)
    del vae
    n_pool = pool["size"]
    empty_ids = tokenize(tokenizer, [""])[0].to(torch.int32)

    text_encoder = build_text_encoder(preset.text)
    unet = build_unet(preset.unet, preset.text.hidden_size)
    params = [
        {"params": list(unet.parameters()), "lr": preset.unet_lr, "base_lr": preset.unet_lr},
        {"params": list(text_encoder.parameters()), "lr": preset.text_lr, "base_lr": preset.text_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=1e-2, betas=(0.9, 0.99))
    modules = {"unet": unet, "text_encoder": text_encoder}
    ema = EMA(modules, preset.ema_decay)
    sched = make_noise_scheduler()
    ckpt_path = out / "checkpoint.pt"
    start = 0
    trained_s = 0.0
    ck = load_checkpoint(ckpt_path)
    if ck is None and init_from:
        init = load_checkpoint(Path(init_from))
        sd = dict(init["unet"])
        w_old, w_new = sd["conv_in.weight"], unet.conv_in.weight
        if w_old.shape != w_new.shape:  # a wider input kernel: the old one in its centre, zeros around
            k_old, k_new = w_old.shape[-1], w_new.shape[-1]
            w = torch.zeros_like(w_new)
            o = (k_new - k_old) // 2
            w[:, :, o : o + k_old, o : o + k_old] = w_old
            sd["conv_in.weight"] = w
        unet.load_state_dict(sd)
        text_encoder.load_state_dict(init["text_encoder"])
        ema = EMA(modules, preset.ema_decay)
        print(f"initialised from {init_from} (step {init['step']})")
    if ck is not None:
        start, trained_s = resume(ck, modules, opt, ema, "UNet training")
    meta = {"preset": preset.to_dict(), "scaling_factor": sf, "seed": seed,
            "init_from": str(init_from) if init_from else None}
    (out / "train_config.json").write_text(json.dumps(meta, indent=2))
    log = JsonLog(out / "log.jsonl")

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state(
            modules, opt, ema, step=step, trained_s=trained_s, preset=preset.to_dict(), scaling_factor=sf,
            unet_config=dict(unet.config), text_config=text_encoder.config.to_dict(),
        ))  # fmt: skip

    threads = AdaptiveThreads() if adaptive_threads and preset.threads > 1 else None
    B = preset.unet_batch
    blank = pool["blank"].float() * sf
    unet.train()
    text_encoder.train()
    budget_s = time_budget_minutes * 60 if time_budget_minutes else None
    if budget_s:
        steps = 10**9
    loop = StepLoop(save, start=start, steps=steps, desc="train-unet", log_every=20,
                    checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, max_minutes=max_minutes,
                    started=t_start, progress=progress, stop_message="time budget reached at step {step}")
    ema_loss = None
    step = start
    for step in loop:
        t0 = time.time()
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n_pool, (B,), generator=g)
        ids = pool["ids"][idx].long()
        drop = torch.rand(B, generator=g) < preset.uncond_prob
        ids[drop] = empty_ids.long()
        z0 = pool["lat"][idx].float() * sf
        noise = torch.randn(z0.shape, generator=g)
        if preset.noise_offset:
            # offset noise: with SD's schedule the last timestep still leaks each channel's mean (an image's
            # flat background) into x_T; without this the model reads a random background colour from the
            # pure noise it starts from at inference
            noise = noise + preset.noise_offset * torch.randn(B, noise.shape[1], 1, 1, generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        full = (torch.rand(B, generator=g) < preset.full_mask_prob).view(B, 1, 1, 1)
        mask = torch.where(full, torch.ones(B, 1, 16, 16), pool["mask"][idx].float())
        mlat = torch.where(full, blank.expand(B, -1, -1, -1), pool["mlat"][idx].float() * sf)
        for gr in opt.param_groups:
            gr["lr"] = loop.lr(step, gr["base_lr"], preset.warmup, trained_s)
        h = text_encoder(ids).last_hidden_state
        pred = unet(torch.cat([zt, mask, mlat], dim=1), t, encoder_hidden_states=h).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * loss_weights(sched, t, x0_floor=preset.x0_floor, cap=preset.high_noise_cap)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), 1.0)
        opt.step()
        ema.update(modules)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        dt = time.time() - t0
        trained_s += dt
        if threads is not None:
            threads.record(step, dt)
        if loop.logs(step):
            log.write(step=step, loss=round(loss.item(), 5), loss_ema=round(ema_loss, 5), eps_mse=round(per.mean().item(), 5),
                      lr=opt.param_groups[0]["lr"], step_s=round(dt, 3), threads=torch.get_num_threads())
            loop.bar.set_postfix(loss=f"{ema_loss:.4f}", thr=torch.get_num_threads())
        loop.end_step(step, trained_s)
    if loop.stopped_early:
        return {"steps": step + 1, "stopped_early": True}
    if budget_s:  # the budget ended it
        steps = step + 1
    save(steps)
    result = {"steps": steps, "minutes": round((time.time() - t_start) / 60, 1), "training_minutes": round(trained_s / 60, 1),
              "final_loss_ema": ema_loss}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


def models_from_checkpoint(ck: dict, use_ema: bool = True):
    """Rebuild (text_encoder, unet) from a training checkpoint, with the EMA weights by default."""
    preset = ck["preset"]
    tcfg = TextConfig(**preset["text"])
    ucfg = config_of(UnetConfig, preset["unet"])
    text_encoder = build_text_encoder(tcfg)
    unet = build_unet(ucfg, tcfg.hidden_size)
    if use_ema:
        unet.load_state_dict(ck["ema"]["shadow"]["unet"])
        text_encoder.load_state_dict(ck["ema"]["shadow"]["text_encoder"])
    else:
        unet.load_state_dict(ck["unet"])
        text_encoder.load_state_dict(ck["text_encoder"])
    return text_encoder.eval(), unet.eval()


# train-unet flags that override a preset field of the same meaning (None = keep the preset's)
_PRESET_FLAGS = {
    "batch": "unet_batch",
    "threads": "threads",
    "pool_size": "pool_size",
    "noise_offset": "noise_offset",
    "full_mask_prob": "full_mask_prob",
    "latent_scale": "latent_scale",
    "warmup": "warmup",
    "x0_floor": "x0_floor",
    "high_noise_cap": "high_noise_cap",
}


def main_unet(args) -> None:
    preset = PRESETS[args.preset]
    for flag, field_name in _PRESET_FLAGS.items():
        if getattr(args, flag) is not None:
            setattr(preset, field_name, getattr(args, flag))
    if args.conv_in_kernel is not None:
        preset.unet.conv_in_kernel = args.conv_in_kernel
    if args.lr is not None:
        preset.unet_lr = preset.text_lr = args.lr
    train_unet(Path(args.run_dir), preset, steps=args.steps, seed=args.seed, max_minutes=args.max_minutes,
               time_budget_minutes=args.time_budget_minutes, init_from=args.init_from, pool_from=args.pool_from)
