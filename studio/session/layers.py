"""Raster layers: the stack a document holds, how it flattens, and the colour brush (numpy only, no Qt).

A layer's pixels are an HxWx4 uint8 array, straight (not premultiplied) alpha. The stack flattens bottom to top
over an opaque background (`BACKGROUND`, white) with, for each visible layer, an effective alpha
`a = round(alpha * opacity)` (0..255) and `out = round((src * a + out * (255 - a)) / 255)`, rounded to 8 bits after
each layer. Because the background is opaque, the result is opaque RGB, and the same integer formula on a
rectangle gives exactly the pixels of a full flatten there (so a stroke redraws only its dirty rectangle).

Layers are shared between the document and its undo history: a layer's metadata (name, visibility, opacity) is
never changed in place (an operation makes a new `Layer` with `with_`), and its pixels change in place only under a
recorded patch (a brush stroke, its undo), so every history entry sees, when the cursor is back at it, the pixels
it saw. A layer made from an image (a result, an opened file) keeps that QImage as `source` and builds its pixel
array only when something needs it, so a plain single-image document costs what it cost before layers.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .brush import MAX_SIZE, MIN_SIZE, apply_alpha, segment_alpha

Rect = tuple[int, int, int, int]
BACKGROUND = (255, 255, 255)  # the canvas under every layer

_ids = itertools.count(1)


def new_id() -> int:
    return next(_ids)


class Layer:
    """One raster layer. `source` (a QImage) stands for opaque pixels until `pixels` is first asked for."""

    __slots__ = ("_pixels", "control", "name", "opacity", "source", "uid", "visible")

    def __init__(self, name: str, pixels: np.ndarray | None = None, *, visible: bool = True, opacity: float = 1.0,
                 source: Any = None, uid: int | None = None, control: Any = None) -> None:  # fmt: skip
        if pixels is None and source is None:
            raise ValueError("a layer needs pixels or a source image")
        self.uid = new_id() if uid is None else uid
        self.name = name
        self.visible = bool(visible)
        self.opacity = float(min(1.0, max(0.0, opacity)))
        self.source = source
        self._pixels = pixels
        self.control = control  # a studio.session.controls.ControlProps: a control layer (never in the picture)

    def with_(self, **changes: Any) -> Layer:
        """A copy with some metadata changed (same uid, same pixel array)."""
        kw = {"name": self.name, "visible": self.visible, "opacity": self.opacity, "source": self.source,
              "uid": self.uid, "control": self.control}  # fmt: skip
        kw.update(changes)
        # the source dropped before the pixels were built: build them (here, so both layers share the array)
        pixels = self.pixels if self._pixels is None and kw["source"] is None else self._pixels
        return Layer(kw.pop("name"), pixels, **kw)

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            from studio.qimage import qimage_to_array

            rgb = qimage_to_array(self.source)
            self._pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        return self._pixels

    @property
    def built(self) -> np.ndarray | None:
        """The pixel array if it exists yet (a source layer builds it when first painted or asked for)."""
        return self._pixels

    def pixel_key(self) -> tuple:
        """Which pixels the layer holds (its array, or its source image until the array is built)."""
        return ("a", id(self._pixels)) if self._pixels is not None else ("i", self.source.cacheKey())

    @property
    def opaque_source(self) -> bool:
        """The layer is exactly its source image, opaque everywhere."""
        return self.source is not None

    def size(self) -> tuple[int, int]:
        if self._pixels is not None:
            return self._pixels.shape[1], self._pixels.shape[0]
        return self.source.width(), self.source.height()

    def parts(self) -> list[tuple[Any, int]]:
        """(identity, bytes) of the memory it holds, for the history's budget (shared arrays counted once)."""
        out: list[tuple[Any, int]] = []
        if self._pixels is not None:
            out.append((("a", id(self._pixels)), self._pixels.nbytes))
        if self.source is not None:
            out.append((("i", self.source.cacheKey()), self.source.sizeInBytes()))
        return out

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, uid={self.uid}, visible={self.visible}, opacity={self.opacity:.2f})"


def blank(name: str, width: int, height: int) -> Layer:
    return Layer(name, np.zeros((height, width, 4), np.uint8))


def _div255(v: np.ndarray) -> np.ndarray:
    """round(v / 255) in place for uint16 v <= 255 * 255, exactly (v / 255 is never a half: 255 is odd)."""
    v += 128
    v += v >> 8
    v >>= 8
    return v


