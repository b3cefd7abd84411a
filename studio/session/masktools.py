"""Mask shapes and morphology: rectangle and lasso regions, grow and shrink (numpy, scipy; no Qt).

Coordinates are those of studio.session.brush: pixel (i, j) covers [i, i+1) x [j, j+1). A shape
takes the pixels whose centre (i + 0.5, j + 0.5) lies inside it, so a rectangle from (10, 20) to
(30, 25) is exactly the 20x5 pixels of mask[20:25, 10:30], and a lasso traced along the same
corners is the same pixels. Regions are hard-edged (the inpaint's mask blur feathers them).

Grow and shrink move the mask's edge by n pixels with a round brush (a flat disk of radius n,
dx² + dy² <= n²): a square of side s grows to side s + 2n with rounded corners and shrinks to
side s - 2n. The image border is not an edge: a mask touching it stays there when shrunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Rect = tuple[int, int, int, int]  # x, y, w, h in image pixels
Region = tuple[Rect, np.ndarray]  # a rectangle and the bool array of the pixels inside it

MAX_AMOUNT = 128  # grow / shrink: more is a different mask, not an adjustment (and costs a pass per row of the disk)


def rect_region(shape: tuple[int, int], a: Sequence[float], b: Sequence[float]) -> Region | None:
    """The pixels of the rectangle between corners a and b (x, y), each rounded to the nearest pixel
    boundary and clipped to shape = (height, width); None when it holds no pixel."""
    height, width = shape
    x0, x1 = sorted(min(max(0, round(v)), width) for v in (a[0], b[0]))
    y0, y1 = sorted(min(max(0, round(v)), height) for v in (a[1], b[1]))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0), np.ones((y1 - y0, x1 - x0), bool)


def polygon_region(shape: tuple[int, int], points: Sequence[Sequence[float]]) -> Region | None:
    """The pixels whose centre is inside the closed polygon (even-odd rule), clipped to shape; None
    when there are fewer than 3 points or no pixel is inside.

    A scanline fill: every edge crossing a row of pixel centres toggles the row from the first
    centre right of the crossing, and a running parity along the row says inside or out."""
    height, width = shape
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(p) < 3 or not np.isfinite(p).all():
        return None
    top = max(0, math.floor(p[:, 1].min()))
    bottom = min(height, math.ceil(p[:, 1].max()))
    if bottom <= top:
        return None
    x0, y0 = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # An edge crosses the centre line of row j (y = j + 0.5) when min(y0, y1) <= j + 0.5 < max(y0, y1) (half-open:
    # no double count at a vertex): a run of rows per edge, so the work is the crossings, not rows x edges.
    first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), top, bottom).astype(np.intp)
    last = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), top, bottom).astype(np.intp)
    counts = last - first
    e = np.repeat(np.arange(len(p)), counts)
    row = np.repeat(first, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    yc = row + 0.5
    x = x0[e] + (yc - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
    r = row - top
    start = np.clip(np.ceil(x - 0.5), 0, width).astype(np.intp)  # the first pixel whose centre is right of it
    toggles = np.zeros((bottom - top, width + 1), np.uint8)  # counts wrap at 256: the parity is all that matters
    np.add.at(toggles, (r, start), 1)
    inside = (np.cumsum(toggles[:, :width], axis=1, dtype=np.uint8) & 1).astype(bool)
    ys, xs = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    if not ys.size:
        return None
    ra, rb, ca, cb = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return (ca, top + ra, cb - ca, rb - ra), inside[ra:rb, ca:cb].copy()


def apply_region(mask: np.ndarray, region: Region, erase: bool) -> None:
    """Set the region's pixels of mask to 255 (or to 0 with erase), in place."""
    (x, y, w, h), inside = region
    mask[y : y + h, x : x + w][inside] = 0 if erase else 255


def grow(mask: np.ndarray, n: int) -> np.ndarray:
    """The mask dilated by a disk of radius n (a grey dilation: soft edges stay soft), a new array.

    The disk is a stack of horizontal runs; each row offset dy is a running max of width
    2*sqrt(n² - dy²) + 1 along the rows (scipy's O(pixels) filter), shifted by ±dy, so the cost is
    n + 1 passes over the mask, not (2n + 1)² per pixel."""
    n = int(n)
    if n <= 0:
        return mask.copy()
    from scipy.ndimage import maximum_filter1d  # scipy comes with torchsde; imported here, off the start-up path

    h = mask.shape[0]
    padded = np.pad(mask, ((n, n), (0, 0)), mode="edge")  # the border is no edge (see the module docstring)
    out = np.zeros_like(mask)
    for dy in range(n + 1):
        half = math.isqrt(n * n - dy * dy)
        runs = maximum_filter1d(padded, 2 * half + 1, axis=1, mode="nearest")
        for shift in {dy, -dy}:
            np.maximum(out, runs[n + shift : n + shift + h], out=out)
    return out


def shrink(mask: np.ndarray, n: int) -> np.ndarray:
    """The mask eroded by a disk of radius n: what is left where the whole disk was masked."""
    return 255 - grow(255 - mask, n)
