"""Adversarial (LDM first-stage) retraining of the built-in x4 latent upscaler's VAE decoder
(``train-upscaler-vae-gan``): the upscaler's stage-1 reconstruction loss plus ``discriminator``'s PatchGAN, hinge
loss and adaptive weight, the adversarial factor ramped up after a warm-up.

Decoder only: the encoder (and ``quant_conv``) stays frozen, so the structured latent (channels 0-2 the low-res
picture, 3 the encoder's detail), the UNet trained on it and ``latent_rgb.json`` stay valid. The decoder is fed as
the upscaler's stage 1 and the studio feed it: the exact low-res picture on channels 0-2, the encoder's detail plus
noise on 3; the loss (L1 + 2 MSE) and the discriminator see only what lies inside the border the studio cuts off.
No KL term: with the encoder frozen it is a constant, with no gradient.

Resumable (checkpoint every few minutes; step k's pictures and noise are a pure function of (seed, k)). The
weights that ship are chosen on validation scenes (``train_upscaler_unet.VALIDATION_SEED``) by the built-in VAE's
rule (``train_vae_gan.validation_score``): edge sharpness nearest 1 among the checkpoints losing at most 0.5 dB
of PSNR and 0.002 of SSIM against the start; the start itself when none qualifies.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import adversarial_run
from .common import (
    JsonLog,
    KeepBest,
    StepLoop,
    TrainingInputError,
    load_checkpoint,
    require,
    save_checkpoint,
    training_state,
)
from .discriminator import PatchDiscriminator
from .evaluate_upscaler import decoder_scores
from .sr_data import HR_SIZE, SCALE, TRAIN_SEED, SRPairs, to_pm1
from .train_upscaler import head_param_groups
from .train_upscaler_unet import VALIDATION_SEED
from .train_vae_gan import validation_score
from .upscaler_models import DETAIL_CHANNEL, PIPELINE_SCALING_FACTOR, decode_structured
from .vae_quality import load_vae_folder


@dataclass
class UpGanPreset:
    batch: int
    steps: int  # without a time budget
    lr: float  # the decoder's (its last GroupNorm and convolution at HEAD_LR_SCALE of it, as in stage 1)
    d_lr: float
    disc_start: int  # the adversarial term enters the decoder's loss from this step
    d_start: int  # the discriminator trains from this step (a head start)
    disc_weight: float  # the factor on the adaptive weight, reached after disc_ramp steps
    disc_ramp: int
    ndf: int
    n_layers: int
    crop: int = HR_SIZE  # whole 256 px pictures (GroupNorm's statistics are the picture's); the tests: less
    detail_noise: float = 0.05  # stage 1's: added to the detail channel the decoder sees
    loss_margin: int = 16  # output px at each border outside the loss and the discriminator's view
    threads: int | None = None
    validate_every: int = 100
    val_images: int = 16
    max_psnr_drop: float = 0.5
    max_ssim_drop: float = 0.002
    log_every: int = 10
    warmup: int = 100


PRESETS = {
    "tiny": UpGanPreset(batch=2, steps=6, lr=3e-5, d_lr=1e-4, disc_start=2, d_start=1, disc_weight=0.2, disc_ramp=2,
                        ndf=8, n_layers=1, crop=64, validate_every=3, val_images=1, log_every=1, warmup=1),
    # 1 thread of a CPU shared with other trainings: 3.5-6 s a step of 2 whole pictures (measured). A first run
    # (lr 3e-5, factor 0 -> 0.2 over 400 steps, 70 px patches, the discriminator from step 25) lost 0.85 dB by
    # step 100 (Adam's first steps on the pass-through, as in stage 1) and had halos by step 200 at a factor of
    # 0.075 (PSNR -2.6 dB, edge sharpness 1.53): half the rate, a quarter of the factor, the discriminator
    # learning from the start, 34 px patches
    "cpu": UpGanPreset(batch=2, steps=700, lr=1.5e-5, d_lr=2e-4, disc_start=50, d_start=0, disc_weight=0.05,
                       disc_ramp=300, ndf=32, n_layers=2, threads=1, validate_every=50, val_images=16, warmup=50),
    # one GPU (config only: not run here)
    "gpu": UpGanPreset(batch=32, steps=20000, lr=3e-5, d_lr=1e-4, disc_start=2000, d_start=1000, disc_weight=0.2,
                       disc_ramp=10000, ndf=64, n_layers=3, validate_every=1000, val_images=64, log_every=50,
                       warmup=500),
}


def batch_at(src: SRPairs, step: int, preset: UpGanPreset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s (high-res, low-res) pictures in [-1, 1]: whole, or a crop (the same for every step's run)."""
    rng = np.random.default_rng([seed, step, 0x6A])
    his, los = [], []
    for j in range(preset.batch):
        hr, lr, _cap = src.pair(step * preset.batch + j)
        cl = preset.crop // SCALE
        x0, y0 = (int(v) for v in rng.integers(0, lr.shape[0] - cl + 1, size=2))
        his.append(hr[y0 * SCALE : (y0 + cl) * SCALE, x0 * SCALE : (x0 + cl) * SCALE])
        los.append(lr[y0 : y0 + cl, x0 : x0 + cl])
    return to_pm1(his), to_pm1(los)


