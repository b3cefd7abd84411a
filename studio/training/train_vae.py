"""Stage (a): AutoencoderKL on the procedural shapes (L1 + MSE reconstruction, a small KL term)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from studio.engine.preview import to_uint8 as rgb_to_uint8

from .common import (
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
from .data import ShapesDataset, to_tensor_batch
from .models import PRESETS, Preset, build_vae

TRAIN_SEED = 1
HELDOUT_SEED = 2_000_003  # held-out images for the PSNR measurement


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Bx3xHxW in [-1, 1] -> BxHxWx3 uint8, clamped and rounded exactly as the engine does."""
    return rgb_to_uint8(x.detach().permute(0, 2, 3, 1).cpu().numpy())


@torch.no_grad()
def measure_psnr(vae, n: int = 256, seed: int = HELDOUT_SEED, batch: int = 64) -> float:
    """Mean PSNR (dB, per image on uint8) of encode(mean) -> decode on held-out images."""
    vae.eval()
    ds = ShapesDataset(seed)
    scores = []
    for s in range(0, n, batch):
        imgs = [ds.sample(i)[0] for i in range(s, min(n, s + batch))]
        x = to_tensor_batch(imgs)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        for a, b in zip(imgs, to_uint8(y), strict=True):
            scores.append(psnr_uint8(a, b))
    return float(np.mean(scores))


@torch.no_grad()
def measure_scaling_factor(vae, n: int = 2048, seed: int = TRAIN_SEED, batch: int = 128) -> float:
    """1 / std of the latents (posterior samples), as in the LDM recipe."""
    vae.eval()
    ds = ShapesDataset(seed)
    zs = []
    for s in range(0, n, batch):
        x = to_tensor_batch([ds.sample(10_000_000 + i)[0] for i in range(s, min(n, s + batch))])
        zs.append(vae.encode(x).latent_dist.sample())
    return float(1.0 / torch.cat(zs).std())


def train_vae(
    run_dir: Path,
    preset: Preset,
    steps: int | None = None,
    seed: int = 0,
    checkpoint_every_s: float = 180.0,
    eval_images: int = 256,
    progress: bool = True,
) -> dict:
    run_dir = Path(run_dir)
    out = run_dir / "vae"
    out.mkdir(parents=True, exist_ok=True)
    set_threads(preset.threads)
    steps = int(steps or preset.vae_steps)
    seed_everything(seed)
    vae = build_vae(preset.vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=preset.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    ckpt_path = out / "checkpoint.pt"
    start, _ = resume(load_checkpoint(ckpt_path), {"model": vae}, opt, what="VAE training")
    (out / "vae_config.json").write_text(json.dumps(preset.to_dict()["vae"], indent=2))
    log = JsonLog(out / "log.jsonl")
    ds = ShapesDataset(TRAIN_SEED + seed)
    batch = preset.vae_batch
    vae.train()
    ema_loss = None

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"model": vae}, opt, step=step, preset=preset.to_dict()))

    loop = StepLoop(save, start=start, steps=steps, desc="train-vae", log_every=25,
                    checkpoint_every_s=checkpoint_every_s, progress=progress)
    for step in loop:
        lr = loop.lr(step, preset.vae_lr, min(100, steps // 10))
        for g in opt.param_groups:
            g["lr"] = lr
        x = to_tensor_batch([ds.sample(step * batch + j)[0] for j in range(batch)])
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        rec = (y - x).abs().mean() + 2.0 * (y - x).pow(2).mean()
        kl = post.kl().mean()
        loss = rec + preset.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if loop.logs(step):
            mse = (y - x).pow(2).mean().item() / 4.0  # in [0,1] units
            log.write(step=step, loss=round(loss.item(), 5), rec=round(rec.item(), 5), kl=round(kl.item(), 2),
                      psnr_batch=round(10 * np.log10(1 / max(mse, 1e-10)), 2), lr=lr)
            loop.bar.set_postfix(loss=f"{ema_loss:.4f}", kl=f"{kl.item():.0f}")
        loop.end_step(step)
    save(steps)
    vae.eval()
    sf = measure_scaling_factor(vae, n=min(2048, 64 * max(1, eval_images // 8)))
    vae.register_to_config(scaling_factor=sf)
    psnr = measure_psnr(vae, n=eval_images)
    vae.save_pretrained(out / "final")
    result = {"steps": steps, "scaling_factor": sf, "psnr_db": psnr, "eval_images": eval_images}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    log.write(**result)
    print(json.dumps(result))
    return result


def load_trained_vae(run_dir: Path):
    from diffusers import AutoencoderKL

    folder = Path(run_dir) / "vae" / "final"
    require(folder / "config.json", "trained VAE", f"run train-vae --run-dir {run_dir} first")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True)


def main_vae(args) -> None:
    preset = PRESETS[args.preset]
    if args.batch:
        preset.vae_batch = args.batch
    if args.threads:
        preset.threads = args.threads
    train_vae(Path(args.run_dir), preset, steps=args.steps, seed=args.seed, eval_images=args.eval_images)