def effective_alpha(alpha: np.ndarray, opacity: float) -> np.ndarray:
    """round(alpha * opacity) as uint16 (0..255), opacity taken in 255ths."""
    op = int(round(min(1.0, max(0.0, opacity)) * 255))
    a = alpha.astype(np.uint16)
    if op == 255:
        return a
    a *= op
    return _div255(a)


def over(out: np.ndarray, rgba: np.ndarray, opacity: float) -> None:
    """Composite a straight-alpha RGBA window over the opaque RGB window `out`, in place (the module's formula).
    16-bit integer arithmetic: a stroke's rectangle over a few layers stays well under a frame."""
    a = effective_alpha(rgba[..., 3], opacity)
    if not a.any():
        return
    if a.min() == 255:
        out[...] = rgba[..., :3]
        return
    a3 = a[..., None]
    v = rgba[..., :3].astype(np.uint16)
    v *= a3
    t = out.astype(np.uint16)
    t *= 255 - a3
    v += t  # <= 255 * 255
    out[...] = _div255(v)


def _bbox(alpha: np.ndarray) -> Rect | None:
    rows = np.flatnonzero(alpha.any(axis=1))
    if not rows.size:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(alpha[y0:y1].any(axis=0))
    return int(cols[0]), y0, int(cols[-1]) + 1 - int(cols[0]), y1 - y0


