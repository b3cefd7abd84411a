"""Train a tiny decoder (TAESD-style, diffusers' ``AutoencoderTiny`` decoder) for a built-in model's VAE: the live
preview's true colours at a fraction of a full decode.

It is distilled from the model's own VAE: latents of the training scenes (the built-in model's 64 px data set, or
the latent upscaler's 256 px scenes and their structured latents), widened by the kinds of latent a sampler's x0
estimate passes through (posterior samples, blends of two scenes, low-contrast early estimates, a little noise), each
decoded by the full VAE as the target. So the tiny decoder learns the full decoder's output, not the data set's
pictures: its preview is measured against the image the run will actually end with.

Resumable: a checkpoint every few minutes in the run folder; ``--resume`` goes on from it. The result is written in
TAESD's original key layout (``1.weight``, ``3.conv.0.weight``...), float16, as ``tiny_decoder.safetensors``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import tinydecoder
from ..engine.preview import factors_for
from .common import (
    JsonLog,
    StepLoop,
    TrainingInputError,
    load_checkpoint,
    require,
    resume,
    save_checkpoint,
    seed_everything,
    set_threads,
    training_state,
)
from .data import ShapesDataset, to_tensor_batch

TRAIN_SEED = 5_000_011  # scenes no other training run draws
HELDOUT_SEED = 6_000_029  # the measured preview error (README) uses these


@dataclass
class TinyPreset:
    width: int
    blocks: tuple[int, ...]
    batch: int
    steps: int
    pool: int
    lr: float
    crop: int  # latent pixels of the student's crop (the target is decoded from the whole latent)
    threads: int | None = None
    measure: int = 64  # held-out scenes of the final measurement
    variants: int = 0  # >0: the targets are decoded once, for the pool and (variants - 1) augmented copies of it
    plain: float = 0.0  # share of the pool that is plain one-colour pictures (train_vae_gan.plain_pictures)
    plain_noise: float = 0.0  # std of the noise on their latents, in the VAE's unscaled units (as train-vae-gan's)


PRESETS = {
    "cpu": TinyPreset(width=24, blocks=(2, 2, 1), batch=16, steps=3000, pool=2048, lr=2e-3, crop=16),
    "tiny": TinyPreset(width=8, blocks=(1, 1, 1), batch=2, steps=4, pool=4, lr=1e-3, crop=8, measure=4),
    "gpu": TinyPreset(width=64, blocks=(3, 3, 1), batch=64, steps=20000, pool=20000, lr=1e-3, crop=32),
}


def is_upscaler(model_dir: Path) -> bool:
    try:
        return "Upscale" in json.loads((model_dir / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return False


def load_vae(model_dir: Path):
    from diffusers import AutoencoderKL

    folder = require(Path(model_dir) / "vae", "the model's VAE folder", "give a built-in model folder")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).float().eval()


@torch.no_grad()
def encode_scenes(vae, upscaler: bool, seed: int, n: int, batch: int = 32, plain: float = 0.0,
                  plain_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(latents as the sampler carries them, the posterior's std in the same units or None). ``plain``: that share
    of the ``n`` are plain one-colour pictures, their latents widened by noise of std ``plain_noise`` (unscaled):
    a removal on a plain background ends near such a latent, and a decoder distilled only from scenes with objects
    previews it as a pattern."""
    sf = float(vae.config.scaling_factor)
    lats, stds = [], []
    n_plain = round(plain * n)
    if n_plain and upscaler:
        raise TrainingInputError("plain pictures are for a built-in model's own VAE, not the latent upscaler's")
    if n_plain:
        lat, std = plain_latents(vae, n_plain, seed, plain_noise)
        lats.append(lat)
        stds.append(std)
        n -= n_plain
    if upscaler:
        from .sr_data import SRPairs, to_pm1
        from .upscaler_models import structured_latent

        src = SRPairs(seed)
        for s in range(0, n, 8):
            pairs = [src.pair(i) for i in range(s, min(n, s + 8))]
            lats.append(structured_latent(vae, to_pm1([p[0] for p in pairs]), to_pm1([p[1] for p in pairs])))
        return torch.cat(lats), None
    ds = ShapesDataset(seed)
    for s in range(0, n, batch):
        x = to_tensor_batch([ds.sample(i)[0] for i in range(s, min(n, s + batch))])
        post = vae.encode(x).latent_dist
        lats.append(post.mean * sf)
        stds.append(post.std * sf)
    return torch.cat(lats), torch.cat(stds)


