"""The canvas: shows the current image, fitted and centred, on a neutral backdrop.

Built to grow mask painting: it keeps the image and a same-sized mask (Grayscale8,
255 = repaint) in image coordinates, maps widget <-> image coordinates, and routes mouse
events to a `tool` (None today; a brush/eraser later). The mask is drawn as a tinted,
semi-transparent overlay when present.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QWheelEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from studio.qtcompat import emit


class Canvas(QWidget):
    image_changed = Signal()
    mask_changed = Signal()

    MASK_TINT = QColor(124, 92, 255, 110)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._image = QImage()
        self._mask: QImage | None = None
        self._overlay: QImage | None = None  # the mask tinted for display, rebuilt when it changes
        self._caption = ""
        self._smooth = False
        self._logical: QSize | None = None
        self._zoom = 1.0  # relative to the fitted size
        self._pan = QPointF()  # offset of the image centre from the fitted centre, widget pixels
        self._drag_from: QPointF | None = None
        self.tool = None  # later: an object with press(canvas, pos), move(...), release(...)
        self.setMinimumSize(240, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setAutoFillBackground(False)
        self.setToolTip(
            "The current image. Wheel: zoom, drag: pan, double-click: fit. Drop a PNG here to load its parameters."
        )

    # -- image and mask ----------------------------------------------------------------------

    def image(self) -> QImage:
        return self._image

    def set_image(
        self, image: QImage | None, caption: str = "", smooth: bool = False, logical_size: QSize | None = None
    ) -> None:
        """Show image; smooth=True also smooths enlarging (for small previews), else pixels stay crisp.

        logical_size: lay the image out as if it had this size (a small live preview takes the
        place the final image will take).
        """
        before = self._logical or self._image.size()
        self._image = QImage(image) if image is not None else QImage()
        self._caption = caption
        self._smooth = smooth
        self._logical = logical_size if logical_size is not None and not logical_size.isEmpty() else None
        if (self._logical or self._image.size()) != before:
            self._zoom, self._pan = 1.0, QPointF()  # same size: keep the zoom, to compare images
        if self._mask is not None and self._mask.size() != self._image.size():
            self.clear_mask()
        emit(self.image_changed)
        self.update()

    def has_image(self) -> bool:
        return not self._image.isNull()

    def set_document(self, document) -> None:
        """Show the document's mask as an overlay (painting comes with the brush tools)."""
        self.document = document
        document.mask_changed.connect(lambda _rect=None: self.set_mask(document.mask_image()))

    def mask(self) -> QImage | None:
        return self._mask

    def set_mask(self, mask: QImage | None) -> None:
        self._mask = mask.convertToFormat(QImage.Format.Format_Grayscale8) if mask is not None else None
        self._overlay = None
        emit(self.mask_changed)
        self.update()

    def clear_mask(self) -> None:
        self.set_mask(None)

    # -- geometry --------------------------------------------------------------------------

    def fit_rect(self) -> QRectF:
        """The image fitted and centred (never enlarged past 8x), in widget coordinates."""
        if self._image.isNull():
            return QRectF()
        margin, below = 12, 22 if self._caption else 0  # room for the caption under the image
        size = self._logical or self._image.size()
        w, h = size.width(), size.height()
        avail_w, avail_h = max(1, self.width() - 2 * margin), max(1, self.height() - 2 * margin - below)
        scale = min(avail_w / w, avail_h / h, 8.0)
        dw, dh = w * scale, h * scale
        return QRectF((self.width() - dw) / 2, (self.height() - below - dh) / 2, dw, dh)

    def image_rect(self) -> QRectF:
        """Where the image is drawn: the fitted rectangle, zoomed and panned by the artist."""
        r = self.fit_rect()
        if r.isEmpty() or self._zoom == 1.0 and self._pan.isNull():
            return r
        c = r.center() + self._pan
        w, h = r.width() * self._zoom, r.height() * self._zoom
        return QRectF(c.x() - w / 2, c.y() - h / 2, w, h)

    def zoom(self) -> float:
        return self._zoom

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom relative to the fitted size (1 = fit), keeping the image point under `anchor` still."""
        zoom = max(0.25, min(32.0, zoom))
        r = self.image_rect()
        if r.isEmpty():
            return
        anchor = anchor if anchor is not None else r.center()
        # the image point under the anchor, as a fraction of the image rectangle
        fx, fy = (anchor.x() - r.x()) / r.width(), (anchor.y() - r.y()) / r.height()
        fit = self.fit_rect()
        self._zoom = zoom
        w, h = fit.width() * zoom, fit.height() * zoom
        left, top = anchor.x() - fx * w, anchor.y() - fy * h
        self._pan = QPointF(left + w / 2, top + h / 2) - fit.center()
        self.update()

    def fit(self) -> None:
        self._zoom, self._pan = 1.0, QPointF()
        self.update()

    def to_image(self, pos: QPointF) -> QPointF:
        r = self.image_rect()
        if r.isEmpty():
            return QPointF()
        return QPointF(
            (pos.x() - r.x()) * self._image.width() / r.width(), (pos.y() - r.y()) * self._image.height() / r.height()
        )

    def sizeHint(self) -> QSize:
        return QSize(512, 512)

    # -- painting ----------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#141518"))
        if self._image.isNull():
            p.setPen(QColor("#5c616b"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Your image appears here\n\nCtrl+Enter to generate")
            return
        r = self.image_rect()
        # Smooth when shrinking, crisp pixels when enlarging a small image.
        smooth = self._smooth or r.width() < self._image.width()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        p.setPen(QPen(QColor("#2e3036"), 1))
        p.drawRect(r.adjusted(-1, -1, 0, 0))
        p.drawImage(r, self._image)
        if self._mask is not None:
            if self._overlay is None:
                self._overlay = self._tinted(self._mask)
            p.drawImage(r, self._overlay)
        if self._caption:
            p.setPen(QColor("#8a909a"))
            p.drawText(QRectF(0, r.bottom() + 4, self.width(), 18), Qt.AlignmentFlag.AlignHCenter, self._caption)

    def _tinted(self, mask: QImage) -> QImage:
        overlay = QImage(mask.size(), QImage.Format.Format_ARGB32_Premultiplied)
        overlay.fill(self.MASK_TINT)
        overlay.setAlphaChannel(mask)
        return overlay

    # -- tools (mask painting comes later) ---------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        if self._image.isNull():
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.set_zoom(self._zoom * (1.25**steps), event.position())
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.fit()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self.tool is not None and hasattr(self.tool, "press"):
            self.tool.press(self, self.to_image(event.position()))
        elif event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton) and not self._image.isNull():
            self._drag_from = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self.tool is not None and hasattr(self.tool, "move"):
            self.tool.move(self, self.to_image(event.position()))
        elif self._drag_from is not None:
            self._pan += event.position() - self._drag_from
            self._drag_from = event.position()
            self.update()
        else:
            super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self.tool is not None and hasattr(self.tool, "release"):
            self.tool.release(self, self.to_image(event.position()))
        elif self._drag_from is not None:
            self._drag_from = None
            self.unsetCursor()
        else:
            super().mouseReleaseEvent(event)
