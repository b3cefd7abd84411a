"""The mask brush: round antialiased dabs stamped along the pointer's path (numpy only, no Qt).

Coordinates are continuous image coordinates: pixel (i, j) covers [i, i+1) x [j, j+1), so its
centre is (i + 0.5, j + 0.5) and a point at (10.5, 10.5) is the centre of pixel (10, 10). A mask is
an HxW uint8 array (255 = repaint), painted in place.

A dab of diameter `size` and `hardness` h (0..1) has, at distance d from its centre (radius r):
  * hard (the soft falloff r*(1-h) narrower than one pixel): alpha = clip(r + 0.5 - d, 0, 1), a one
    pixel antialiased edge (1 inside r - 0.5, 0 from r + 0.5);
  * soft: alpha = 1 inside r*h, then a smoothstep falling to 0 at r.
Alpha is quantised to 8 bits (a = round(alpha * 255)) before it touches the mask: the brush sets
mask = max(mask, a), the eraser mask = round(mask * (255 - a) / 255).

Only the rectangle a segment touches is computed, so a dab costs its own size, not the mask's.
"""

from __future__ import annotations

import math

import numpy as np

Rect = tuple[int, int, int, int]  # x, y, w, h in image pixels

MIN_SIZE, MAX_SIZE = 1, 1024


def spacing(size: float) -> float:
    """The distance between dabs along a segment: a quarter of the radius, at least one pixel."""
    return max(1.0, size / 8.0)


def dab_alpha(dx: np.ndarray, dy: np.ndarray, size: float, hardness: float) -> np.ndarray:
    """Alpha (float32, 0..1) of a dab centred at the origin, at offsets dx, dy (broadcastable)."""
    r = max(0.5, float(size) / 2.0)
    h = min(1.0, max(0.0, float(hardness)))
    dx, dy = np.asarray(dx, np.float32), np.asarray(dy, np.float32)
    d = np.add(dx * dx, dy * dy, dtype=np.float32)  # in place from here on: a large dab is a few passes
    np.sqrt(d, out=d)
    inner = r * h
    if r - inner < 1.0:  # hard: a one-pixel antialiased edge centred on the radius
        np.subtract(np.float32(r + 0.5), d, out=d)
        return np.clip(d, 0.0, 1.0, out=d)
    t = d
    np.subtract(np.float32(r), t, out=t)
    t *= np.float32(1.0 / (r - inner))
    np.clip(t, 0.0, 1.0, out=t)
    square = t * t
    t *= np.float32(-2.0)
    t += np.float32(3.0)
    t *= square  # smoothstep: t^2 (3 - 2t)
    return t


def _extent(size: float, hardness: float) -> float:
    """How far from its centre a dab reaches (alpha > 0)."""
    r = max(0.5, float(size) / 2.0)
    return r + 0.5 if r - r * min(1.0, max(0.0, hardness)) < 1.0 else r


def segment_alpha(
    shape: tuple[int, int], p0, p1, size: float, hardness: float, include_start: bool = True
) -> tuple[Rect, np.ndarray] | None:
    """The 8-bit alpha of dabs stamped from p0 to p1, combined by max, inside the smallest rectangle
    holding every touched pixel (clipped to shape = (height, width)); None when nothing is touched.

    include_start=False leaves out the dab at p0 (a stroke's next segment: it is already painted)."""
    height, width = shape
    x0, y0 = float(p0[0]), float(p0[1])
    x1, y1 = float(p1[0]), float(p1[1])
    reach = _extent(size, hardness)
    left, right = math.floor(min(x0, x1) - reach), math.ceil(max(x0, x1) + reach)
    top, bottom = math.floor(min(y0, y1) - reach), math.ceil(max(y0, y1) + reach)
    left, top, right, bottom = max(0, left), max(0, top), min(width, right), min(height, bottom)
    if right <= left or bottom <= top:
        return None
    length = math.hypot(x1 - x0, y1 - y0)
    n = max(1, math.ceil(length / spacing(size))) if length > 0 else 0
    alpha = np.zeros((bottom - top, right - left), np.float32)
    for k in range(0 if include_start or n == 0 else 1, n + 1):
        t = k / n if n else 0.0
        cx, cy = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        # this dab's own window, clipped to the segment's rectangle
        a, b = max(left, math.floor(cx - reach)), min(right, math.ceil(cx + reach))
        c, d = max(top, math.floor(cy - reach)), min(bottom, math.ceil(cy + reach))
        if b <= a or d <= c:
            continue
        dx = (np.arange(a, b, dtype=np.float32) + np.float32(0.5 - cx))[None, :]
        dy = (np.arange(c, d, dtype=np.float32) + np.float32(0.5 - cy))[:, None]
        window = alpha[c - top : d - top, a - left : b - left]
        np.maximum(window, dab_alpha(dx, dy, size, hardness), out=window)
    alpha *= np.float32(255.0)
    np.rint(alpha, out=alpha)
    a8 = alpha.astype(np.uint8)
    # trim the rows and columns whose alpha rounded to 0 (at most a pixel or so on each side)
    r0, r1, c0, c1 = 0, a8.shape[0], 0, a8.shape[1]
    while r0 < r1 and not a8[r0, c0:c1].any():
        r0 += 1
    while r1 > r0 and not a8[r1 - 1, c0:c1].any():
        r1 -= 1
    if r0 == r1:
        return None
    while not a8[r0:r1, c0].any():
        c0 += 1
    while not a8[r0:r1, c1 - 1].any():
        c1 -= 1
    return (left + c0, top + r0, c1 - c0, r1 - r0), a8[r0:r1, c0:c1]