@torch.no_grad()  # measure() calls it outside training's no_grad: no graph through the encoder
def plain_latents(vae, n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` plain pictures' latents (scaled), with noise of std ``noise`` in unscaled units, and their std."""
    from .train_vae_gan import plain_pictures

    sf = float(vae.config.scaling_factor)
    g = torch.Generator().manual_seed(seed * 7 + 3)
    lats, stds = [], []
    for s in range(0, n, 32):
        post = vae.encode(plain_pictures(min(32, n - s), g)).latent_dist
        z = post.mean + noise * torch.randn(post.mean.shape, generator=g)
        lats.append(z * sf)
        stds.append(post.std * sf)
    return torch.cat(lats), torch.cat(stds)


def augment(z: torch.Tensor, std: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
    """The latents a run's x0 estimate passes through: posterior samples, blends of two scenes, low-contrast early
    estimates, a little noise (each on part of the batch)."""
    b = z.shape[0]
    coin = torch.rand(b, 4, 1, 1, 1, generator=g)
    out = z.clone()
    if std is not None:
        out = torch.where(coin[:, 0] < 0.5, out + std * torch.randn(z.shape, generator=g), out)
    a = torch.rand(b, 1, 1, 1, generator=g)
    other = out[torch.randperm(b, generator=g)]
    out = torch.where(coin[:, 1] < 0.3, a * out + (1 - a) * other, out)
    mean = out.mean(dim=(2, 3), keepdim=True)
    s = 0.2 + 0.8 * torch.rand(b, 1, 1, 1, generator=g)
    out = torch.where(coin[:, 2] < 0.3, mean + s * (out - mean), out)
    noise = torch.randn(z.shape, generator=g) * (0.3 * torch.rand(b, 1, 1, 1, generator=g)) * z.std()
    return torch.where(coin[:, 3] < 0.3, out + noise, out)


@torch.no_grad()
def full_decode(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z / float(vae.config.scaling_factor)).sample.clamp(-1, 1)


@torch.no_grad()
def fixed_targets(vae, lat: torch.Tensor, std: torch.Tensor | None, variants: int, seed: int) -> dict:
    """Each pool latent as it is and in ``variants - 1`` augmented versions, decoded once (float16)."""
    g = torch.Generator().manual_seed(seed + 77)
    zs, ts = [], []
    for v in range(variants):
        for s in range(0, len(lat), 8):
            z = lat[s : s + 8]
            if v:
                z = augment(z, None if std is None else std[s : s + 8], g)
            zs.append(z.half())
            ts.append(full_decode(vae, z).half())
    return {"lat": torch.cat(zs), "target": torch.cat(ts)}


@torch.no_grad()
def fit_upscaler_factors(vae, n: int = 64) -> dict:
    """latent_rgb.json for the latent upscaler: least squares from its structured latents (channels 0-2 are the
    low-res picture) to the full decode averaged down to the latent grid (the published SD factors, which it had
    before, showed blue as teal and green as pink)."""
    from ..engine.preview import fit_factors

    z, _ = encode_scenes(vae, True, TRAIN_SEED + 1, n)
    ref = torch.cat([full_decode(vae, z[s : s + 8]) for s in range(0, n, 8)])
    small = F.avg_pool2d(ref, ref.shape[-1] // z.shape[-1]).permute(0, 2, 3, 1).numpy()
    m, b = fit_factors(z.numpy(), small)
    rgb = np.einsum("nchw,cr->nhwr", z.numpy(), m) + b
    return {"factors": [[round(float(v), 5) for v in row] for row in m], "bias": [round(float(v), 5) for v in b],
            "fit_rmse": round(float(np.sqrt(np.mean((rgb - small) ** 2))), 4),
            "scaling_factor": float(vae.config.scaling_factor),
            "note": "rgb = (latent * scaling_factor) @ factors + bias, in [-1, 1] on the latent grid"}


def train(model_dir: Path, run_dir: Path, preset: TinyPreset, *, resume_run: bool = False, steps: int | None = None,
          budget_minutes: float | None = None, checkpoint_every_s: float = 180.0, progress: bool = True,
          seed: int = 0, init_from: Path | None = None) -> dict:
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume_run:
        raise TrainingInputError(f"{ckpt_path} exists: add --resume to go on from it, or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(preset.threads)
    seed_everything(seed)
    vae = load_vae(model_dir)
    for p in vae.parameters():
        p.requires_grad_(False)
    upscaler = is_upscaler(model_dir)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    arch = tinydecoder.Architecture(int(vae.config.latent_channels), preset.width, tuple(preset.blocks))
    if arch.scale != scale:
        raise TrainingInputError(f"the preset's decoder upsamples {arch.scale}x, the model's VAE {scale}x")
    student = tinydecoder.build(arch).decoder.train()
    opt = torch.optim.AdamW(student.parameters(), lr=preset.lr, weight_decay=0.0, betas=(0.9, 0.99))
    start, trained_s = resume(load_checkpoint(ckpt_path), {"model": student}, opt, what="tiny decoder training")
    if init_from is not None and start == 0:  # distil again from a decoder already close (e.g. after a VAE change)
        init = tinydecoder.load_module(init_from).decoder
        if tinydecoder.infer_architecture(tinydecoder.to_original_keys(init.state_dict())) != arch:
            raise TrainingInputError(f"{Path(init_from).name} is not the preset's architecture ({arch})")
        student.load_state_dict(init.state_dict())

    pool_path = run_dir / "pool.pt"
    if pool_path.exists():
        pool = torch.load(pool_path, weights_only=True)
    else:
        lat, std = encode_scenes(vae, upscaler, TRAIN_SEED + seed, preset.pool, plain=preset.plain,
                                 plain_noise=preset.plain_noise)
        pool = {"lat": lat.half(), "std": None if std is None else std.half()}
        torch.save(pool, pool_path)
    lat_pool = pool["lat"].float()
    std_pool = None if pool["std"] is None else pool["std"].float()
    fixed = None
    if preset.variants:  # a large VAE: its decode, not the student, would cost most of each step
        fixed_path = run_dir / "targets.pt"
        if fixed_path.exists():
            fixed = torch.load(fixed_path, weights_only=True)
        else:
            fixed = fixed_targets(vae, lat_pool, std_pool, preset.variants, seed)
            torch.save(fixed, fixed_path)
    log = JsonLog(run_dir / "log.jsonl")
    (run_dir / "preset.json").write_text(json.dumps({**asdict(preset), "model": str(model_dir)}, indent=2))

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, training_state({"model": student}, opt, step=step, trained_s=trained_s))

    total = int(steps or preset.steps)
    loop = StepLoop(save, start=start, steps=total, desc="train-tiny-decoder", log_every=25,
                    checkpoint_every_s=checkpoint_every_s, progress=progress,
                    budget_s=budget_minutes * 60 if budget_minutes else None)
    ema_loss = None
    done = start
    for step in loop:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # step k's batch: a function of (seed, k)
        lr = loop.lr(step, preset.lr, 100, trained_s)
        for group in opt.param_groups:
            group["lr"] = lr
        if fixed is not None:
            idx = torch.randint(len(fixed["lat"]), (preset.batch,), generator=g)
            z, target = fixed["lat"][idx].float(), fixed["target"][idx].float()
        else:
            idx = torch.randint(len(lat_pool), (preset.batch,), generator=g)
            z = augment(lat_pool[idx], None if std_pool is None else std_pool[idx], g)
            target = full_decode(vae, z)  # whole pictures: GroupNorm's statistics are the picture's
        h = z.shape[-1]
        c = min(preset.crop, h)
        y0, x0 = (int(v) for v in torch.randint(0, h - c + 1, (2,), generator=g))
        zc = z[..., y0 : y0 + c, x0 : x0 + c]
        tc = target[..., y0 * scale : (y0 + c) * scale, x0 * scale : (x0 + c) * scale]
        pred = student(zc)
        m = scale if c < h else 0  # a crop's border lacks the context the full decode had
        diff = (pred - tc)[..., m : pred.shape[-2] - m, m : pred.shape[-1] - m]
        loss = diff.pow(2).mean() + 0.5 * diff.abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        trained_s += time.perf_counter() - t0
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if loop.logs(step):
            log.write(step=step, loss=round(loss.item(), 5), rms255=round(diff.pow(2).mean().sqrt().item() * 127.5, 2),
                      lr=lr, trained_s=round(trained_s, 1))
            loop.bar.set_postfix(loss=f"{ema_loss:.4f}")
        done = step + 1
        loop.end_step(step, trained_s)
    save(done)
    student.eval()
    out = write_decoder(student, run_dir / tinydecoder.OWN_FILE)
    result = {"steps": done, "trained_minutes": round(trained_s / 60, 1), **measure(model_dir, out, preset.measure)}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    log.write(**result)
    return result


def write_decoder(decoder, path: Path) -> Path:
    from safetensors.torch import save_file

    sd = {k: v.detach().half().contiguous() for k, v in tinydecoder.to_original_keys(decoder.state_dict()).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "taesd-original", "trained_by": "studio.training.train_tiny_decoder"})
    return path


@torch.no_grad()
def measure(model_dir: Path, decoder_file: Path, n: int = 64, factors: tuple | None = None) -> dict:
    """RMS error (grey levels, 0-255) of each preview against the full decode, on ``n`` held-out scenes: the tiny
    decoder at full size, and the linear factors the studio uses without it (``latent_rgb.json`` or the published
    SD ones; or ``factors``), compared at the latent grid (the full decode averaged down) and at full size (nearest
    upscaling)."""
    model_dir = Path(model_dir)
    vae = load_vae(model_dir)
    upscaler = is_upscaler(model_dir)
    z, _ = encode_scenes(vae, upscaler, HELDOUT_SEED, n)
    ref = torch.cat([full_decode(vae, z[s : s + 8]) for s in range(0, n, 8)])  # bounded memory at 256 px
    tiny = tinydecoder.TinyDecoder(tinydecoder.load_module(decoder_file), decoder_file)
    pred = torch.cat([tiny.decode(z[s : s + 8]) for s in range(0, n, 8)])
    m, b = factors if factors is not None else factors_for(model_dir, "upscale" if upscaler else "sd")
    lin = (torch.einsum("bchw,cr->brhw", z, torch.from_numpy(m)) + torch.from_numpy(b)[None, :, None, None]).clamp(-1, 1)
    f = ref.shape[-1] // z.shape[-1]
    small = F.avg_pool2d(ref, f)

    def rms(a: torch.Tensor, r: torch.Tensor) -> float:
        return round(float((a - r).pow(2).mean().sqrt()) * 127.5, 2)

    plain = {}
    if not upscaler:  # a removal on a plain background: the latent it ends near, gray and named colours
        for name, noise in (("rms_tiny_plain", 0.0), ("rms_tiny_plain_noisy", 0.7)):
            zp, _ = plain_latents(vae, 16, HELDOUT_SEED, noise)
            plain[name] = rms(tiny.decode(zp), full_decode(vae, zp))
    return {"held_out_scenes": n, "rms_tiny_full_size": rms(pred, ref), **plain,
            "rms_factors_full_size": rms(F.interpolate(lin, scale_factor=f, mode="nearest"), ref),
            "rms_tiny_latent_grid": rms(F.avg_pool2d(pred, f), small), "rms_factors_latent_grid": rms(lin, small),
            "params": sum(p.numel() for p in tiny.module.decoder.parameters()),
            "bytes": decoder_file.stat().st_size}


def main(args) -> None:
    preset = PRESETS[args.preset]
    if args.batch:
        preset.batch = args.batch
    if args.threads:
        preset.threads = args.threads
    if args.pool_size:
        preset.pool = args.pool_size
    if args.targets_once:
        preset.variants = args.targets_once
    if args.lr:
        preset.lr = args.lr
    if args.plain_fraction is not None:
        preset.plain = args.plain_fraction
    if args.plain_noise is not None:
        preset.plain_noise = args.plain_noise
    model = Path(args.model)
    run_dir = Path(args.run_dir or f"runs/tiny-decoder-{model.resolve().name}")
    result = train(model, run_dir, preset, resume_run=args.resume, steps=args.steps,
                   budget_minutes=args.time_budget_minutes, seed=args.seed,
                   init_from=Path(args.init_from) if args.init_from else None)
    if args.install:
        dest = model / tinydecoder.OWN_FILE
        dest.write_bytes((run_dir / tinydecoder.OWN_FILE).read_bytes())
        print(f"installed {dest}")
    print(json.dumps(result))
