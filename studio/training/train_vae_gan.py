"""Adversarial (LDM first-stage) retraining of a built-in model's VAE: L1 + MSE reconstruction, a small KL term,
and a PatchGAN's hinge loss weighted adaptively at the decoder's last layer, switched on after a warm-up.

By default only the decoder (and ``post_quant_conv``) is trained, the encoder frozen, as Stability's ft-MSE / ft-EMA
VAEs were: the latent space stays the same, so the model's UNet, ControlNets, tiny preview decoder and
``latent_rgb.json`` stay valid. ``--full-vae`` trains the encoder too, as the paper does (the latents then move:
everything trained on them must follow).

Resumable: generator, discriminator, both optimizers, step, training time and RNG state in a checkpoint every few
minutes; step k's scenes are a pure function of (seed, k). The weights that ship are the best on validation scenes
(``VALIDATION_SEED``; the card's measurement uses ``train_vae.HELDOUT_SEED``, training ``train_vae.TRAIN_SEED``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import adversarial_run
from .common import (
    JsonLog,
    KeepBest,
    StepLoop,
    TrainingInputError,
    load_checkpoint,
    save_checkpoint,
    training_state,
)
from .data import ShapesDataset, to_tensor_batch
from .discriminator import PatchDiscriminator
from .train_vae import TRAIN_SEED
from .vae_quality import load_vae_folder, vae_scores

VALIDATION_SEED = 2_500_009  # chooses the checkpoint that ships


@dataclass
class GanPreset:
    batch: int
    steps: int  # without a time budget
    lr: float  # the VAE's (Adam betas 0.5, 0.9 as in LDM)
    d_lr: float
    disc_start: int  # the adversarial term enters the VAE's loss from this step
    d_start: int  # the discriminator trains from this step (<= disc_start: it has a head start)
    disc_weight: float  # the factor on the adaptive weight (LDM: 0.5)
    disc_ramp: int  # steps over which that factor rises from 0 (0: switched on at once, as LDM)
    ndf: int
    n_layers: int
    mse_weight: float = 1.0
    kl_weight: float = 1e-7  # stage (a)'s: constant in decoder-only training (the encoder is frozen)
    threads: int | None = None
    validate_every: int = 100
    val_images: int = 64
    max_psnr_drop: float = 0.5  # dB on the validation scenes that sharper edges may cost
    max_ssim_drop: float = 0.002  # and SSIM
    log_every: int = 10
    warmup: int = 20
    plain: float = 0.0  # share of each batch that is a plain picture (one colour, no object); see plain_pictures
    plain_noise: float = 0.0  # std of the noise added to those pictures' latents (unscaled units)
    anchor: bool = False  # the data set scenes' target is the starting decoder's output, not the truth: a fix that
    # leaves every other picture as it was (a reconstruction-only fine-tune blurs an adversarial decoder: measured
    # edge sharpness 0.82 -> 0.67 in 100 steps)


PRESETS = {
    "tiny": GanPreset(batch=2, steps=6, lr=1e-4, d_lr=1e-4, disc_start=2, d_start=1, disc_weight=0.5, disc_ramp=2, ndf=8,
                      n_layers=1, validate_every=3, val_images=4, log_every=1, warmup=1),
    # 1 thread of a shared CPU, 45 min: ~1.2 s a step. LDM's weight (0.5, at once) cost 3 dB of PSNR within 150
    # steps (measured): the weight rises from 0 to 0.2 over 1500 steps instead and the validation picks the point
    "cpu": GanPreset(batch=16, steps=4000, lr=1e-4, d_lr=2e-4, disc_start=200, d_start=100, disc_weight=0.2,
                     disc_ramp=1500, ndf=32, n_layers=2, threads=1, validate_every=100, val_images=128),
    # one GPU (config only: not run here)
    "gpu": GanPreset(batch=64, steps=20000, lr=1e-4, d_lr=1e-4, disc_start=2000, d_start=1000, disc_weight=0.2,
                     disc_ramp=10000, ndf=64, n_layers=3, validate_every=1000, val_images=256, log_every=50, warmup=200),
}


def plain_pictures(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` plain pictures, gray half of the time, else any named colour. The data set always draws an object, and
    a plain gray picture is ~0 in [-1, 1], about the value the convolutions pad with: the encoder's first convolution
    gives little more than its bias, so its latent is one of its own that the decoder never saw and drew as a coloured
    pattern (RMS 58 grey levels). Removing the last object from a gray picture asks for
    exactly that picture."""
    from .data import COLOR_NAMES, Scene, render

    names = [("gray" if torch.rand((), generator=g) < 0.5 else COLOR_NAMES[int(torch.randint(len(COLOR_NAMES), (),
             generator=g))]) for _ in range(n)]
    return to_tensor_batch([render(Scene(c, (), "")) for c in names])


