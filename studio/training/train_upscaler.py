"""Training of the built-in x4 latent upscaler (its models: ``upscaler_models``), in two stages on the built-in
model's domain at 4x (``sr_data.SRPairs``: 256 px renders and their bicubic 64 px downsamplings):
- ``train_upscaler_vae``: the VAE, from its pass-through start, on whole 256 px pictures, the decoder fed the
  exact low-res picture; the best checkpoint on validation scenes is what ships.
- ``train_upscaler_unet`` (``train_upscaler_unet.py``): the UNet, from its copy start (or a shipped folder's
  UNet), on the picture its prediction decodes to through the frozen decoder; the best checkpoint on
  validation scenes, as the studio runs the model, is what ships.

``train-latent-upscaler`` runs both stages, each resumable (checkpoints every few minutes); the data, noise
and timesteps of step k are a pure function of the seed and k.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import (
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
from .evaluate_upscaler import bar_score, bicubic_scores, vae_scores
from .passthrough import FITTED_KERNELS
from .sr_data import HR_SIZE, SCALE, TRAIN_SEED, SRPairs, crop_origin, to_pm1
from .train_upscaler_unet import VALIDATION_SEED, train_upscaler_unet
from .upscaler_models import (
    DETAIL_CHANNEL,
    HEAD_LR_SCALE,
    LOWRES_CHANNELS,
    PIPELINE_SCALING_FACTOR,
    UPSCALER_PRESETS,
    UpscalerPreset,
    decode_structured,
    new_upscaler_vae,
)


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


def main_train_upscaler(args) -> None:
    preset = UPSCALER_PRESETS[args.preset]
    if args.threads is not None:
        preset.threads = args.threads
    if args.vae_steps is not None:
        preset.vae_steps = args.vae_steps
    if getattr(args, "vae_lr", None) is not None:
        preset.vae_lr = args.vae_lr
    if getattr(args, "unet_lr", None) is not None:
        preset.unet_lr = args.unet_lr
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
        from_model = getattr(args, "from_model", None)
        train_upscaler_unet(Path(args.out), preset, seed=args.seed, max_minutes=args.max_minutes,
                            eval_images=args.eval_images, from_model=Path(from_model) if from_model else None)
