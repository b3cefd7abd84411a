"""Training of the built-in x4 latent upscaler (its models: ``upscaler_models``), in two stages on the built-in
model's domain at 4x (``sr_data.SRPairs``: 256 px renders and their bicubic 64 px downsamplings):
- ``train_upscaler_vae``: the VAE, from its pass-through start, on whole 256 px pictures, the decoder fed the
  exact low-res picture; the best checkpoint on validation scenes is what ships.
- ``train_upscaler_unet``: the UNet (from its copy start) on a pool of encoded scenes, predicting the clean
  latent at every noise level of the condition.

``train-latent-upscaler`` runs both stages, each resumable (checkpoints every few minutes); the data, noise
and timesteps of step k are a pure function of the seed and k.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .common import (
    EMA,
    AdaptiveThreads,
    JsonLog,
    KeepBest,
    StepLoop,
    load_checkpoint,
    resume,
    save_checkpoint,
    seed_everything,
    set_threads,
    training_state,
)
from .evaluate_upscaler import bar_score, bicubic_scores, evaluate_pipeline, vae_scores
from .models import load_tokenizer, tokenize
from .passthrough import FITTED_KERNELS
from .sr_data import HR_SIZE, SCALE, TRAIN_SEED, SRPairs, build_sr_pool, crop_origin, to_pm1
from .upscaler_models import (
    DETAIL_CHANNEL,
    LOWRES_CHANNELS,
    MAX_NOISE_LEVEL,
    PIPELINE_SCALING_FACTOR,
    UPSCALER_PRESETS,
    UpscalerPreset,
    copy_start_models,
    decode_structured,
    load_upscaler_vae,
    make_schedulers,
    models_from_upscaler_checkpoint,
    new_upscaler_vae,
    upscale_pipeline,
)

HEAD_LR_SCALE = 1 / 16
# scenes that choose the VAE stage's best checkpoint: neither training's nor the benchmark's (HELDOUT_SEED)
VALIDATION_SEED = 7_000_003


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
    best = KeepBest(out / "best.pt", vae)
    bic = bicubic_scores(8, VALIDATION_SEED) if eval_images else {}
    if eval_images and not best.best and start == 0:
        scores = {"step": 0, **vae_scores(vae, 8, seed=VALIDATION_SEED)}
        scores["score"] = bar_score(scores, bic)
        best.keep(scores)

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"model": vae}, opt, step=step, preset=preset.to_dict()))

    def validate(step: int) -> None:
        val = vae_scores(vae, 8, seed=VALIDATION_SEED)
        val["score"] = bar_score(val, bic)
        log.write(step=step, validation=val)
        best.offer({"step": step, **val})
        vae.train()

    halves = [[*vae.encoder.parameters(), *vae.quant_conv.parameters()],
              [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]]
    vae.train()
    loop = StepLoop(save, start=start, steps=steps, desc="upscaler-vae", log_every=10,
                    checkpoint_every_s=checkpoint_every_s, progress=progress,
                    validate=validate if eval_images else None, validate_every=100)
    cl = c // SCALE
    for step in loop:
        lr_now = loop.lr(step, preset.vae_lr, preset.vae_warmup)
        for g in opt.param_groups:
            g["lr"] = lr_now * g["lr_scale"]
        rng = np.random.default_rng([seed, step, 0xAE])
        his, los = [], []
        for j in range(B):
            index = step * B + j
            scene = src.ds.scene(index)
            hr, lr, _cap = src.pair(index)
            x0, y0 = crop_origin(rng, scene, HR_SIZE // SCALE, cl, 64.0)
            his.append(hr[y0 * SCALE : (y0 + cl) * SCALE, x0 * SCALE : (x0 + cl) * SCALE])
            los.append(lr[y0 : y0 + cl, x0 : x0 + cl])
        x, lo = to_pm1(his), to_pm1(los)
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
        if loop.logs(step):
            mse = (y - x).pow(2).mean().item() / 4.0
            log.write(step=step, loss=round(loss.item(), 5), psnr_batch=round(10 * np.log10(1 / max(mse, 1e-10)), 2),
                      enc_mse=round(enc.item(), 6), detail_std=round(d.std().item(), 3), lr=lr_now)
            loop.bar.set_postfix(loss=f"{loss.item():.4f}")
        loop.end_step(step)
    save(steps)
    kept = best.restore()
    if kept:
        log.write(best=kept)
    vae.eval()
    result = {"steps": steps, "best_step": best.best.get("step", steps), "before": scores0,
              **(vae_scores(vae, eval_images) if eval_images else {})}
    vae.save_pretrained(final)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**{k: v for k, v in result.items() if k != "before"})
    print(json.dumps(result))
    return result


def train_upscaler_unet(run_dir: Path, preset: UpscalerPreset, seed: int = 0, checkpoint_every_s: float = 180.0,
                        max_minutes: float | None = None, eval_images: int = 16, progress: bool = True) -> dict:
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
        loop = StepLoop(save, start=start, steps=steps, desc="upscaler-unet", log_every=20,
                        checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, max_minutes=max_minutes,
                        started=t_start, progress=progress)
        ema_loss = None
        for step in loop:
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
                gr["lr"] = loop.lr(step, preset.unet_lr * gr["lr_scale"], preset.warmup, trained_s)
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
            if loop.logs(step):
                log.write(step=step, loss=round(loss.item(), 6), loss_ema=round(ema_loss, 6),
                          detail_mse=round((pred - z0)[:, DETAIL_CHANNEL].pow(2).mean().item(), 6),
                          lr=opt.param_groups[0]["lr"], step_s=round(dt, 3), threads=torch.get_num_threads(),
                          trained_min=round(trained_s / 60, 2))
                loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
            loop.end_step(step, trained_s)
        if loop.stopped_early:
            return {"steps": step + 1, "stopped_early": True}
        step += 1
        save(step, done=True)
    else:
        step = int(ck["step"])
    result = {"steps": step, "training_minutes": round(trained_s / 60, 1)}
    if eval_images:
        te, un = models_from_upscaler_checkpoint(load_checkpoint(ckpt_path))
        result.update(evaluate_pipeline(upscale_pipeline(vae, te, tokenizer, un), n=eval_images))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**result)
    print(json.dumps(result))
    return result


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