def validation_score(val: dict, reference: dict, max_psnr_drop: float, max_ssim_drop: float) -> float:
    """The validation rule: edges as sharp as the truth's (edge sharpness nearest 1.0) among the checkpoints that
    lose at most ``max_psnr_drop`` dB of PSNR and ``max_ssim_drop`` of SSIM against the starting VAE; any that
    loses more ranks below them all. SSIM is the guard against halos: edge sharpness is measured at the true
    edges only, and ringing around them raises it too (measured: 0.96 with visible halos, SSIM -0.012)."""
    drop = reference["psnr"] - val["psnr"]
    if drop > max_psnr_drop or reference["ssim"] - val["ssim"] > max_ssim_drop or math.isnan(val["edge_sharpness"]):
        return round(-10.0 - drop - 100 * max(0.0, reference["ssim"] - val["ssim"]), 4)
    return round(-abs(1.0 - val["edge_sharpness"]), 4)


def train(model_dir: Path, run_dir: Path, preset: GanPreset, *, decoder_only: bool = True, resume_run: bool = False,
          steps: int | None = None, budget_minutes: float | None = None, stop_after: int | None = None,
          checkpoint_every_s: float = 180.0, eval_images: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model_dir``'s VAE adversarially in ``run_dir``; ``stop_after``: save and return after that many
    steps (of the whole schedule: a resumed run continues exactly as an unbroken one)."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    ckpt_path, vae = adversarial_run.open_run(model_dir, run_dir, resume_run, preset.threads, seed)
    disc = PatchDiscriminator(3, preset.ndf, preset.n_layers)
    frozen = [vae.encoder, vae.quant_conv] if decoder_only else []
    for m in frozen:
        m.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=preset.lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(disc.parameters(), lr=preset.d_lr, betas=(0.5, 0.9))
    start, trained_s = adversarial_run.resume_gan(ckpt_path, vae, disc, opt, d_opt, "adversarial VAE training")
    (run_dir / "preset.json").write_text(json.dumps(
        {**asdict(preset), "model": str(model_dir), "decoder_only": decoder_only, "seed": seed}, indent=2))
    log = JsonLog(run_dir / "log.jsonl")
    best = KeepBest(run_dir / "best.pt", vae)
    reference = adversarial_run.reference_validation(
        run_dir, vae, vae_scores, preset, VALIDATION_SEED, best, log,
        lambda v, ref: validation_score(v, ref, preset.max_psnr_drop, preset.max_ssim_drop))
    ds = ShapesDataset(TRAIN_SEED + seed)
    last_layer = vae.decoder.conv_out.weight
    teacher = load_vae_folder(run_dir / "start").requires_grad_(False).eval() if preset.anchor else None

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"vae": vae, "disc": disc}, opt, step=step, trained_s=trained_s,
                                                  d_optimizer=d_opt.state_dict(), decoder_only=decoder_only))

    def validate(step: int) -> None:
        val = vae_scores(vae, preset.val_images, VALIDATION_SEED)
        val["score"] = validation_score(val, reference, preset.max_psnr_drop, preset.max_ssim_drop)
        log.write(step=step, validation=val)
        best.offer({"step": step, **val})
        vae.train()
        for m in frozen:
            m.eval()

    total = int(steps or preset.steps)
    loop = StepLoop(save, start=start, steps=total, desc="train-vae-gan", log_every=preset.log_every,
                    checkpoint_every_s=checkpoint_every_s, progress=progress,
                    budget_s=budget_minutes * 60 if budget_minutes else None,
                    validate=validate, validate_every=preset.validate_every)
    vae.train()
    for m in frozen:
        m.eval()  # no dropout / norm statistics move in the frozen half either
    done = start
    for step in loop:
        t0 = time.perf_counter()
        lr = loop.lr(step, preset.lr, preset.warmup, trained_s)
        for g in opt.param_groups:
            g["lr"] = lr
        for g in d_opt.param_groups:
            g["lr"] = lr * preset.d_lr / preset.lr
        n_plain = round(preset.plain * preset.batch)
        g_plain = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x = to_tensor_batch([ds.sample(step * preset.batch + j)[0] for j in range(preset.batch - n_plain)])
        if n_plain:
            x = torch.cat([x, plain_pictures(n_plain, g_plain)])
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
        z = post.sample()
        if n_plain and preset.plain_noise:  # the U-Net's output lands near that latent, not on it
            noise = torch.randn((n_plain, *z.shape[1:]), generator=g_plain) * preset.plain_noise
            z = torch.cat([z[:-n_plain], z[-n_plain:] + noise])
        y = vae.decode(z).sample
        truth = x
        if teacher is not None:
            with torch.no_grad():
                kept = teacher.decode(z[: len(z) - n_plain]).sample
            x = torch.cat([kept, x[len(z) - n_plain :]])
        rec = (y - x).abs().mean() + preset.mse_weight * (y - x).pow(2).mean()
        kl = post.kl().mean()
        loss = rec + preset.kl_weight * kl
        d_weight, g_loss = adversarial_run.adversarial_term(rec, y, disc, last_layer, preset, step)
        if g_loss.requires_grad:
            loss = loss + d_weight * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d_loss = torch.zeros(())
        if step >= preset.d_start and preset.disc_start < total:  # no adversarial term in this run: no critic
            d_loss = adversarial_run.critic_step(disc, d_opt, truth, y)
        trained_s += time.perf_counter() - t0
        adversarial_run.log_step(loop, log, step, rec, g_loss, d_weight, d_loss, lr, trained_s)
        done = step + 1
        loop.end_step(step, trained_s)
        if stop_after is not None and done >= stop_after:
            break
    save(done)
    result = {"steps": done, "trained_minutes": round(trained_s / 60, 1), "decoder_only": decoder_only,
              "reference_validation": reference}
    if stop_after is not None and done >= stop_after and done < total:
        return result
    return adversarial_run.finish(run_dir, vae, best, vae_scores, eval_images, log, result)  # the best ships


