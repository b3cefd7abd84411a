"""What the two adversarial VAE trainings (the built-in model's, `train_vae_gan`, and the x4 upscaler's,
`train_upscaler_vae_gan`) share around their own data and reconstruction loss: opening the run folder, resuming
the VAE, the critic and both optimizers, the starting VAE's validation (the bar and the first candidate), the
adversarial term and the critic's step, the log line, and the end of the run (the kept checkpoint restored and
measured on held-out scenes). Each calls these in the same order as before they were shared, so a run's RNG
stream, and so its checkpoints, are unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .common import (
    JsonLog,
    KeepBest,
    StepLoop,
    TrainingInputError,
    load_checkpoint,
    resume,
    seed_everything,
    set_threads,
)
from .discriminator import adaptive_weight, adopt_weight, generator_loss, hinge_d_loss
from .vae_quality import load_vae_folder

Scores = Callable[..., dict]  # (vae, n, seed=...) -> {"psnr", "ssim", "edge_sharpness", ...}


def open_run(model_dir: Path, run_dir: Path, resume_run: bool, threads: int | None, seed: int) -> tuple[Path, Any]:
    """The run's checkpoint path and the model's VAE; its starting VAE saved in ``run_dir/start`` once (the
    before/after measurement and the anchor's teacher). A checkpoint there without ``resume_run`` is refused."""
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume_run:
        raise TrainingInputError(f"{ckpt_path} exists: add --resume to go on from it, or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    seed_everything(seed)
    vae = load_vae_folder(model_dir / "vae")
    if not (run_dir / "start" / "config.json").exists():
        vae.save_pretrained(run_dir / "start")
    return ckpt_path, vae


def resume_gan(ckpt_path: Path, vae, disc, opt, d_opt, what: str) -> tuple[int, float]:
    """(first step, training seconds so far): the VAE, the critic and both optimizers from the checkpoint."""
    ck = load_checkpoint(ckpt_path)
    start, trained_s = resume(ck, {"vae": vae, "disc": disc}, opt, what=what)
    if ck is not None:
        d_opt.load_state_dict(ck["d_optimizer"])
    return start, trained_s


def reference_validation(run_dir: Path, vae, scores: Scores, preset, seed: int, best: KeepBest, log: JsonLog,
                         rank: Callable[[dict, dict], float]) -> dict:
    """The starting VAE's validation scores, measured once per run (the bar every checkpoint is ranked against,
    and the first candidate kept)."""
    ref_path = run_dir / "reference.json"
    if not ref_path.exists():
        ref = scores(vae, preset.val_images, seed)
        ref_path.write_text(json.dumps(ref))
        best.keep({"step": 0, **ref, "score": rank(ref, ref)})
        log.write(step=0, validation=ref)
    return json.loads(ref_path.read_text())


def adversarial_term(rec: torch.Tensor, fake: torch.Tensor, disc, last_layer: torch.Tensor, preset,
                     step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the adaptive weight, the generator's loss) of this step; both zero before the adversarial term starts."""
    factor = adopt_weight(preset.disc_weight, step, preset.disc_start, preset.disc_ramp)
    if factor <= 0:
        return torch.zeros(()), torch.zeros(())
    g_loss = generator_loss(disc(fake))
    return adaptive_weight(rec, g_loss, last_layer, factor), g_loss


def critic_step(disc, d_opt, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """One hinge-loss step of the patch discriminator on real against decoded (detached) pictures."""
    d_loss = hinge_d_loss(disc(real), disc(fake.detach()))
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    return d_loss


def log_step(loop: StepLoop, log: JsonLog, step: int, rec, g_loss, d_weight, d_loss, lr: float,
             trained_s: float) -> None:
    if loop.logs(step):
        log.write(step=step, rec=round(rec.item(), 5), g_loss=round(g_loss.item(), 4),
                  d_weight=round(d_weight.item(), 5), d_loss=round(d_loss.item(), 4), lr=lr,
                  trained_s=round(trained_s, 1))
        loop.bar.set_postfix(rec=f"{rec.item():.4f}", d=f"{d_loss.item():.3f}", w=f"{d_weight.item():.3f}")


def finish(run_dir: Path, vae, best: KeepBest, scores: Scores, eval_images: int, log: JsonLog, result: dict) -> dict:
    """The end of a whole run: the kept checkpoint restored into ``vae`` (what ships), saved in ``run_dir/final``,
    the starting and the kept VAE measured on ``eval_images`` held-out scenes, ``result.json`` written."""
    result["best"] = best.restore()
    vae.save_pretrained(run_dir / "final")
    if eval_images:
        result["heldout_before"] = scores(load_vae_folder(run_dir / "start"), eval_images)
        result["heldout_after"] = scores(vae, eval_images)
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    log.write(**{k: v for k, v in result.items() if k != "reference_validation"})
    return result
