"""Overlapping tiles and their seamless blend: shared by every upscale path (upscaler models, tiled diffusion).

numpy only (no torch, no Qt). Rectangles are ``(x, y, w, h)`` in pixels.

- :func:`tile_grid` cuts a ``width x height`` image into tiles of at most ``tile`` px a side that overlap their
  neighbours by at least ``overlap`` px and cover every pixel. Along each axis the tiles are spread evenly (equal
  overlaps, not one odd sliver at the end); the last one ends exactly on the image edge (shifted back inside, never
  shrunk). An axis no longer than ``tile`` is one span over the whole axis, so an image no larger than a tile is one
  tile, even when its side is not a multiple of ``multiple`` (the caller pads such a tile, e.g. to the VAE's 8).
  Otherwise tile sides and tile positions are multiples of ``multiple`` except the last position, which is
  ``length - tile side``.
- :func:`tile_weights` is a tile's blend weight: a linear ramp over ``overlap`` px on each side that has a
  neighbour (that is not on the image edge), 1 elsewhere, never 0. Two neighbours overlapping by exactly
  ``overlap`` cross-fade with weights summing to 1; a wider overlap is still a plain weighted average.
- :class:`TileBlender` accumulates processed tiles (``add``) and gives the weighted average (``result``).
  Memory: 4 bytes per pixel and channel plus 4 per pixel (float32), about 1 GiB for an 8192 x 8192 RGB output.
"""

from __future__ import annotations

import math

import numpy as np

Rect = tuple[int, int, int, int]

__all__ = ["Rect", "TileBlender", "tile_grid", "tile_weights", "axis_spans"]


def axis_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """The (start, size) spans of one axis; see :func:`tile_grid`."""
    if length < 1:
        raise ValueError(f"The image side must be at least 1 px, got {length}")
    if multiple < 1:
        raise ValueError(f"The tile multiple must be at least 1, got {multiple}")
    if tile < 1:
        raise ValueError(f"The tile size must be at least 1 px, got {tile}")
    if overlap < 0:
        raise ValueError(f"The tile overlap must not be negative, got {overlap}")
    if length <= tile:
        return [(0, length)]
    size = (tile // multiple) * multiple
    if size < 1:
        raise ValueError(f"The tile size {tile} is smaller than its multiple {multiple}")
    # The largest step between tile starts that keeps the overlap, as a multiple of `multiple`.
    stride = ((size - overlap) // multiple) * multiple
    if stride < 1:
        raise ValueError(f"The tile overlap {overlap} leaves no room in a {size} px tile (multiple {multiple})")
    last = length - size
    n = math.ceil(last / stride) + 1
    while True:
        # Evenly spread starts, snapped down to the multiple; the last one ends on the edge.
        starts = sorted({(round(i * last / (n - 1)) // multiple) * multiple for i in range(n - 1)} | {last})
        if all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False)):
            return [(s, size) for s in starts]
        # Snapping widened a gap past the stride (only with multiple > 1): one more tile. This ends: at worst the
        # starts are every multiple in [0, last] plus last, whose gaps are at most `multiple` <= stride.
        n += 1


def tile_grid(width: int, height: int, tile: int, overlap: int, multiple: int = 1) -> list[Rect]:
    """Tiles ``(x, y, w, h)`` of at most ``tile`` px covering a ``width x height`` image, row by row.

    Neighbours overlap by at least ``overlap`` px; see the module docstring for sizes and positions.
    Raises ValueError when the overlap leaves no room in a tile.
    """
    xs = axis_spans(width, tile, overlap, multiple)
    ys = axis_spans(height, tile, overlap, multiple)
    return [(x, y, w, h) for y, h in ys for x, w in xs]


def _ramp(n: int, lo_ramp: bool, hi_ramp: bool, overlap: int) -> np.ndarray:
    r = np.ones(n, np.float32)
    if overlap <= 0:
        return r
    d = np.arange(n, dtype=np.float32)
    if lo_ramp:
        r = np.minimum(r, (d + 0.5) / overlap)
    if hi_ramp:
        r = np.minimum(r, (n - d - 0.5) / overlap)
    return r


def tile_weights(rect: Rect, width: int, height: int, overlap: int) -> np.ndarray:
    """float32 ``h x w`` blend weights of ``rect`` in a ``width x height`` image, in (0, 1]."""
    x, y, w, h = rect
    wx = _ramp(w, x > 0, x + w < width, overlap)
    wy = _ramp(h, y > 0, y + h < height, overlap)
    return wy[:, None] * wx[None, :]


class TileBlender:
    """Weighted average of overlapping tiles into a ``height x width x channels`` image.

    ``add(rect, pixels)`` takes ``h x w x channels`` (or ``h x w`` for one channel) values in 0..255, uint8 or float;
    ``result()`` gives uint8 and raises ValueError if some pixel was never covered. Blending tiles cut from one
    image gives that image back exactly.
    """

    def __init__(self, width: int, height: int, channels: int = 3, overlap: int = 0):
        if width < 1 or height < 1 or channels < 1:
            raise ValueError(f"Bad blend size {width}x{height}x{channels}")
        self.width, self.height, self.channels, self.overlap = width, height, channels, overlap
        self._sum = np.zeros((height, width, channels), np.float32)
        self._weight = np.zeros((height, width), np.float32)

    def add(self, rect: Rect, pixels: np.ndarray) -> None:
        x, y, w, h = rect
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > self.width or y + h > self.height:
            raise ValueError(f"Tile {rect} is outside the {self.width}x{self.height} image")
        px = np.asarray(pixels)
        if px.ndim == 2:
            px = px[:, :, None]
        if px.shape != (h, w, self.channels):
            raise ValueError(f"Tile {rect} got pixels of shape {px.shape}, expected {(h, w, self.channels)}")
        wt = tile_weights(rect, self.width, self.height, self.overlap)
        self._sum[y : y + h, x : x + w] += px.astype(np.float32) * wt[:, :, None]
        self._weight[y : y + h, x : x + w] += wt

    def covered(self) -> np.ndarray:
        """bool ``height x width``: the pixels some tile has covered so far."""
        return self._weight > 0

    def result(self) -> np.ndarray:
        if not (self._weight > 0).all():
            missing = int((self._weight <= 0).sum())
            raise ValueError(f"{missing} pixels of the {self.width}x{self.height} image are covered by no tile")
        out = self._sum / self._weight[:, :, None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
