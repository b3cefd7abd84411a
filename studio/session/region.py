"""Refine a region in place: the selection cropped for a run, the result pasted back at its place (numpy, PIL; no Qt).

A1111's "only masked" idea for a rectangle: a small selection is rendered at a working size near the model's native
side (more pixels, more detail), then scaled back to the selection's size and blended into the document through a
feathered edge that lies inside the selection. Pixels outside the selection are the document's, exactly: the blend
only ever writes inside the box. The blend is the layer stack's integer formula (studio.session.layers.over):
`out = round((result * a + document * (255 - a)) / 255)` with `a` the feather alpha, 0..255.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Rect = tuple[int, int, int, int]  # x, y, w, h in image pixels
DEFAULT_FEATHER = 12  # px inside the selection's edge
MAX_FEATHER = 256
# A request's size must be a multiple of the model's size multiple: 64 for SD 1.x/2.x/XL (8 x 2**3), less for the
# built-in model. A working size in 64s is always accepted.
MULTIPLE = 64


def working_size(width: int, height: int, native: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The size a selection of width x height renders at: scaled up so its longer side is the model's native side
    (a selection already that large keeps its size), each side rounded up to the multiple: never rendered smaller
    than it is. native <= 0 (unknown): 512."""
    native = native if native > 0 else 512
    scale = max(1.0, native / max(1, width, height))

    def up(side: int) -> int:
        return max(multiple, -(-round(side * scale) // multiple) * multiple)

    return up(width), up(height)


def _checked_box(shape: tuple[int, ...], box: Rect) -> Rect:
    x, y, w, h = (int(v) for v in box)
    ih, iw = shape[:2]
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > iw or y + h > ih:
        raise ValueError(f"the region {(x, y, w, h)} is not inside the {iw}x{ih} image")
    return x, y, w, h


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8), "RGB")
    return np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def crop_for_run(image: np.ndarray, box: Rect, native: int, multiple: int = MULTIPLE) -> np.ndarray:
    """The selection's pixels of `image` (HxWx3 uint8) at its working size (Lanczos): what an img2img run takes."""
    x, y, w, h = _checked_box(image.shape, box)
    return _resize(image[y : y + h, x : x + w], *working_size(w, h, native, multiple))


def feather_alpha(width: int, height: int, feather: int) -> np.ndarray:
    """HxW uint8 blend weights for a width x height box: 255 in the middle, falling linearly over `feather` px to
    the edge (the outermost ring is the lowest, never 0 unless the ramp is longer than the box allows, so the
    edge still takes a little of the result), symmetric, and never decreasing from an edge inwards. 0: all 255."""
    feather = max(0, min(int(feather), MAX_FEATHER))
    if feather == 0:
        return np.full((height, width), 255, np.uint8)

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        d = np.minimum(i, n - 1 - i) + 0.5  # distance of each pixel centre from the nearer edge
        return np.clip(d / feather, 0.0, 1.0)

    a = np.minimum.outer(ramp(height), ramp(width))
    return np.rint(a * 255.0).astype(np.uint8)


def paste_back(document: np.ndarray, result: np.ndarray, box: Rect, feather: int) -> np.ndarray:
    """A new image: `document` (HxWx3 uint8) with `result` (any size: scaled to the box, Lanczos) blended in at the
    box through a `feather` px edge. Every pixel outside the box is the document's, exactly."""
    x, y, w, h = _checked_box(document.shape, box)
    patch = _resize(np.asarray(result), w, h).astype(np.uint16)
    a = feather_alpha(w, h, feather).astype(np.uint16)[..., None]
    out = np.array(document[..., :3], dtype=np.uint8, copy=True)
    under = out[y : y + h, x : x + w].astype(np.uint16)
    v = patch * a + under * (255 - a)  # <= 255 * 255: fits 16 bits
    out[y : y + h, x : x + w] = ((v + 128 + ((v + 128) >> 8)) >> 8).astype(np.uint8)  # round(v / 255), exactly
    return out
