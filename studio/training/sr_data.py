"""Super-resolution pairs of the built-in model's domain, and shared helpers of the two upscalers (crops, the
latent upscaler's pool of encoded scenes, metrics).

A pair is a scene of ``data.ShapesDataset`` drawn at 4x its size (``render(scene, 256)``: the same
supersampled, box-filtered drawing at 256x256) and its bicubic downsampling to 64x64 (PIL, as an image
editor would). Like the data set, every pair is a pure function of ``(seed, index)``.

Held-out scenes (the benchmarks and the measured quality of the model cards) use seeds that no training
run draws from: ``HELDOUT_SEED``.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import IMAGE_SIZE, ShapesDataset, render
from .upscaler_models import structured_latent

SCALE = 4
HR_SIZE = IMAGE_SIZE * SCALE  # 256
TRAIN_SEED = 11
HELDOUT_SEED = 4_000_037
POOL_SEED_OFFSET = 500  # the latent upscaler's pool of encoded scenes


def bicubic(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 size x size x 3, PIL bicubic (antialiased when shrinking)."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


class SRPairs:
    """``pair(i)`` -> (high-res 256x256 uint8, low-res 64x64 uint8, caption)."""

    def __init__(self, seed: int = TRAIN_SEED, hr_size: int = HR_SIZE, scale: int = SCALE):
        self.ds = ShapesDataset(seed)
        self.hr_size = hr_size
        self.scale = scale

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        scene = self.ds.scene(index)
        hr = render(scene, self.hr_size)
        lr = bicubic(hr, self.hr_size // self.scale)
        return hr, lr, scene.caption


def heldout_pairs(n: int, seed: int = HELDOUT_SEED) -> list[tuple[np.ndarray, np.ndarray, str]]:
    src = SRPairs(seed)
    return [src.pair(i) for i in range(n)]


def to_pm1(imgs: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> Bx3xHxW in [-1, 1] (what the latent upscaler's VAE reads)."""
    arr = np.stack(imgs).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def crop_origin(rng, scene, n: int, crop: int, grid: float) -> tuple[int, int]:
    """A crop of side ``crop`` in an n x n grid; half the time near an object (most of a picture is flat)."""
    if rng.random() < 0.5 and scene is not None and scene.objects:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        cx = obj.cx * n / grid + rng.uniform(-crop / 3, crop / 3)
        cy = obj.cy * n / grid + rng.uniform(-crop / 3, crop / 3)
        return (int(np.clip(round(cx - crop / 2), 0, n - crop)), int(np.clip(round(cy - crop / 2), 0, n - crop)))
    x0, y0 = (int(v) for v in rng.integers(0, n - crop + 1, size=2))
    return x0, y0


@torch.no_grad()
def build_sr_pool(vae, size: int, seed: int, progress: bool = True) -> dict:
    """``size`` scenes as the latent upscaler's structured latents (pipeline units), with their low-res images
    (no captions: the UNet reads no text)."""
    src = SRPairs(TRAIN_SEED + POOL_SEED_OFFSET + seed)
    vae.eval()
    n_lat = HR_SIZE // SCALE
    lat = torch.empty(size, 4, n_lat, n_lat, dtype=torch.float16)
    lrs = torch.empty(size, 3, n_lat, n_lat, dtype=torch.uint8)
    centres = torch.full((size, 2), -1.0)
    for s in tqdm(range(0, size, 8), desc="encode pool", disable=not progress, mininterval=5):
        idx = range(s, min(size, s + 8))
        his, los = [], []
        for i in idx:
            scene = src.ds.scene(i)
            hr, lr, _cap = src.pair(i)
            his.append(hr)
            los.append(lr)
            lrs[i] = torch.from_numpy(lr).permute(2, 0, 1)
            o = scene.objects[i % len(scene.objects)]
            centres[i] = torch.tensor([o.cx, o.cy])
        lat[s : s + len(idx)] = structured_latent(vae, to_pm1(his), to_pm1(los)).half()
    return {"lat": lat, "lr": lrs, "centres": centres, "size": size, "seed": seed}


# ---- metrics (on uint8 RGB, per image) ----


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _gauss_filter(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian 'valid' filtering of a HxW float64 array (11x11 window, sigma 1.5)."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    from numpy.lib.stride_tricks import sliding_window_view

    x = (sliding_window_view(x, k.size, axis=0) * k).sum(-1)
    return (sliding_window_view(x, k.size, axis=1) * k).sum(-1)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255) on the luma
    (BT.601 Y of the RGB values), the usual way super-resolution papers report it."""

    def luma(x):
        x = x.astype(np.float64)
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]

    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gauss_filter(x), _gauss_filter(y)
    sxx = _gauss_filter(x * x) - mx * mx
    syy = _gauss_filter(y * y) - my * my
    sxy = _gauss_filter(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def edge_sharpness(out: np.ndarray, truth: np.ndarray, top: float = 0.10) -> float:
    """The gradient energy at true edges: the mean squared Sobel gradient of ``out``'s luma over the pixels
    where ``truth``'s gradient is in its top ``top`` fraction, divided by the truth's own there. 1.0 is as
    sharp as the truth, below 1 softer (a blur), above 1 ringing or over-sharpening. The one sharpness figure
    the VAE, upscaler and diffusion-upscale measurements share (uint8 RGB HxWx3 of one size)."""
    import cv2

    def grad2(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3)
        gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3)
        return gx * gx + gy * gy

    gt = grad2(truth)
    if not gt.any():
        return float("nan")  # a flat picture has no edges to be sharp at
    edges = gt >= np.quantile(gt, 1.0 - top)
    return float(grad2(out)[edges].mean() / gt[edges].mean())


# ---- spandrel without torchvision ----


def import_spandrel():
    """``import spandrel`` with a stand-in ``torchvision.transforms.functional`` when torchvision is missing
    (spandrel imports it only for two architectures we never use, LaMa and RestoreFormer). The stand-in is
    in ``sys.modules`` only while spandrel is imported."""
    try:
        import spandrel

        return spandrel
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("torchvision"):
            raise
    for name in [k for k in sys.modules if k.startswith("spandrel")]:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")

    class InterpolationMode:  # noqa: D401 - a stand-in
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def _missing(*_a, **_k):
        raise RuntimeError("torchvision is not installed")

    fn.InterpolationMode = InterpolationMode
    fn.rotate = _missing
    fn.normalize = _missing
    tr.functional = fn
    tv.transforms = tr
    added = []
    for name, mod in (("torchvision", tv), ("torchvision.transforms", tr), ("torchvision.transforms.functional", fn)):
        if name not in sys.modules:
            sys.modules[name] = mod
            added.append(name)
    try:
        import spandrel
    finally:
        # out again at once: a module without __spec__ under that name breaks importlib.util.find_spec, which
        # diffusers and transformers call to see whether torchvision is installed
        for name in added:
            sys.modules.pop(name, None)
    return spandrel
