"""Cheap latent -> RGB previews: a 4x3 linear map (plus bias) on the latent grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Rows: latent channels 0-3; columns: R, G, B. Applied to latents as the sampler carries them.
SD15_FACTORS = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
SD15_BIAS = [0.0, 0.0, 0.0]
SDXL_FACTORS = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
SDXL_BIAS = [0.1084, -0.0175, -0.0011]

LATENT_RGB_FILE = "latent_rgb.json"  # fitted factors kept with a model that has no published ones


def factors_for(model_dir: Path | None, family: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's own fitted factors when it ships them, else the family's published ones."""
    if model_dir is not None:
        f = Path(model_dir) / LATENT_RGB_FILE
        if f.is_file():
            try:
                data = json.loads(f.read_text())
                m = np.asarray(data["factors"], dtype=np.float32)
                b = np.asarray(data.get("bias", [0, 0, 0]), dtype=np.float32)
                if m.shape == (4, 3) and b.shape == (3,):
                    return m, b
            except (ValueError, KeyError, TypeError):
                pass  # a broken file falls back to the published factors
    if family == "sdxl":
        return np.asarray(SDXL_FACTORS, np.float32), np.asarray(SDXL_BIAS, np.float32)
    return np.asarray(SD15_FACTORS, np.float32), np.asarray(SD15_BIAS, np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8, clamped and rounded (never truncated)."""
    return np.rint((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def latent_to_rgb(latent: np.ndarray, factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One (4, h, w) latent -> (h, w, 3) uint8 on the latent grid (numpy)."""
    lat = np.asarray(latent, dtype=np.float32)
    rgb = np.einsum("chw,cr->hwr", lat, factors) + bias
    return to_uint8(rgb)


def fit_factors(latents: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares 4x3 matrix and bias from scaled latents (N,4,h,w) to images in [-1,1] (N,h,w,3)
    already downsampled to the latent grid."""
    x = np.asarray(latents, np.float64).transpose(0, 2, 3, 1).reshape(-1, 4)
    y = np.asarray(images, np.float64).reshape(-1, 3)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    return sol[:4].astype(np.float32), sol[4].astype(np.float32)
