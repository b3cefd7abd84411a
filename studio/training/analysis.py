"""Simple image analysis of one-object pictures: background, object colour, position and shape.

Used by the evaluator (on generated images) and by the tests (on the data set's own images, where it must
be right). Shape is told by a nearest-centroid classifier on a few silhouette features, calibrated on
ground-truth data set images (``calibrate``); the calibration shipped in ``SHAPE_CENTROIDS`` was made that way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from .data import COLORS, IMAGE_SIZE, POSITIONS, SHAPES, ShapesDataset

_COLOR_ARRAY = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_CELL_BY_XY = {v: k for k, v in POSITIONS.items()}


@dataclass
class Analysis:
    background: str
    color: str | None
    shape: str | None
    position: str | None
    area: int
    features: np.ndarray | None = None


def nearest_color(rgb) -> str:
    d = np.linalg.norm(_COLOR_ARRAY - np.asarray(rgb, dtype=np.float32)[None], axis=1)
    return _COLOR_NAMES[int(np.argmin(d))]


def background_rgb(img: np.ndarray) -> np.ndarray:
    """Dominant border colour: the median of the one-pixel frame."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def far_from(img: np.ndarray, bg: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """The pixels further than `threshold` (RGB distance) from the background colour."""
    return np.linalg.norm(img.astype(np.float32) - bg[None, None], axis=2) > threshold


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest connected blob of a boolean mask (the mask itself when it has at most one)."""
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def object_mask(img: np.ndarray, bg: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Largest connected blob of pixels far from the background colour."""
    return largest_blob(far_from(img, bg, threshold))


def region_colour(img: np.ndarray, region: np.ndarray) -> str:
    """The nearest named colour of a region's median, its anti-aliased rim eroded away when there is enough."""
    inner = ndimage.binary_erosion(region)
    pick = inner if inner.sum() >= 6 else region
    return nearest_color(np.median(img[pick].astype(np.float32), axis=0))


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Fill ratio of the bounding box, aspect ratio, the filled width at 5 heights (fractions of the
    box width) and the solidity (area / convex hull area: a star is far from convex)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1].astype(np.float32)
    h, w = box.shape
    fill = box.mean()
    aspect = w / h
    widths = []
    for f in (0.12, 0.3, 0.5, 0.7, 0.88):
        r = min(h - 1, int(f * h))
        widths.append(box[r].sum() / w)
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    corners = np.concatenate([pts + d for d in ((0, 0), (1, 0), (0, 1), (1, 1))])
    try:
        hull_area = ConvexHull(corners).volume
    except Exception:  # degenerate (a line)
        hull_area = float(len(pts))
    solidity = min(1.0, len(pts) / max(hull_area, 1.0))
    return np.array([fill * 2.0, aspect, *widths, solidity * 2.0], dtype=np.float32)


def _calibration_set(n: int = 600, seed: int = 12345):
    ds = ShapesDataset(seed, two_object_prob=0.0)
    for i in range(n):
        scene = ds.scene(i)
        yield ds.sample(i)[0], scene


def calibrate(n: int = 600, seed: int = 12345) -> dict[str, list[float]]:
    """Mean feature vector per shape over ground-truth images."""
    feats: dict[str, list[np.ndarray]] = {s: [] for s in SHAPES}
    for img, scene in _calibration_set(n, seed):
        bg = background_rgb(img)
        m = object_mask(img, bg)
        if m.sum() < 4:
            continue
        feats[scene.objects[0].shape].append(shape_features(m))
    return {s: [round(float(x), 4) for x in np.mean(v, axis=0)] for s, v in feats.items() if v}


# Made by calibrate(600, 12345) on the data set's own images.
SHAPE_CENTROIDS: dict[str, list[float]] = {
    "circle": [1.5556, 0.9977, 0.6258, 0.9104, 1.0, 0.9093, 0.6142, 1.8847],
    "square": [1.9956, 0.9965, 1.0, 1.0, 1.0, 1.0, 1.0, 1.9978],
    "triangle": [1.0873, 0.9982, 0.1608, 0.3405, 0.5569, 0.7434, 0.9324, 1.8276],
    "diamond": [1.072, 1.0022, 0.2784, 0.6436, 0.989, 0.6235, 0.2719, 1.823],
    "star": [0.9077, 1.0446, 0.141, 0.3323, 0.7452, 0.5301, 0.4126, 1.2393],
}


def classify_shape(features: np.ndarray, centroids: dict[str, list[float]] | None = None) -> str:
    cents = centroids or SHAPE_CENTROIDS or _lazy_centroids()
    names = list(cents)
    arr = np.array([cents[s] for s in names], dtype=np.float32)
    d = np.linalg.norm(arr - features[None], axis=1)
    return names[int(np.argmin(d))]


_LAZY: dict[str, list[float]] = {}


def _lazy_centroids() -> dict[str, list[float]]:
    if not _LAZY:
        _LAZY.update(calibrate())
    return _LAZY


def grid_cell(cx: float, cy: float, size: int = IMAGE_SIZE) -> str:
    col = min(2, max(0, int(cx / (size / 3))))
    row = min(2, max(0, int(cy / (size / 3))))
    return _CELL_BY_XY[(col, row)]


def analyse(img: np.ndarray, min_area: int = 12) -> Analysis:
    """Analyse a one-object picture (uint8 HxWx3, any size: it is resized to 64x64)."""
    if img.shape[0] != IMAGE_SIZE or img.shape[1] != IMAGE_SIZE:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
    bg = background_rgb(img)
    bg_name = nearest_color(bg)
    m = object_mask(img, bg)
    area = int(m.sum())
    if area < min_area:
        return Analysis(bg_name, None, None, None, area)
    color = region_colour(img, m)
    ys, xs = np.nonzero(m)
    position = grid_cell(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)
    feats = shape_features(m)
    return Analysis(bg_name, color, classify_shape(feats), position, area, feats)