def train(model_dir: Path, run_dir: Path, preset: UpGanPreset, *, resume_run: bool = False, steps: int | None = None,
          budget_minutes: float | None = None, stop_after: int | None = None, checkpoint_every_s: float = 180.0,
          eval_images: int = 16, seed: int = 0, progress: bool = True) -> dict:
    """Train the upscaler folder ``model_dir``'s VAE decoder adversarially in ``run_dir``; ``stop_after``: save and
    return after that many steps (a resumed run continues exactly as an unbroken one)."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    ckpt_path, vae = adversarial_run.open_run(model_dir, run_dir, resume_run, preset.threads, seed)
    frozen = [vae.encoder, vae.quant_conv]
    for m in frozen:
        m.requires_grad_(False)
    disc = PatchDiscriminator(3, preset.ndf, preset.n_layers)
    decoder = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    opt = torch.optim.Adam(head_param_groups([vae.decoder], preset.lr, list(vae.post_quant_conv.parameters())),
                           betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(disc.parameters(), lr=preset.d_lr, betas=(0.5, 0.9))
    start, trained_s = adversarial_run.resume_gan(ckpt_path, vae, disc, opt, d_opt,
                                                  "adversarial upscaler VAE training")
    (run_dir / "preset.json").write_text(json.dumps(
        {**asdict(preset), "model": str(model_dir), "decoder_only": True, "seed": seed}, indent=2))
    log = JsonLog(run_dir / "log.jsonl")
    best = KeepBest(run_dir / "best.pt", vae)
    reference = adversarial_run.reference_validation(
        run_dir, vae, decoder_scores, preset, VALIDATION_SEED, best, log,
        lambda v, ref: validation_score(v, ref, preset.max_psnr_drop, preset.max_ssim_drop))
    src = SRPairs(TRAIN_SEED + 7 + seed)  # stage 1's training scenes
    last_layer = vae.decoder.conv_out.weight
    lm = preset.loss_margin if preset.crop > 4 * preset.loss_margin else 0

    def inner(t: torch.Tensor) -> torch.Tensor:
        return t[..., lm : t.shape[-2] - lm, lm : t.shape[-1] - lm]

    def set_modes() -> None:
        vae.train()
        for m in frozen:
            m.eval()

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"vae": vae, "disc": disc}, opt, step=step, trained_s=trained_s,
                                                  d_optimizer=d_opt.state_dict(), decoder_only=True))

    def validate(step: int) -> None:
        val = decoder_scores(vae, preset.val_images, VALIDATION_SEED)
        val["score"] = validation_score(val, reference, preset.max_psnr_drop, preset.max_ssim_drop)
        log.write(step=step, validation=val)
        best.offer({"step": step, **val})
        set_modes()

    total = int(steps or preset.steps)
    loop = StepLoop(save, start=start, steps=total, desc="train-upscaler-vae-gan", log_every=preset.log_every,
                    checkpoint_every_s=checkpoint_every_s, progress=progress,
                    budget_s=budget_minutes * 60 if budget_minutes else None,
                    validate=validate, validate_every=preset.validate_every)
    set_modes()
    done = start
    for step in loop:
        t0 = time.perf_counter()
        lr = loop.lr(step, preset.lr, preset.warmup, trained_s)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        for group in d_opt.param_groups:
            group["lr"] = lr * preset.d_lr / preset.lr
        x, lo = batch_at(src, step, preset, seed)
        with torch.no_grad():
            d = vae.encode(x).latent_dist.mean[:, DETAIL_CHANNEL : DETAIL_CHANNEL + 1] * PIPELINE_SCALING_FACTOR
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        z = torch.cat([lo, d + preset.detail_noise * torch.randn(d.shape, generator=g)], dim=1)
        y = decode_structured(vae, z)
        yi, xi = inner(y), inner(x)
        rec = (yi - xi).abs().mean() + 2.0 * (yi - xi).pow(2).mean()
        loss = rec
        d_weight, g_loss = adversarial_run.adversarial_term(rec, yi, disc, last_layer, preset, step)
        if g_loss.requires_grad:
            loss = loss + d_weight * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder, 1.0)  # as stage 1 clips each half
        opt.step()
        d_loss = torch.zeros(())
        if step >= preset.d_start:
            d_loss = adversarial_run.critic_step(disc, d_opt, xi, yi)
        trained_s += time.perf_counter() - t0
        adversarial_run.log_step(loop, log, step, rec, g_loss, d_weight, d_loss, lr, trained_s)
        done = step + 1
        loop.end_step(step, trained_s)
        if stop_after is not None and done >= stop_after:
            break
    save(done)
    result: dict = {"steps": done, "trained_minutes": round(trained_s / 60, 1), "reference_validation": reference}
    if stop_after is not None and done >= stop_after and done < total:
        return result
    return adversarial_run.finish(run_dir, vae, best, decoder_scores, eval_images, log, result)  # the best ships


def export(run_dir: Path, model_dir: Path, *, last: bool = False) -> Path:
    """Install the run's kept (or ``last``) decoder into the upscaler folder ``model_dir/vae`` in its storage
    format: float16 but the last GroupNorm and convolution of each half (float32: they carry the pass-through's
    shift of 16), the folder's config kept. Refused when the folder's encoder is not the run's (its latents,
    and so its UNet, would not match the decoder)."""
    from safetensors.torch import load_file, save_file

    from .export_upscaler import _is_head

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    ck = load_checkpoint(require(run_dir / ("checkpoint.pt" if last else "best.pt"), "trained upscaler VAE",
                                 f"run train-upscaler-vae-gan --run-dir {run_dir} first"))
    assert ck is not None
    state = ck["vae" if last else "model"]
    vae = load_vae_folder(model_dir / "vae")
    if any(not torch.equal(v, state[k]) for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))):
        raise TrainingInputError(f"{model_dir / 'vae'}'s encoder is not the one this run started from: its latents "
                                 "(and the UNet trained on them) would not match the new decoder")
    vae.load_state_dict(state)
    dest = model_dir / "vae"
    tmp = dest.with_name("vae.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp, safe_serialization=True)
    for f in tmp.glob("*.safetensors"):
        sd = load_file(str(f))
        save_file({k: v.half() if v.dtype.is_floating_point and not _is_head(k) else v for k, v in sd.items()},
                  str(f), metadata={"format": "pt"})
        f.chmod(0o644)  # as the folder's other files (the writer's temporary file is private)
    shutil.copy2(dest / "config.json", tmp / "config.json")  # the folder's own config, as it was
    shutil.rmtree(dest)
    tmp.rename(dest)
    info_path = model_dir / "training_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["vae"] = (f"decoder retrained adversarially (train-upscaler-vae-gan), step {int(ck.get('step', 0))}"
                       if ck.get("step", 1) else "stage 1 (the adversarial run kept its start)")
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    return dest


def main_train(args) -> None:
    preset = replace(PRESETS[args.preset])
    for field, value in (("batch", args.batch), ("lr", args.lr), ("disc_start", args.disc_start),
                         ("disc_weight", args.disc_weight), ("disc_ramp", args.disc_ramp), ("threads", args.threads)):
        if value is not None:
            setattr(preset, field, value)
    if args.disc_start is not None:
        preset.d_start = min(preset.d_start, args.disc_start)
    run_dir = Path(args.run_dir or "runs/upscaler-vae-gan")
    result = train(Path(args.model), run_dir, preset, resume_run=args.resume, steps=args.steps,
                   budget_minutes=args.time_budget_minutes, seed=args.seed, eval_images=args.eval_images)
    print(json.dumps(result))


def main_export(args) -> None:
    print(f"installed {export(Path(args.run_dir), Path(args.model), last=args.last)}")