def export(run_dir: Path, model_dir: Path, *, last: bool = False, allow_new_latents: bool = False) -> Path:
    """Install the run's best (or ``last``) VAE into ``model_dir/vae`` as float16, the model's own config (so its
    ``scaling_factor``) kept. A full-VAE run moved the latents: refused unless ``allow_new_latents``."""
    from .common import require

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    ck_path = require(run_dir / ("checkpoint.pt" if last else "best.pt"), "trained VAE",
                      f"run train-vae-gan --run-dir {run_dir} first")
    preset = json.loads(require(run_dir / "preset.json", "run settings", "an adversarial VAE run folder").read_text())
    if not preset.get("decoder_only", True) and not allow_new_latents:
        raise TrainingInputError("this run trained the encoder too: the model's UNet, tiny decoder and latent_rgb.json "
                                 "no longer match its latents (add --allow-new-latents to install it anyway)")
    vae = load_vae_folder(model_dir / "vae")
    ck = load_checkpoint(ck_path)
    assert ck is not None
    vae.load_state_dict(ck["vae" if last else "model"])
    vae.to(torch.float16).save_pretrained(model_dir / "vae", safe_serialization=True)
    return model_dir / "vae"


def main_train(args) -> None:
    preset = replace(PRESETS[args.preset])
    for field, value in (("batch", args.batch), ("lr", args.lr), ("disc_start", args.disc_start),
                         ("disc_weight", args.disc_weight), ("disc_ramp", args.disc_ramp),
                         ("threads", args.threads), ("plain", args.plain_fraction),
                         ("plain_noise", args.plain_noise), ("anchor", args.anchor or None)):
        if value is not None:
            setattr(preset, field, value)
    if args.disc_start is not None:
        preset.d_start = min(preset.d_start, args.disc_start)
    model = Path(args.model)
    run_dir = Path(args.run_dir or f"runs/vae-gan-{model.resolve().name}")
    result = train(model, run_dir, preset, decoder_only=not args.full_vae, resume_run=args.resume, steps=args.steps,
                   budget_minutes=args.time_budget_minutes, seed=args.seed, eval_images=args.eval_images)
    print(json.dumps(result))


def main_export(args) -> None:
    out = export(Path(args.run_dir), Path(args.model), last=args.last, allow_new_latents=args.allow_new_latents)
    print(f"installed {out}")


def main_evaluate(args) -> None:
    from .vae_quality import comparison_png

    vaes = [load_vae_folder(v) for v in args.vae]
    rows = {v: vae_scores(m, args.n) for v, m in zip(args.vae, vaes, strict=True)}
    for v, s in rows.items():
        print(f"{v}: PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}, edge sharpness {s['edge_sharpness']:.3f} "
              f"({s['n']} held-out scenes)")
    if args.png:
        print(f"wrote {comparison_png(vaes, Path(args.png))}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
