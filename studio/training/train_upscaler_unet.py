"""The latent upscaler's UNet stage (``train-latent-upscaler --stage unet``), built to beat its copy start as the
studio runs the model.

Why not the clean-latent loss alone: the decoder barely reads the detail channel (the shipped VAE: 37.63 dB on
the true latent, 37.56 on the copy start's), so predicting the encoder's latent can gain at most ~0.07 dB. The
decoder does read channels 0-2: a latent fitted to each picture through the frozen decoder measured +1.5 dB
(``unet_bound`` below). So the UNet is trained on the *decoded* picture (``pixel_weight``: L1 + 2 MSE inside
the border the studio cuts off), free to move every channel; the VAE stays frozen.

At inference the UNet's input after the first step is its own earlier prediction, noised; trained on the
encoder's latent, noised, it would learn at low noise "take the true latent and correct it", and apply the
correction twice in the studio. So its noisy input is made from its own (detached) prediction at the same
timestep (``self_condition``), as the sampler will feed it.

The recipe the VAE stage has: a low rate with warm-up, the pass-through's last GroupNorm at 1/16 of it and its
columns of the last convolution held (``unet_param_groups``), clipping, EMA; every ``unet_validate_every`` steps the EMA weights are scored on scenes of a third
seed through the studio's own upscale path at its defaults, and the checkpoint kept is the one that beats the
copy start by most on both PSNR and SSIM (``beats_start_by``); the copy start itself when none does. Resumable
(checkpoints every few minutes); the data, noise and timesteps of step k are a pure function of the seed and k.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .common import (
    EMA,
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
from .sr_data import HELDOUT_SEED, POOL_SEED_OFFSET, SCALE, TRAIN_SEED, SRPairs, bicubic, heldout_pairs, psnr, ssim
from .upscaler_models import (
    HEAD_LR_SCALE,
    MAX_NOISE_LEVEL,
    NOISE_LEVEL,
    UpscalerPreset,
    copy_start_models,
    decode_structured,
    load_upscaler_vae,
    make_schedulers,
    unet_from_config,
    upscale_pipeline,
)

# scenes that choose the best checkpoint: neither training's nor the benchmark's (HELDOUT_SEED)
VALIDATION_SEED = 7_000_003
Scorer = Callable[[torch.nn.Module, int], dict]  # (UNet weights to score, step) -> {"psnr": .., "ssim": ..}


def beats_start_by(scores: dict, start: dict) -> float:
    """How far ``scores`` beat the copy start's on both PSNR and SSIM: the smaller margin, 0.001 of SSIM counted
    as 1 dB (the VAE stage's rule, ``evaluate_upscaler.bar_score``, against the start instead of bicubic).
    Above 0 only when both are better."""
    return round(min(scores["psnr"] - start["psnr"], 1000.0 * (scores["ssim"] - start["ssim"])), 4)


class StudioScorer:
    """Scores UNet weights as the studio runs the model: ``Engine.generate`` on a model folder, upscale_mode
    "latent", x4, the request's defaults (sampler, steps, strength), the folder's noise level; the loaded
    UNet's weights are swapped for the ones scored. PSNR / SSIM (``sr_data``) against the true 256 px scene."""

    def __init__(self, folder: Path, n: int, seed: int = VALIDATION_SEED):
        from studio.engine.engine import Engine

        self.folder, self.pairs = Path(folder), heldout_pairs(n, seed)
        self.engine = Engine()

    def upscale(self, lr: np.ndarray, i: int) -> np.ndarray:
        from studio.core import GenerateRequest

        req = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(self.folder),
                                          init_image=lr, scale=4.0, prompt="", seed=i)
        return self.engine.generate(req).images[0]

    @torch.no_grad()
    def __call__(self, unet: torch.nn.Module, step: int = 0) -> dict:
        loaded = self.engine.load(str(self.folder)).base.unet
        loaded.load_state_dict(unet.state_dict())
        ps, ss = [], []
        for i, (hr, lr, _cap) in enumerate(self.pairs):
            out = self.upscale(lr, i)
            ps.append(psnr(hr, out))
            ss.append(ssim(hr, out))
        return {"psnr": round(float(np.mean(ps)), 3), "ssim": round(float(np.mean(ss)), 5)}


