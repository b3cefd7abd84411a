"""Write the shipped diffusers folder (``export``) and fit the latent -> RGB preview factors (``fit-preview``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from studio.paths import TOKENIZER_DIR

from .common import require
from .data import ShapesDataset, to_tensor_batch
from .models import NOISE_SCHEDULE, load_tokenizer
from .train_unet import models_from_checkpoint
from .train_vae import load_trained_vae

PREVIEW_SEED = 3_000_017


def make_scheduler():
    """The shipped default sampler (Euler) with the training betas."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**NOISE_SCHEDULE, timestep_spacing="linspace", steps_offset=1)


def load_pipeline(folder: str | Path, dtype=torch.float32):
    """Load the shipped folder offline with the right pipeline class (9-channel UNet: inpainting)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    folder = Path(folder)
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    cls = StableDiffusionInpaintPipeline if unet_cfg.get("in_channels", 4) == 9 else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export(run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, fp16: bool = True) -> Path:
    """Build the pipeline from the run's VAE and UNet checkpoint and save it as a diffusers folder."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    vae = load_trained_vae(run_dir)
    ckpt = require(run_dir / "unet" / "checkpoint.pt", "U-Net checkpoint", f"run train-unet --run-dir {run_dir} first")
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    text_encoder, unet = models_from_checkpoint(ck, use_ema=use_ema)
    # the latents' scale the denoiser was trained with (the VAE's 1/std times the run's latent_scale)
    vae.register_to_config(scaling_factor=float(ck["scaling_factor"]))
    tokenizer = load_tokenizer()
    cls = StableDiffusionInpaintPipeline if unet.config.in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if fp16:
        # UNet and VAE stored as float16; the text encoder stays float32 (transformers loads a model in its
        # stored dtype by default, diffusers in float32: so a plain from_pretrained gives an all-float32 pipeline)
        pipe.unet.to(torch.float16)
        pipe.vae.to(torch.float16)
    keep = {"README.md", "latent_rgb.json"}
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name in keep:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # the tokenizer files exactly as shipped in resources/ (save_pretrained may add or rename files)
    tok_dir = out_dir / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok_dir.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TOKENIZER_DIR / name, tok_dir / name)
    info = {
        "training_step": int(ck["step"]),
        "ema": use_ema,
        "weights_dtype": "unet, vae: float16; text_encoder: float32" if fp16 else "float32",
    }
    (out_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


@torch.no_grad()
def fit_latent_rgb(vae, n: int = 512, seed: int = PREVIEW_SEED) -> dict:
    """Least squares from SCALED latents (4 channels, what the sampler carries) to the image averaged down
    to the latent grid, in [-1, 1]: rgb = latent @ factors + bias."""
    vae = vae.float().eval()
    sf = float(vae.config.scaling_factor)
    ds = ShapesDataset(seed)
    X, Y = [], []
    for s in range(0, n, 64):
        x = to_tensor_batch([ds.sample(i)[0] for i in range(s, min(n, s + 64))])
        z = vae.encode(x).latent_dist.mean * sf
        f = x.shape[-1] // z.shape[-1]
        small = torch.nn.functional.avg_pool2d(x, f)
        X.append(z.permute(0, 2, 3, 1).reshape(-1, 4))
        Y.append(small.permute(0, 2, 3, 1).reshape(-1, 3))
    Xa = torch.cat(X).double().numpy()
    Ya = torch.cat(Y).double().numpy()
    A = np.concatenate([Xa, np.ones((len(Xa), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(A, Ya, rcond=None)
    pred = A @ sol
    rmse = float(np.sqrt(np.mean((pred - Ya) ** 2)))
    return {
        "factors": [[round(float(v), 5) for v in row] for row in sol[:4]],
        "bias": [round(float(v), 5) for v in sol[4]],
        "fit_rmse": round(rmse, 4),
        "scaling_factor": sf,
        "note": "rgb = (latent * scaling_factor) @ factors + bias, in [-1, 1] on the latent grid",
    }


def fit_preview(model_dir: str | Path, n: int = 512) -> dict:
    from diffusers import AutoencoderKL

    model_dir = Path(model_dir)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True, dtype=torch.float32)
    from .train_tiny_decoder import fit_upscaler_factors, is_upscaler

    result = fit_upscaler_factors(vae, n=min(n, 64)) if is_upscaler(model_dir) else fit_latent_rgb(vae, n=n)
    (model_dir / "latent_rgb.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main_export(args) -> None:
    out = export(args.run_dir, args.out, use_ema=not args.no_ema, fp16=not args.fp32)
    if not args.no_preview:
        fit_preview(out)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"exported {out} ({size / 1e6:.1f} MB)")


def main_fit_preview(args) -> None:
    print(json.dumps(fit_preview(args.model, n=args.images), indent=2))
