"""Measure the built-in latent upscaler: its VAE on whole held-out pictures, its pipeline against bicubic."""

from __future__ import annotations

import numpy as np
import torch

from studio.engine.upscale import EDGE_MARGIN

from .sr_data import HELDOUT_SEED, SCALE, bicubic, heldout_pairs, psnr, ssim, to_pm1
from .upscaler_models import NOISE_LEVEL, decode_structured, structured_latent


def _mirror(img: np.ndarray, px: int) -> np.ndarray:
    return np.pad(img, ((px, px), (px, px), (0, 0)), mode="symmetric") if px else img


@torch.no_grad()
def vae_scores(vae, n: int = 16, seed: int = HELDOUT_SEED, margin: int = EDGE_MARGIN) -> dict:
    """PSNR on whole pictures (held-out by default): decoding (low-res, encoder's detail), (low-res, no
    detail), and the plain encode -> decode round trip; SSIM of the first. Each picture mirrored ``margin``
    low-res px beyond its edges and that cut off again, as the studio runs the model (upscale.EDGE_MARGIN)."""
    from .train_vae import to_uint8

    vae.eval()
    e = margin * SCALE
    out: dict[str, list[float]] = {"psnr_detail": [], "psnr_no_detail": [], "psnr_roundtrip": [], "ssim_detail": []}

    def cut(y: torch.Tensor) -> np.ndarray:
        img = to_uint8(y)[0]
        return img[e : img.shape[0] - e, e : img.shape[1] - e]

    for hr, lr, _c in heldout_pairs(n, seed):
        x, lo = to_pm1([_mirror(hr, e)]), to_pm1([_mirror(lr, margin)])
        z = structured_latent(vae, x, lo)
        dec = cut(decode_structured(vae, z))
        out["psnr_detail"].append(psnr(hr, dec))
        out["ssim_detail"].append(ssim(hr, dec))
        z0 = torch.cat([lo, torch.zeros_like(lo[:, :1])], dim=1)
        out["psnr_no_detail"].append(psnr(hr, cut(decode_structured(vae, z0))))
        rt = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out["psnr_roundtrip"].append(psnr(hr, cut(rt)))
    return {k: round(float(np.mean(v)), 4 if k.startswith("ssim") else 3) for k, v in out.items()}


@torch.no_grad()
def decoder_scores(vae, n: int = 16, seed: int = HELDOUT_SEED, margin: int = EDGE_MARGIN) -> dict:
    """The decoder as the studio feeds it (the exact low-res picture on channels 0-2, the encoder's detail on 3,
    the mirrored margin cut off): mean PSNR and SSIM and the median edge sharpness (``sr_data.edge_sharpness``,
    1.0 = the truth's; the median as ``vae_quality.scores`` takes it) on ``n`` whole pictures of ``seed``."""
    from .sr_data import edge_sharpness
    from .train_vae import to_uint8

    vae.eval()
    e = margin * SCALE
    ps, ss, es = [], [], []
    for hr, lr, _c in heldout_pairs(n, seed):
        x, lo = to_pm1([_mirror(hr, e)]), to_pm1([_mirror(lr, margin)])
        img = to_uint8(decode_structured(vae, structured_latent(vae, x, lo)))[0]
        dec = img[e : img.shape[0] - e, e : img.shape[1] - e]
        ps.append(psnr(hr, dec))
        ss.append(ssim(hr, dec))
        es.append(edge_sharpness(dec, hr))
    return {"psnr": round(float(np.mean(ps)), 3), "ssim": round(float(np.mean(ss)), 4),
            "edge_sharpness": round(float(np.nanmedian(es)), 4), "n": n}


def bicubic_scores(n: int, seed: int = HELDOUT_SEED) -> dict:
    pairs = heldout_pairs(n, seed)
    return {"psnr": float(np.mean([psnr(h, bicubic(lo, h.shape[0])) for h, lo, _ in pairs])),
            "ssim": float(np.mean([ssim(h, bicubic(lo, h.shape[0])) for h, lo, _ in pairs]))}


def bar_score(scores: dict, bic: dict) -> float:
    """How far the bar (better than bicubic on PSNR and on SSIM) is passed: the smaller of the two margins,
    0.001 of SSIM counted as 1 dB (measured: training trades them, SSIM rising while PSNR dips)."""
    return round(min(scores["psnr_detail"] - bic["psnr"], 1000.0 * (scores["ssim_detail"] - bic["ssim"])), 4)


def upscale_with_pipeline(pipe, lr: np.ndarray, caption: str = "", steps: int = 4, noise_level: int = NOISE_LEVEL,
                          seed: int = 0, guidance_scale: float = 0.0) -> np.ndarray:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    out = pipe(prompt=caption, image=Image.fromarray(lr), num_inference_steps=steps, noise_level=noise_level,
               guidance_scale=guidance_scale, generator=g, output_type="np").images[0]
    return (np.clip(out, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def evaluate_pipeline(pipe, n: int = 16, steps: int = 4, noise_level: int = NOISE_LEVEL, captions: bool = False) -> dict:
    pm, sm = [], []
    for i, (hr, lr, cap) in enumerate(heldout_pairs(n)):
        out = upscale_with_pipeline(pipe, lr, cap if captions else "", steps=steps, noise_level=noise_level, seed=i)
        pm.append(psnr(hr, out))
        sm.append(ssim(hr, out))
    bic = bicubic_scores(n)
    return {"n": n, "inference_steps": steps, "noise_level": noise_level, "psnr": float(np.mean(pm)),
            "ssim": float(np.mean(sm)), "bicubic_psnr": bic["psnr"], "bicubic_ssim": bic["ssim"]}
