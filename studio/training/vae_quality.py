"""How well a built-in model's VAE reconstructs held-out scenes: PSNR, SSIM and edge sharpness (the shared
``sr_data`` metrics), and a side-by-side picture (truth | each VAE) for a model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import ShapesDataset, to_tensor_batch
from .sr_data import edge_sharpness, psnr, ssim
from .train_vae import HELDOUT_SEED, to_uint8


def load_vae_folder(folder: str | Path):
    """A diffusers ``AutoencoderKL`` folder (a model's ``vae/`` or a run's export), float32, eval mode."""
    from diffusers import AutoencoderKL

    from .common import require

    folder = require(Path(folder) / "config.json", "VAE config", "give a diffusers VAE folder").parent
    return AutoencoderKL.from_pretrained(str(folder), local_files_only=True).float().eval()


def heldout_images(n: int, seed: int = HELDOUT_SEED) -> list[np.ndarray]:
    """``n`` scenes of a seed no VAE training draws from (``train_vae.HELDOUT_SEED`` by default)."""
    ds = ShapesDataset(seed)
    return [ds.sample(i)[0] for i in range(n)]


@torch.no_grad()
def reconstruct(vae, images: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """encode (posterior mode) -> decode, uint8, as the engine rounds it."""
    vae.eval()
    out: list[np.ndarray] = []
    for s in range(0, len(images), batch):
        x = to_tensor_batch(images[s : s + batch])
        out.extend(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return out


def scores(truth: list[np.ndarray], recon: list[np.ndarray]) -> dict:
    """Mean PSNR (dB) and SSIM, and the median edge sharpness (1.0 = as sharp as the truth) over the pictures.
    The median: the per-picture ratio explodes (measured: up to 1400) on scenes whose object and background have
    nearly the same luma, where the truth's edges carry almost no gradient energy and any colour error adds some."""
    sharp = [edge_sharpness(r, t) for t, r in zip(truth, recon, strict=True)]
    return {"psnr": round(float(np.mean([psnr(t, r) for t, r in zip(truth, recon, strict=True)])), 3),
            "ssim": round(float(np.mean([ssim(t, r) for t, r in zip(truth, recon, strict=True)])), 4),
            "edge_sharpness": round(float(np.nanmedian(sharp)), 4), "n": len(truth)}


def vae_scores(vae, n: int = 256, seed: int = HELDOUT_SEED) -> dict:
    images = heldout_images(n, seed)
    return scores(images, reconstruct(vae, images))


def comparison_png(vaes: list, path: Path, picks: tuple[int, ...] = (0, 3, 5, 8, 13), zoom: int = 4,
                   seed: int = HELDOUT_SEED) -> Path:
    """Rows of held-out scenes: truth | each VAE's reconstruction, nearest-upscaled ``zoom`` times, a 4 px gap."""
    from PIL import Image

    images = heldout_images(max(picks) + 1, seed)
    truth = [images[i] for i in picks]
    cols = [truth] + [reconstruct(v, truth) for v in vaes]
    s, gap = truth[0].shape[0] * zoom, 4
    sheet = Image.new("RGB", (len(cols) * (s + gap) - gap, len(picks) * (s + gap) - gap), (255, 255, 255))
    for c, col in enumerate(cols):
        for r, img in enumerate(col):
            tile = Image.fromarray(img).resize((s, s), Image.Resampling.NEAREST)
            sheet.paste(tile, (c * (s + gap), r * (s + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
