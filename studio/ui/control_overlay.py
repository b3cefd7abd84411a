"""The control layers shown on the canvas: each visible one tinted in its own colour, semi-transparent, over the
picture (white lines would vanish on a light picture). Rebuilt whole when the stack changes, and by rectangle while
a stroke paints a control layer, so drawing a scribble stays as smooth as painting a colour layer."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject
from PySide6.QtGui import QColor, QImage, QPainter

from studio.qimage import array_to_qimage
from studio.session.layers import effective_alpha, paint_over

TINTS = ((0, 200, 255), (255, 64, 200), (255, 196, 0), (90, 230, 90))  # control layer 1, 2, 3, 4 (bottom up)
STRENGTH = 0.8  # the overlay's opacity at a layer opacity of 100%
Rect = tuple[int, int, int, int]


def tint(k: int) -> QColor:
    return QColor(*TINTS[k % len(TINTS)])


class ControlOverlay(QObject):
    def __init__(self, document, canvas) -> None:
        super().__init__(canvas)
        self.document = document
        self.canvas = canvas
        self.visible = True
        self._image: QImage | None = None
        # Bound methods, not lambdas: Qt drops the connections when the canvas (and this, its child) is deleted.
        # Every whole-state change (a new image, an undo) also says layers_changed; strokes say pixels_changed.
        document.layers_changed.connect(self.rebuild)
        document.pixels_changed.connect(self._repaint)
        self.rebuild()

    def set_visible(self, on: bool) -> None:
        self.visible = bool(on)
        self.rebuild()

    def _controls(self) -> list:
        return [la for la in self.document.layers if la.control is not None]

    def _render(self, rect: Rect) -> np.ndarray:
        x, y, w, h = rect
        out = np.zeros((h, w, 4), np.uint8)
        for k, la in enumerate(self._controls()):  # tinted by position, as the layers panel's swatches are
            if not la.visible:
                continue
            a = effective_alpha(la.pixels[y : y + h, x : x + w, 3], la.opacity * STRENGTH).astype(np.uint8)
            if a.any():
                out = paint_over(out, a, TINTS[k % len(TINTS)])
        return out

    def rebuild(self) -> None:
        doc = self.document
        if not self.visible or not doc.has_image() or not any(la.visible for la in self._controls()):
            self._image = None
        else:
            w, h = doc.size()
            self._image = array_to_qimage(self._render((0, 0, w, h)))
        self.canvas.set_control_overlay(self._image)

    def _repaint(self, rect: Rect) -> None:
        """A stroke (or its undo) changed a rectangle of a layer: redraw that part of the overlay only."""
        if self._image is None:
            if self.visible and any(la.visible for la in self._controls()):
                self.rebuild()
            return
        window = array_to_qimage(self._render(rect))
        p = QPainter(self._image)
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        p.drawImage(rect[0], rect[1], window)
        p.end()
        self.canvas.set_control_overlay(self._image, rect)

    def image(self) -> QImage | None:
        return self._image