def apply_alpha(target: np.ndarray, a8: np.ndarray, erase: bool, source: np.ndarray | None = None) -> None:
    """Brush: target = max(target, a8). Eraser: target = round(source * (255 - a8) / 255), source
    defaulting to target itself. All arrays are the same-shaped uint8 window, changed in place."""
    if not erase:
        np.maximum(target, a8, out=target)
        return
    src = target if source is None else source
    v = np.subtract(255, a8, dtype=np.uint16)
    v *= src  # <= 255 * 255: fits 16 bits
    v += 128
    v += v >> 8
    v >>= 8  # = (src * (255 - a8) + 127) // 255, exactly, for every value
    target[...] = v


def paint_segment(mask: np.ndarray, p0, p1, size: float, hardness: float, erase: bool = False) -> Rect | None:
    """Stamp dabs from p0 to p1 into mask in place (the brush, or with erase=True the eraser).

    The dabs of one segment are combined by max before they are applied, so the result does not
    depend on the spacing where they overlap. Returns the touched rectangle (x, y, w, h), clipped
    to the mask, or None when the segment lies outside it."""
    hit = segment_alpha(mask.shape, p0, p1, size, hardness)
    if hit is None:
        return None
    (x, y, w, h), a8 = hit
    apply_alpha(mask[y : y + h, x : x + w], a8, erase)
    return (x, y, w, h)


class Stroke:
    """One drag of the brush or eraser over a mask: `to(point)` paints from the last point to
    point (the first call is a single dab) and returns the rectangle it touched.

    The eraser keeps the stroke's coverage (the max of every dab so far) and applies it once to the
    mask as it was before the stroke, so a soft eraser removes the same whether the pointer moves
    fast (few segments) or slowly (many overlapping ones). The brush is a max, which never builds
    up, so it paints straight into the mask."""

    def __init__(self, mask: np.ndarray, size: float, hardness: float, erase: bool = False):
        self.mask = mask
        self.size = float(min(MAX_SIZE, max(MIN_SIZE, size)))
        self.hardness = float(min(1.0, max(0.0, hardness)))
        self.erase = erase
        self.last: tuple[float, float] | None = None
        self._source = mask.copy() if erase else None
        self._coverage = np.zeros(mask.shape, np.uint8) if erase else None

    def to(self, point) -> Rect | None:
        p = (float(point[0]), float(point[1]))
        p0 = self.last if self.last is not None else p
        self.last = p
        hit = segment_alpha(self.mask.shape, p0, p, self.size, self.hardness, include_start=p0 == p)
        if hit is None:
            return None
        (x, y, w, h), a8 = hit
        if not self.erase:
            apply_alpha(self.mask[y : y + h, x : x + w], a8, False)
            return (x, y, w, h)
        assert self._coverage is not None and self._source is not None  # made for an eraser
        cov = self._coverage[y : y + h, x : x + w]
        np.maximum(cov, a8, out=cov)
        apply_alpha(self.mask[y : y + h, x : x + w], cov, True, self._source[y : y + h, x : x + w])
        return (x, y, w, h)
