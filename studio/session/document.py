"""The document: the image being worked on and its mask. The canvas shows it; it does not own it.

The mask is an HxW uint8 array the size of the image (255 = repaint, as the engine takes it),
or None. A new image of another size drops the mask; one of the same size keeps it, so a mask
painted once is reused across runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio.qimage import array_to_qimage, qimage_to_array
from studio.qtcompat import emit


class Document(QObject):
    image_changed = Signal(QImage)
    mask_changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.path: Path | None = None  # where the image is on disk, if it is
        self.caption = ""
        self._mask: np.ndarray | None = None

    # -- image --------------------------------------------------------------------------------

    def set_image(self, image: QImage | None, path: Path | None = None, caption: str = "") -> None:
        same_size = image is not None and self.image is not None and image.size() == self.image.size()
        self.image = image
        self.path = path
        self.caption = caption
        if self._mask is not None and not same_size:
            self._mask = None
            emit(self.mask_changed)
        emit(self.image_changed, image if image is not None else QImage())

    def has_image(self) -> bool:
        return self.image is not None and not self.image.isNull()

    def size(self) -> tuple[int, int]:
        """(width, height), (0, 0) without an image."""
        return (self.image.width(), self.image.height()) if self.has_image() else (0, 0)

    def image_array(self) -> np.ndarray | None:
        """A copy of the image as HxWx3 uint8 RGB (what a request takes)."""
        if not self.has_image():
            return None
        a = qimage_to_array(self.image.convertToFormat(QImage.Format.Format_RGB888))
        return a[..., :3].copy()

    # -- mask ---------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    def set_mask(self, mask: np.ndarray | None) -> None:
        """Replace the mask (copied). Raises ValueError when it is not HxW uint8 of the image's size."""
        if mask is not None:
            mask = np.asarray(mask)
            w, h = self.size()
            if mask.dtype != np.uint8 or mask.shape != (h, w):
                raise ValueError(f"the mask must be {w}x{h} uint8, got {mask.shape[::-1]} {mask.dtype}")
            mask = mask.copy()
        self._mask = mask
        emit(self.mask_changed)

    def clear_mask(self) -> None:
        if self._mask is not None:
            self.set_mask(None)

    def mask_image(self) -> QImage | None:
        """The mask as a Grayscale8 QImage (for the canvas overlay), or None."""
        return array_to_qimage(self._mask) if self._mask is not None else None
