"""Reading an image file the artist gives (an input, a mask) into uint8 arrays, whatever its mode.

Pillow's own `convert("RGB")` clips a 16-bit grey image ("I;16", "I") to 255, so a 16-bit PNG would come in pure
white: here 16-bit values are scaled by 1/257 instead. A file past the size anything accepts is refused from its
header, before its pixels are decoded (Pillow's decompression-bomb error or warning becomes that refusal). No Qt and
no torch here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .errors import RequestError, first_line
from .requests import MAX_UPSCALE_PIXELS, MAX_UPSCALE_SIDE

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def too_large(what: str, path: str | os.PathLike, size: str) -> RequestError:
    """The one refusal of an image past the largest size the studio takes (8192 px a side)."""
    return RequestError(f"The {what} {Path(path).name} is too large ({size}): at most {MAX_UPSCALE_SIDE} px a side")


def open_image(path: str | os.PathLike, what: str = "image"):
    """The loaded PIL image at `path`; RequestError (one line) when it is missing, unreadable or too large."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise RequestError(f"{what.capitalize()} not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
            w, h = im.size
            if max(w, h) > MAX_UPSCALE_SIDE or w * h > MAX_UPSCALE_PIXELS:
                im.close()
                raise too_large(what, p, f"{w}x{h}")
            im.load()
            return im
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_large(what, p, first_line(e).split(")")[0].replace("Image size (", "")) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RequestError(f"Cannot read {what} {p}: {first_line(e)}") from e


def _grey8(im) -> np.ndarray:
    """A 16-bit (or 32-bit integer) grey image -> HxW uint8, scaled by 1/257 (65535 -> 255), not clipped."""
    a = np.asarray(im, dtype=np.int64)
    return ((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8)


def _without_palette(im):
    """A palette image with transparency as RGBA (Pillow warns when it is converted any other way)."""
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    return im


def rgb_array(im) -> np.ndarray:
    """Any PIL image -> HxWx3 uint8 RGB (16-bit grey scaled, CMYK and palettes converted, alpha dropped)."""
    if im.mode in _SIXTEEN_BIT:
        return np.repeat(_grey8(im)[:, :, None], 3, axis=2)
    return np.asarray(_without_palette(im).convert("RGB")).copy()


def mask_array(im) -> np.ndarray:
    """A mask image of any mode -> HxW uint8, 255 = repaint: its luminance, times its alpha where it has one
    (a transparent pixel is not painted)."""
    if im.mode in _SIXTEEN_BIT:
        return _grey8(im)
    im = _without_palette(im)
    if im.mode not in ("RGBA", "LA", "PA"):
        return np.asarray(im.convert("L")).copy()
    rgba = im.convert("RGBA")
    lum = np.asarray(rgba.convert("L"), np.uint32)
    alpha = np.asarray(rgba.getchannel("A"), np.uint32)
    return ((lum * alpha + 127) // 255).astype(np.uint8)


def read_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """The image file at `path` as HxWx3 uint8 RGB; what="mask": HxW uint8. RequestError (one line) otherwise."""
    im = open_image(path, what)
    try:
        return mask_array(im) if what == "mask" else rgb_array(im)
    except (OSError, ValueError) as e:
        raise RequestError(f"Cannot read {what} {path}: {first_line(e)}") from e
    finally:
        im.close()
