"""The one place where numpy arrays and QImages meet. Every conversion copies.

Arrays are uint8: HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA). QImage never shares an
array's buffer here, so neither side can change the other or outlive its memory.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage

_FORMATS = {1: QImage.Format.Format_Grayscale8, 3: QImage.Format.Format_RGB888, 4: QImage.Format.Format_RGBA8888}


def array_to_qimage(a: np.ndarray) -> QImage:
    """HxW, HxWx3 or HxWx4 uint8 -> a QImage that owns its own copy of the pixels."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array, got {a.dtype}")
    if a.ndim == 2:
        channels = 1
    elif a.ndim == 3 and a.shape[2] in (1, 3, 4):
        channels = a.shape[2]
        if channels == 1:
            a = a[:, :, 0]
    else:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    img = QImage(a.data, w, h, a.strides[0], _FORMATS[channels])
    return img.copy()  # detach from the numpy buffer


def qimage_to_array(img: QImage, alpha: bool = False) -> np.ndarray:
    """A QImage -> HxWx3 (or HxWx4 with alpha=True) uint8 array, a fresh copy."""
    if img.isNull():
        raise ValueError("the image is empty")
    fmt = QImage.Format.Format_RGBA8888 if alpha else QImage.Format.Format_RGB888
    img = img.convertToFormat(fmt)
    w, h, channels = img.width(), img.height(), 4 if alpha else 3
    bpl = img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return buf[:, : w * channels].reshape(h, w, channels).copy()


def qimage_to_gray(img: QImage) -> np.ndarray:
    """A QImage -> HxW uint8 array (for masks), a fresh copy."""
    img = img.convertToFormat(QImage.Format.Format_Grayscale8)
    w, h = img.width(), img.height()
    bpl = img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return buf[:, :w].copy()