def start_models(preset: UpscalerPreset, run_dir: Path, from_model: Path | None):
    """(vae, text encoder, UNet) the stage starts from: a shipped folder's (its VAE and its UNet as they are), or
    the run's trained VAE and a fresh copy-start UNet of the preset's size."""
    if from_model is not None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        from .common import require

        for part in ("vae", "unet", "text_encoder"):
            require(Path(from_model) / part / "config.json", f"latent upscaler {part}",
                    "--from-model takes a latent upscaler folder (models/latent-upscaler-x4)")
        kw = {"local_files_only": True}
        vae = AutoencoderKL.from_pretrained(from_model / "vae", **kw).float()
        unet = UNet2DConditionModel.from_pretrained(from_model / "unet", **kw).float()
        text_encoder = CLIPTextModel.from_pretrained(from_model / "text_encoder", **kw).float()
        return vae.eval(), text_encoder, unet
    return (load_upscaler_vae(run_dir), *copy_start_models(preset.text, preset.unet))


def model_folder(run_dir: Path, vae, text_encoder, unet, from_model: Path | None) -> Path:
    """The diffusers folder the studio loads for validation: the shipped one, or the run's start written once."""
    if from_model is not None:
        return Path(from_model)
    folder = run_dir / "unet" / "start_model"
    if not (folder / "model_index.json").exists():
        from .models import load_tokenizer

        upscale_pipeline(vae, text_encoder, load_tokenizer(), unet).save_pretrained(folder, safe_serialization=True)
        (folder / "studio.json").write_text(json.dumps({"noise_level": NOISE_LEVEL}) + "\n")
    return folder


def unet_param_groups(unet, lr: float) -> list[dict]:
    """Optimizer groups for the copy start. ``conv_out``'s columns that read the pass-through (the GroupNorm rows
    shifted by B_SHIFT = 16) get no gradient: an Adam step there would move the output 16 times as much, and
    the copy is exact as it is. Its other columns, zero at the start, are the only way anything upstream reaches
    the output, so they learn at the full rate (measured: with all of ``conv_out`` at 1/16 of 5e-5, as the VAE
    stage has it, the validation scores moved by 0.004 dB in 200 steps). ``conv_norm_out`` stays at 1/16."""
    from .passthrough import B_SHIFT

    shifted = ((unet.conv_norm_out.bias.detach() - B_SHIFT).abs() < 1.0).nonzero().flatten()
    mask = torch.ones_like(unet.conv_out.weight)
    mask[:, shifted] = 0.0
    unet.conv_out.weight.register_hook(lambda g: g * mask)
    head = list(unet.conv_norm_out.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in unet.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr, "lr_scale": 1.0},
            {"params": head, "lr": lr * HEAD_LR_SCALE, "lr_scale": HEAD_LR_SCALE}]


class Scenes:
    """Training pairs (the latent upscaler's pool seed), their 256 px truths kept once drawn."""

    def __init__(self, seed: int, size: int):
        self.src, self.size, self.cache = SRPairs(TRAIN_SEED + POOL_SEED_OFFSET + seed), size, {}

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self.cache:
            hr, lr, _ = self.src.pair(i)
            self.cache[i] = (hr, lr)
        return self.cache[i]