def composite(layers: list[Layer] | tuple[Layer, ...], size: tuple[int, int], rect: Rect | None = None,
              base: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The flattened RGB (HxWx3 uint8) of `layers` (bottom to top) inside rect (the whole canvas when None), over
    `base` (that window of an already flattened RGB, e.g. the layers below) or the background."""
    w, h = size
    x, y, rw, rh = rect if rect is not None else (0, 0, w, h)
    if base is not None:
        out = np.array(base[y : y + rh, x : x + rw], dtype=np.uint8, copy=True)
    else:
        out = np.empty((rh, rw, 3), np.uint8)
        out[...] = BACKGROUND
    visible = [la for la in layers if la.visible and la.opacity > 0 and la.control is None]  # control: not picture
    # Start at the topmost opaque image layer: nothing below it shows.
    for i in range(len(visible) - 1, -1, -1):
        if visible[i].opaque_source and visible[i].opacity >= 1.0:
            out[...] = visible[i].pixels[y : y + rh, x : x + rw, :3]
            visible = visible[i + 1 :]
            break
    for la in visible:
        px = la.pixels[y : y + rh, x : x + rw]
        if rect is None:  # a whole flatten: only the layer's painted part (a paint layer is mostly empty)
            box = _bbox(px[..., 3])
            if box is None:
                continue
            bx, by, bw, bh = box
            over(out[by : by + bh, bx : bx + bw], px[by : by + bh, bx : bx + bw], la.opacity)
        else:
            over(out, px, la.opacity)
    return out


# -- the colour brush ------------------------------------------------------------------------------------------


def merge_pair(lower: Layer, upper: Layer) -> np.ndarray:
    """The RGBA pixels of `upper` over `lower`, each at its own opacity (a hidden one counts as empty): one layer
    at full opacity that flattens as the two did (up to the rounding of one step)."""
    def alpha(la: Layer) -> np.ndarray:
        if not la.visible:
            return np.zeros(la.pixels.shape[:2], np.uint8)
        return effective_alpha(la.pixels[..., 3], la.opacity).astype(np.uint8)

    base = lower.pixels.copy()
    base[..., 3] = alpha(lower)
    return paint_over(base, alpha(upper), upper.pixels[..., :3])


def paint_over(source: np.ndarray, coverage: np.ndarray, colour) -> np.ndarray:
    """`colour` (an RGB triple, or an HxWx3 window) at alpha `coverage` (HxW uint8) over the straight-alpha RGBA
    `source` window: a new RGBA window."""
    if not source[..., 3].any():  # a transparent window (a new paint layer): the colour at the coverage
        out = np.zeros_like(source)
        out[..., :3] = colour
        out[..., 3] = coverage
        out[coverage == 0] = 0
        return out
    colour = np.asarray(colour, dtype=np.uint32)
    c = coverage.astype(np.uint32)
    sa = source[..., 3].astype(np.uint32)
    # alpha: c + sa * (255 - c) / 255, in 255ths
    below = sa * (255 - c)  # the source's weight, in 255^2 units
    out_a255 = c * 255 + below  # in 255^2 units
    out = np.empty_like(source)
    safe = np.maximum(out_a255, 1)
    for k in range(3):
        num = colour[..., k] * c * 255 + source[..., k].astype(np.uint32) * below
        out[..., k] = (num + safe // 2) // safe
    out[..., 3] = (out_a255 + 127) // 255
    out[out_a255 == 0] = 0
    return out


class ColourStroke:
    """One drag of the colour brush (or the eraser to transparent) over a layer's RGBA pixels, in place.

    As the mask eraser does (studio.session.brush.Stroke), the stroke keeps its coverage (the max of every dab so
    far) and applies it once to the layer as it was before the stroke, so a soft brush does not build up where its
    dabs overlap and the result does not depend on the pointer's speed. `source` is that starting copy; the
    document keeps it for the stroke's undo patch."""

    def __init__(self, pixels: np.ndarray, colour: tuple[int, int, int], size: float, hardness: float,
                 erase: bool = False) -> None:  # fmt: skip
        self.pixels = pixels
        self.colour = tuple(int(min(255, max(0, c))) for c in colour[:3])
        self.size = float(min(MAX_SIZE, max(MIN_SIZE, size)))
        self.hardness = float(min(1.0, max(0.0, hardness)))
        self.erase = erase
        self.last: tuple[float, float] | None = None
        self.source = pixels.copy()
        self.coverage = np.zeros(pixels.shape[:2], np.uint8)

    def to(self, point) -> Rect | None:
        p = (float(point[0]), float(point[1]))
        p0 = self.last if self.last is not None else p
        self.last = p
        hit = segment_alpha(self.pixels.shape[:2], p0, p, self.size, self.hardness, include_start=p0 == p)
        if hit is None:
            return None
        (x, y, w, h), a8 = hit
        cov = self.coverage[y : y + h, x : x + w]
        # Only where this segment raised the coverage do pixels change: for a move of a few px that is the leading
        # edge of the brush, a strip of its bounding box, so the layer, the flatten and the screen redo only that.
        box = _bbox(a8 > cov)
        if box is None:
            return None
        bx, by, w, h = box
        x, y, a8, cov = x + bx, y + by, a8[by : by + h, bx : bx + w], cov[by : by + h, bx : bx + w]
        np.maximum(cov, a8, out=cov)
        src = self.source[y : y + h, x : x + w]
        dst = self.pixels[y : y + h, x : x + w]
        if self.erase:
            dst[..., :3] = src[..., :3]
            apply_alpha(dst[..., 3], cov, True, src[..., 3].copy())
        else:
            dst[...] = paint_over(src, cov, self.colour)
        return (x, y, w, h)


# -- the canvas changes size: every layer follows ------------------------------------------------------------


def grown(layer: Layer, left: int, top: int, width: int, height: int) -> Layer:
    """The layer on a larger canvas (`width` x `height`), its pixels at (left, top), transparent around them (Krita's
    Resize Canvas). A new layer (new uid and array); name, visibility and opacity kept."""
    px = np.zeros((height, width, 4), np.uint8)
    w, h = layer.size()
    px[top : top + h, left : left + w] = layer.pixels
    return Layer(layer.name, px, visible=layer.visible, opacity=layer.opacity)


def scaled(layer: Layer, width: int, height: int) -> Layer:
    """The layer resampled to `width` x `height` with Lanczos (Krita's Scale Image). An opaque image layer stays an
    opaque image; a paint layer is resampled with premultiplied alpha (Pillow does it for RGBA), so no dark fringe
    appears where colour meets transparency."""
    from PIL import Image

    from studio.qimage import array_to_qimage

    if layer.opaque_source:
        rgb = np.asarray(Image.fromarray(layer.pixels[..., :3]).resize((width, height), Image.Resampling.LANCZOS))
        return Layer(layer.name, source=array_to_qimage(np.ascontiguousarray(rgb)), visible=layer.visible,
                     opacity=layer.opacity)  # fmt: skip
    rgba = np.asarray(Image.fromarray(layer.pixels, "RGBA").resize((width, height), Image.Resampling.LANCZOS))
    return Layer(layer.name, np.array(rgba, dtype=np.uint8), visible=layer.visible, opacity=layer.opacity)


def scaled_mask(mask: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    if mask is None:
        return None
    from PIL import Image

    return np.array(Image.fromarray(mask, "L").resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