def batch(scenes: Scenes, rng, B: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B crops of ``c`` latent px (the picture's low-res pixels) and their 4c px truths, in [-1, 1]; half near
    an object (most of a picture is flat)."""
    from .sr_data import crop_origin, to_pm1

    his, los = [], []
    for _ in range(B):
        i = int(rng.integers(scenes.size))
        hr, lr = scenes(i)
        n = lr.shape[0]
        x0, y0 = crop_origin(rng, scenes.src.ds.scene(i), n, c, 64.0) if c < n else (0, 0)
        los.append(lr[y0 : y0 + c, x0 : x0 + c])
        his.append(hr[y0 * SCALE : (y0 + c) * SCALE, x0 * SCALE : (x0 + c) * SCALE])
    return to_pm1(his), to_pm1(los)


def train_upscaler_unet(run_dir: Path, preset: UpscalerPreset, seed: int = 0, checkpoint_every_s: float = 180.0,
                        max_minutes: float | None = None, eval_images: int = 16, progress: bool = True,
                        from_model: Path | None = None, scorer: Scorer | None = None,
                        stop_at_step: int | None = None) -> dict:
    """The UNet stage (module docstring). ``from_model``: start from that folder's VAE and UNet instead of the
    run's; ``scorer``: validation (default ``StudioScorer``; tests pass fabricated scores); ``stop_at_step``:
    save and stop there (what an interrupted run leaves)."""
    run_dir = Path(run_dir)
    out = run_dir / "unet"
    out.mkdir(parents=True, exist_ok=True)
    from_model = Path(from_model) if from_model is not None else None
    seed_everything(seed)
    t_start = time.time()
    vae, text_encoder, unet = start_models(preset, run_dir, from_model)
    vae.requires_grad_(False)  # frozen: the UNet learns what this decoder makes best of
    text_encoder.requires_grad_(False)  # no cross-attention: the UNet never reads it
    unet_config = unet.to_json_string()
    folder = model_folder(run_dir, vae, text_encoder, unet, from_model)
    opt = torch.optim.AdamW(unet_param_groups(unet, preset.unet_lr), weight_decay=0.0, betas=(0.9, 0.99))
    modules = {"unet": unet}
    ema = EMA(modules, preset.ema_decay)
    sched, _sample, low_res = make_schedulers()
    ckpt_path = out / "checkpoint.pt"
    ck = load_checkpoint(ckpt_path)
    start, trained_s = resume(ck, modules, opt, ema, "upscaler UNet training")
    (out / "train_config.json").write_text(json.dumps(
        {"preset": preset.to_dict(), "seed": seed, "from_model": str(from_model) if from_model else None}, indent=2))
    log = JsonLog(out / "log.jsonl")
    h_empty = torch.zeros(1, 1, text_encoder.config.hidden_size)  # read by nothing (no cross-attention)

    ema_unet = unet_from_config(unet_config, unet.state_dict())  # the EMA weights, scored and kept
    best = KeepBest(out / "best.pt", ema_unet)
    score = scorer if scorer is not None else (
        StudioScorer(folder, preset.unet_val_images) if preset.unet_val_images else None)
    start_scores = ck.get("start_scores") if ck else None
    if score is not None and start_scores is None:
        start_scores = score(ema_unet, 0)  # the copy start: the score to beat
        log.write(step=0, validation=start_scores)
        best.keep({"step": 0, **start_scores, "score": 0.0})

    def save(step: int, done: bool = False) -> None:
        save_checkpoint(ckpt_path, training_state(modules, opt, ema, step=step, trained_s=trained_s,
                                                  preset=preset.to_dict(), unet_config=unet_config,
                                                  start_scores=start_scores, done=done))

    def validate(step: int) -> None:
        ema_unet.load_state_dict(ema.shadow["unet"])
        val = score(ema_unet, step)
        val["score"] = beats_start_by(val, start_scores)
        log.write(step=step, validation=val)
        best.offer({"step": step, **val})

    budget_s = preset.time_budget_minutes * 60 if preset.time_budget_minutes else None
    B, c = preset.unet_batch, preset.latent_crop
    scenes = Scenes(seed, preset.pool_size)
    lm = preset.loss_margin
    step = start
    if ck is None or not ck.get("done"):
        set_threads(preset.threads)
        unet.train()
        loop = StepLoop(save, start=start, steps=preset.unet_steps, desc="upscaler-unet", log_every=20,
                        checkpoint_every_s=checkpoint_every_s, budget_s=budget_s, max_minutes=max_minutes,
                        started=t_start, progress=progress, validate=validate if score else None,
                        validate_every=preset.unet_validate_every)
        ema_loss = None
        for step in loop:
            t0 = time.time()
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            rng = np.random.default_rng([seed, step, 0x0E7])
            hr, lr_img = batch(scenes, rng, B, c)
            clean = torch.rand(B, generator=g) < preset.clean_prob
            nl = torch.where(clean, torch.zeros(B, dtype=torch.long),
                             torch.randint(0, MAX_NOISE_LEVEL + 1, (B,), generator=g))
            cond = low_res.add_noise(lr_img, torch.randn(lr_img.shape, generator=g), nl)
            noise = torch.randn((B, 4, c, c), generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (B,), generator=g)
            h = h_empty.expand(B, -1, -1)
            base = torch.cat([lr_img, torch.zeros_like(lr_img[:, :1])], dim=1)  # where the copy start lands
            if preset.self_condition:
                # the sampler feeds the UNet its own earlier prediction, noised: so does training
                with torch.no_grad():
                    first = unet(torch.cat([sched.add_noise(base, noise, t), cond], 1), t,
                                 encoder_hidden_states=h, class_labels=nl).sample
                base = first.detach()
            zt = sched.add_noise(base, noise, t)
            for gr in opt.param_groups:
                gr["lr"] = loop.lr(step, preset.unet_lr * gr["lr_scale"], preset.warmup, trained_s)
            pred = unet(torch.cat([zt, cond], dim=1), t, encoder_hidden_states=h, class_labels=nl).sample
            y = decode_structured(vae, pred)
            m = lm if y.shape[-1] > 4 * lm else 0
            diff = (y - hr)[..., m : y.shape[-2] - m, m : y.shape[-1] - m]
            loss = diff.abs().mean() + 2.0 * diff.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.update(modules)
            dt = time.time() - t0
            trained_s += dt
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            if loop.logs(step):
                mse = diff.pow(2).mean().item() / 4.0
                log.write(step=step, loss=round(loss.item(), 6), loss_ema=round(ema_loss, 6),
                          psnr_batch=round(10 * np.log10(1 / max(mse, 1e-10)), 2),
                          detail_std=round(pred[:, 3].std().item(), 4), lr=opt.param_groups[0]["lr"],
                          step_s=round(dt, 3), trained_min=round(trained_s / 60, 2))
                loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
            loop.end_step(step, trained_s)
            if stop_at_step is not None and step + 1 >= stop_at_step and step + 1 < preset.unet_steps:
                save(step + 1)
                return {"steps": step + 1, "stopped_early": True}
        if loop.stopped_early:
            return {"steps": step + 1, "stopped_early": True}
        step += 1
        save(step, done=True)
    else:
        step = int(ck["step"])
    kept = best.restore() if score is not None else None
    if kept is None:  # no validation: the EMA weights at the end
        ema_unet.load_state_dict(load_checkpoint(ckpt_path)["ema"]["shadow"]["unet"])
    result = {"steps": step, "training_minutes": round(trained_s / 60, 1), "start": start_scores, "best": kept,
              "best_step": kept["step"] if kept else step}
    if eval_images and scorer is None:
        result["heldout"] = heldout_scores(folder, ema_unet, eval_images)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.write(**{k: v for k, v in result.items() if k != "start"})
    print(json.dumps(result))
    return result


def heldout_scores(folder: Path, unet: torch.nn.Module, n: int) -> dict:
    """The kept UNet, its copy start and bicubic on ``n`` held-out scenes (HELDOUT_SEED), as the studio runs it."""
    scorer = StudioScorer(folder, n, HELDOUT_SEED)
    from diffusers import UNet2DConditionModel

    kept = scorer(unet)
    start = scorer(UNet2DConditionModel.from_pretrained(Path(folder) / "unet", local_files_only=True).float())
    bic = [(psnr(h, bicubic(lo, h.shape[0])), ssim(h, bicubic(lo, h.shape[0]))) for h, lo, _ in scorer.pairs]
    return {"n": n, "kept": kept, "start": start,
            "bicubic": {"psnr": round(float(np.mean([b[0] for b in bic])), 3),
                        "ssim": round(float(np.mean([b[1] for b in bic])), 5)}}
