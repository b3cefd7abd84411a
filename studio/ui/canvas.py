"""The canvas: the current image, zoomable and pannable, and mask painting on the session's document.

Coordinates: "image px" are the pixels of the image being laid out (the shown image, or the
logical size a small live preview stands in for); the document's mask has that size when it can
be shown and painted. Pixel (i, j) covers [i, i+1) x [j, j+1) (see studio.session.brush).

Tools (`set_tool`): "pan" (left-drag pans), "brush" and "eraser" (left-drag paints the document's
mask: begin_stroke / a segment per mouse move / stroke_updated / end_stroke on release), "rect" and
"lasso" (drag a rectangle / trace a free shape: on release its pixels are masked, one undo entry;
with Alt held, or in subtract mode, they are unmasked; picking the brush or the eraser sets that
mode, so E then R erases a rectangle). In every
tool the middle button and Space + left-drag pan, the wheel zooms about the cursor and a double
click (left in pan mode, middle in any) fits. `[` and `]` shrink and grow the brush while the
canvas has focus or the pointer is over it (unless a text box has the keyboard).

The tint's colour and opacity are the artist's (`set_mask_tint`). After a result lands, the window
calls `hide_mask_until_edit`: the tint is hidden (the mask is kept for the next inpaint) until the
mask changes again or the artist turns "Show mask" back on.

The mask overlay is a persistent ARGB image the size of the mask: `mask_changed(rect)` recomputes
only that rectangle of it and repaints only the widget area over it, so painting a 2048x2048 mask
stays smooth (benchmarks/bench_canvas.py); `mask_changed(None)` rebuilds it all.

Colour tools paint the document's active layer: "paint" (the brush in `paint_colour`), "paint_eraser" (to
transparent) and "picker" (a click takes the flattened canvas's colour; Alt + click does it with the paint tools).
The document redraws only a stroke's dirty rectangle of its flattened image and says which (`pixels_changed`); the
canvas copies that rectangle into the image it shows and repaints the widget area over it.

Staged results (`set_staging`, studio.session.staging): the candidate shown is drawn over the document's image, not
into it; "original" shows the document instead; a split view draws the candidate right of a divider the artist drags.
A candidate of another size (an upscale) lays the canvas out at its size while it shows. A live preview (a run going)
has the canvas to itself.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPolygonF,
    QWheelEvent,
)
from PySide6.QtWidgets import QApplication, QSizePolicy, QWidget

from studio.qimage import array_to_qimage, qimage_to_gray
from studio.qtcompat import emit
from studio.session.brush import MAX_SIZE, MIN_SIZE, Stroke
from studio.session.masktools import polygon_region, rect_region

Rect = tuple[int, int, int, int]  # x, y, w, h in image px

TOOLS = ("pan", "brush", "eraser", "select", "rect", "lasso", "paint", "paint_eraser", "picker")
COLOUR_TOOLS = ("paint", "paint_eraser")
SHAPES = ("rect", "lasso")
TOOLTIPS = {
    "pan": "The current image. Wheel: zoom, drag: pan, double-click: fit. Drop a PNG here to load its parameters.",
    "brush": "Brush: drag to paint the mask (the area to repaint). [ and ]: smaller / larger brush. "
    "Middle-drag or Space + drag: pan, wheel: zoom, middle double-click: fit.",
    "eraser": "Eraser: drag to remove the mask. [ and ]: smaller / larger brush. "
    "Middle-drag or Space + drag: pan, wheel: zoom, middle double-click: fit.",
    "rect": "Rectangle fill: drag a rectangle to mask it; Alt + drag (or subtract mode) unmasks it. "
    "Middle-drag or Space + drag: pan, wheel: zoom.",
    "lasso": "Lasso fill: trace a free shape to mask it; Alt + drag (or subtract mode) unmasks it. "
    "Middle-drag or Space + drag: pan, wheel: zoom.",
    "select": "Select: drag a rectangle (a region to refine in Image or Upscale mode); a click or Esc clears it. "
    "Middle-drag: pan, wheel: zoom.",
    "paint": "Paint: drag to paint the active layer in the paint colour; Alt + click picks a colour from the canvas. "
    "[ and ]: smaller / larger brush. Middle-drag or Space + drag: pan, wheel: zoom.",
    "paint_eraser": "Erase paint: drag to erase the active layer to transparent. [ and ]: smaller / larger brush. "
    "Middle-drag or Space + drag: pan, wheel: zoom.",
    "picker": "Colour picker: click to take the canvas's colour as the paint colour. Middle-drag: pan, wheel: zoom.",
}
_TEXT_INPUTS = ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox")


def _tint_lut(tint: QColor) -> np.ndarray:
    """uint32 premultiplied ARGB for every mask value: the tint at alpha tint.alpha * m / 255."""
    m = np.arange(256, dtype=np.float64)
    a = np.rint(m * tint.alpha() / 255.0)
    r, g, b = (np.rint(c * a / 255.0) for c in (tint.red(), tint.green(), tint.blue()))
    return (a.astype(np.uint32) << 24) | (r.astype(np.uint32) << 16) | (g.astype(np.uint32) << 8) | b.astype(np.uint32)


class Canvas(QWidget):
    image_changed = Signal()
    mask_changed = Signal(object)  # the overlay changed: its Rect (image px), or None for all of it
    tool_changed = Signal(str)
    brush_changed = Signal()  # size or hardness
    mask_visible_changed = Signal(bool)
    subtract_changed = Signal(bool)  # the rectangle and lasso unmask (True) or mask
    mask_tint_changed = Signal(QColor)
    paint_colour_changed = Signal(QColor)

    MASK_TINT = QColor(124, 92, 255, 110)
    BACKDROP = QColor("#141518")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._image = QImage()
        self._caption = ""
        self._smooth = False
        self._logical: QSize | None = None
        self._zoom = 1.0  # relative to the fitted size
        self._pan = QPointF()  # offset of the image centre from the fitted centre, widget pixels
        self._drag_from: QPointF | None = None  # panning: the last pointer position
        self._drag_button = Qt.MouseButton.NoButton
        self.document = None  # the session's Document, once set_document is called
        self._own_mask: np.ndarray | None = None  # set_mask without a document
        self._overlay: QImage | None = None  # the mask tinted, kept and updated by rectangle
        self._tint = QColor(self.MASK_TINT)
        self._lut = _tint_lut(self._tint)
        self._mask_visible = True
        self._auto_hidden = False  # hidden by hide_mask_until_edit, not by the artist
        self._subtract = False
        self._shape: list[tuple[float, float]] | None = None  # a rectangle's corners or a lasso's points, layout px
        self._shape_area: QRect | None = None  # where the shape being dragged was last drawn (widget px)
        self._tool = "pan"
        self._brush_size = 64
        self._hardness = 1.0
        self._stroke: Stroke | None = None
        self._hover: QPointF | None = None  # the pointer, for the brush outline
        self._space = False  # Space held: left-drag pans
        self._filtering = False  # the application key filter, while the pointer is over the canvas
        self._crop: Rect | None = None
        self._select_from: tuple[int, int] | None = None  # a selection being dragged: its first corner
        self._select_rect: Rect | None = None
        self._live: tuple[QImage, Rect] | None = None
        self._controls: QImage | None = None  # the control layers' overlay (studio.ui.control_overlay)
        self._paint_colour = QColor(0, 0, 0)
        self._colour_stroke = False  # a colour stroke is painting the document's active layer
        self._shows_doc = False  # the image shown is the document's (its strokes are copied into it)
        self._staging = None  # the session's Staging, once set_staging is called
        self._split_drag = False  # the split view's divider is being dragged
        self.setMinimumSize(240, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setAutoFillBackground(False)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # paintEvent fills every pixel it is given
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.setToolTip(TOOLTIPS["pan"])

    # -- image ---------------------------------------------------------------------------------

    def image(self) -> QImage:
        return self._image

    def set_image(
        self, image: QImage | None, caption: str = "", smooth: bool = False, logical_size: QSize | None = None
    ) -> None:
        """Show image; smooth=True also smooths enlarging (for small previews), else pixels stay crisp.

        logical_size: lay the image out as if it had this size (a small live preview takes the
        place the final image will take).
        """
        before = self._layout_size()
        self._image = QImage(image) if image is not None else QImage()
        self._caption = caption
        self._smooth = smooth
        self._logical = logical_size if logical_size is not None and not logical_size.isEmpty() else None
        self._shows_doc = self._is_document_image()
        if self._layout_size() != before:
            self._zoom, self._pan = 1.0, QPointF()  # same size: keep the zoom, to compare images
            if self._painting():
                self._end_stroke()
            self._drop_shape()
        if self.document is None and self._own_mask is not None and not self._mask_fits():
            self.set_mask(None)
        emit(self.image_changed)
        self.update()

    def has_image(self) -> bool:
        return not self._image.isNull()

    def _is_document_image(self) -> bool:
        doc_image = self.document.image if self.document is not None else None
        return (self._logical is None and doc_image is not None and not self._image.isNull()
                and self._image.cacheKey() == doc_image.cacheKey())  # fmt: skip

    def _layout_size(self) -> QSize:
        staged = self.staged_image()
        if staged is not None and not self._staging.show_original and staged.size() != self._image.size():
            return staged.size()
        return self._logical or self._image.size()

    # -- staged results -------------------------------------------------------------------------

    def set_staging(self, staging) -> None:
        """Draw the staging area's candidate over the document (the window passes the session's Staging)."""
        self._staging = staging
        staging.changed.connect(self.update)

    def staged_image(self) -> QImage | None:
        """The candidate drawn over the canvas now, or None (nothing staged, or a live preview has the canvas)."""
        st = self._staging
        if st is None or self._logical is not None or not (self._shows_doc or self._image.isNull()):
            return None
        c = st.current()
        return c.image if c is not None else None

    def _split_x(self) -> float | None:
        """The split view's divider (widget x), when one is drawn."""
        staged = self.staged_image()
        if staged is None or self._staging.split is None or self._staging.show_original or \
                staged.size() != self._image.size():  # fmt: skip
            return None
        r = self.image_rect()
        return r.left() + self._staging.split * r.width()

    def _draw_staged(self, p: QPainter, r: QRectF, staged: QImage, exposed: QRect) -> None:
        st = self._staging
        split = self._split_x()
        if st.show_original:
            tag = f"original  ·  {st.position()} staged"
        elif split is not None:
            p.save()
            p.setClipRect(QRectF(split, r.top(), r.right() - split + 1, r.height()))
            self._draw_part(p, r, staged, exposed)
            p.restore()
            p.setPen(QPen(QColor(0, 0, 0, 200), 3))
            p.drawLine(QPointF(split, r.top()), QPointF(split, r.bottom()))
            p.setPen(QPen(QColor(255, 255, 255, 240), 1))
            p.drawLine(QPointF(split, r.top()), QPointF(split, r.bottom()))
            handle = QRectF(split - 6, r.center().y() - 16, 12, 32)
            p.fillRect(handle, QColor(255, 255, 255, 230))
            tag = f"original | candidate {st.position()}"
        else:
            self._draw_part(p, r, staged, exposed)
            tag = f"candidate {st.position()}"
        font = QFont(p.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        box = QRectF(max(0.0, r.left()) + 6, max(0.0, r.top()) + 6, fm.horizontalAdvance(tag) + 12, fm.height() + 4)
        p.fillRect(box, QColor(20, 21, 24, 210))
        p.setPen(QColor("#e4e6eb"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, tag)

    # -- the document and its mask ------------------------------------------------------------

    def set_document(self, document) -> None:
        """Show the document's mask and paint into it (the window passes the session's document)."""
        if self.document is document:
            return
        if self._painting():
            self._end_stroke()
        if self.document is not None:
            self.document.mask_changed.disconnect(self._on_mask_changed)
            self.document.pixels_changed.disconnect(self._on_pixels_changed)
        self.document = document
        self._own_mask = None
        if document is not None:
            document.mask_changed.connect(self._on_mask_changed)
            document.pixels_changed.connect(self._on_pixels_changed)
            document.selection_changed.connect(lambda _rect: self.update())
        self._shows_doc = self._is_document_image()
        self._on_mask_changed(None)

    def _on_pixels_changed(self, rect: Rect) -> None:
        """A rectangle of the document's flattened image was repainted (a colour stroke): copy it into the image
        shown (detached from the document's once) and repaint only the widget area over it."""
        doc = self.document
        if not self._shows_doc or doc is None or doc.size() != (self._image.width(), self._image.height()):
            return
        window = doc.flat_window(rect)
        if window is None:
            return
        if self._image.format() != QImage.Format.Format_RGB32:  # Qt's native format: a smooth draw of a part of
            self._image = self._image.convertToFormat(QImage.Format.Format_RGB32)  # it converts nothing (RGB888 did)
        img = self._image
        x, y, w, h = rect
        rows = np.frombuffer(img.bits(), np.uint32).reshape(img.height(), img.bytesPerLine() // 4)
        px = window.astype(np.uint32)
        rows[y : y + h, x : x + w] = 0xFF000000 | px[..., 0] << 16 | px[..., 1] << 8 | px[..., 2]
        self._update_image_area(rect)

    def paint_colour(self) -> QColor:
        return QColor(self._paint_colour)

    def set_paint_colour(self, colour: QColor) -> None:
        colour = QColor(colour)
        if colour.isValid() and colour.rgb() != self._paint_colour.rgb():
            self._paint_colour = QColor(colour.red(), colour.green(), colour.blue())
            emit(self.paint_colour_changed, QColor(self._paint_colour))

    def pick_colour(self, pos: QPointF) -> bool:
        """Take the flattened canvas's colour under a widget point as the paint colour."""
        doc = self.document
        image = doc.image if doc is not None and doc.has_image() else self._image
        if image is None or image.isNull():
            return False
        p = self.to_layout(pos)
        x, y = math.floor(p.x()), math.floor(p.y())
        if not (0 <= x < image.width() and 0 <= y < image.height()):
            return False
        self.set_paint_colour(image.pixelColor(x, y))
        return True

    def _mask_array(self) -> np.ndarray | None:
        return self.document.mask if self.document is not None else self._own_mask

    def mask(self) -> QImage | None:
        """The mask as a Grayscale8 QImage (a copy), or None."""
        m = self._mask_array()
        return array_to_qimage(m) if m is not None else None

    def set_mask(self, mask: QImage | None) -> None:
        """Replace the mask (not undoable: the document's own methods are). With a document, its
        mask; without one, a mask the canvas keeps for the image shown."""
        array = qimage_to_gray(mask) if mask is not None else None
        if self.document is not None:
            self.document.set_mask(array)
        else:
            self._own_mask = array
            self._on_mask_changed(None)

    def clear_mask(self) -> None:
        self.set_mask(None)

    def overlay(self) -> QImage | None:
        """The tinted overlay as drawn (premultiplied ARGB, the mask's size), or None without a mask."""
        return self._overlay

    def _mask_fits(self) -> bool:
        """The mask can be shown and painted over what is laid out (the same size)."""
        m = self._mask_array()
        size = self._layout_size()
        return m is not None and not size.isEmpty() and m.shape == (size.height(), size.width())

    def _on_mask_changed(self, rect: Rect | None) -> None:
        if self._auto_hidden:  # the mask was edited after a result: show it again
            self.set_mask_visible(True)
        mask = self._mask_array()
        if mask is None:
            self._overlay = None
            self.update()
        elif rect is None or self._overlay is None or self._overlay.size() != QSize(mask.shape[1], mask.shape[0]):
            first = self._overlay is None and rect is not None  # a stroke's first dab made the mask
            box = self._rebuild_overlay(mask)
            if not first:
                self.update()
            elif box is not None and self._mask_visible:  # nothing was drawn before: only what is masked now
                self._update_image_area(box)
            rect = None
        else:
            x, y, w, h = rect
            view = self._overlay_view()
            view[y : y + h, x : x + w] = self._lut[mask[y : y + h, x : x + w]]
            if self._mask_visible:
                self._update_image_area(rect)
        emit(self.mask_changed, rect)

    def _rebuild_overlay(self, mask: np.ndarray) -> Rect | None:
        """The whole overlay from the mask: transparent, then the tint inside the bounding box of
        what is masked (a new mask's first dab costs a fill, not a pass over every pixel), which
        it returns (None: nothing is masked)."""
        h, w = mask.shape
        if self._overlay is None or self._overlay.size() != QSize(w, h):
            self._overlay = QImage(w, h, QImage.Format.Format_ARGB32_Premultiplied)
        self._overlay.fill(0)  # the LUT's value for 0: transparent
        rows = np.flatnonzero(mask.any(axis=1))
        if not rows.size:
            return None
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        cols = np.flatnonzero(mask[y0:y1].any(axis=0))
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        view = self._overlay_view()
        view[y0:y1, x0:x1] = self._lut[mask[y0:y1, x0:x1]]
        return (x0, y0, x1 - x0, y1 - y0)

    def _overlay_view(self) -> np.ndarray:
        """The overlay's pixels as an HxW uint32 array (writes reach the image)."""
        o = self._overlay
        return np.frombuffer(o.bits(), np.uint32).reshape(o.height(), o.bytesPerLine() // 4)[:, : o.width()]

    def mask_visible(self) -> bool:
        return self._mask_visible

    def set_mask_visible(self, visible: bool) -> None:
        """Show or hide the mask overlay (painting still works while it is hidden)."""
        visible = bool(visible)
        self._auto_hidden = False
        if visible != self._mask_visible:
            self._mask_visible = visible
            self.update()
            emit(self.mask_visible_changed, visible)

    def hide_mask_until_edit(self) -> None:
        """Hide the tint over a result (the mask stays, for the next inpaint) until the mask is edited
        again or the artist shows it; nothing changes when the artist has already hidden it."""
        if self._mask_visible:
            self.set_mask_visible(False)
            self._auto_hidden = True

    def mask_tint(self) -> QColor:
        """The overlay's colour; its alpha is the opacity at a fully masked pixel."""
        return QColor(self._tint)

    def set_mask_tint(self, tint: QColor) -> None:
        """Draw the mask in this colour at this alpha (an invalid colour is ignored)."""
        tint = QColor(tint)
        if not tint.isValid() or tint.rgba() == self._tint.rgba():
            return
        self._tint = tint
        self._lut = _tint_lut(tint)
        mask = self._mask_array()
        if mask is not None and self._overlay is not None:
            self._rebuild_overlay(mask)
            self.update()
        emit(self.mask_tint_changed, QColor(tint))

    # -- what the window draws over the image ---------------------------------------------------

    def crop_rect(self) -> Rect | None:
        return self._crop

    def set_crop_rect(self, rect: Rect | None) -> None:
        """A dashed rectangle labelled "inpaint area" over the image (x, y, w, h in image px), or None."""
        rect = tuple(int(v) for v in rect) if rect is not None else None
        if rect != self._crop:
            self._crop = rect
            self.update()

    def live_overlay(self) -> tuple[QImage, Rect] | None:
        return self._live

    def set_live_overlay(self, image: QImage | None, rect: Rect | None) -> None:
        """Draw image (with its own alpha) scaled smoothly into rect (image px) over the image;
        None clears it. For the live preview of an inpaint."""
        old = self._live[1] if self._live is not None else None
        if image is None or image.isNull() or rect is None:
            self._live = None
        else:
            rect = tuple(int(v) for v in rect)
            self._live = (QImage(image), rect)
        for r in (old, rect if self._live is not None else None):
            if r is not None:
                self._update_image_area(r)

    # -- tools -----------------------------------------------------------------------------------

    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        """Choose the tool: "pan", "brush" or "eraser" (ValueError for anything else)."""
        if tool not in TOOLS:
            raise ValueError(f"unknown canvas tool {tool!r}: expected one of {', '.join(TOOLS)}")
        if tool == self._tool:
            return
        if self._painting():
            self._end_stroke()
        self._drop_shape()
        self._tool = tool
        if tool in ("brush", "eraser"):  # not the colour tools: they leave the mask's subtract mode alone
            self.set_subtract(tool == "eraser")
        self.setToolTip(TOOLTIPS[tool])
        self._refresh_cursor()
        self.update()
        emit(self.tool_changed, tool)

    def brush_size(self) -> int:
        """The brush's diameter in image px (1..1024)."""
        return self._brush_size

    def set_brush_size(self, size: float) -> None:
        size = int(min(MAX_SIZE, max(MIN_SIZE, round(size))))
        if size != self._brush_size:
            old = self._outline_rect()
            self._brush_size = size
            self._update_outline(old)
            emit(self.brush_changed)

    def hardness(self) -> float:
        """1 = a hard edge; lower = a softer falloff towards the edge (0..1)."""
        return self._hardness

    def set_hardness(self, hardness: float) -> None:
        hardness = float(min(1.0, max(0.0, hardness)))
        if hardness != self._hardness:
            self._hardness = hardness
            emit(self.brush_changed)

    def grow_brush(self) -> None:
        """About 10% larger, at least 1 px (the `]` key)."""
        self.set_brush_size(max(self._brush_size + 1, round(self._brush_size * 1.1)))

    def shrink_brush(self) -> None:
        """About 10% smaller, at least 1 px (the `[` key)."""
        self.set_brush_size(min(self._brush_size - 1, round(self._brush_size / 1.1)))

    def _paints(self) -> bool:
        return self._tool in ("brush", "eraser", *COLOUR_TOOLS)

    def _edits_mask(self) -> bool:
        """A tool that edits (the mask, or a layer) with the left button (Space + drag pans instead)."""
        return self._paints() or self._tool in SHAPES or self._tool == "picker"

    def subtract(self) -> bool:
        """The rectangle and the lasso unmask (True) or mask what they enclose."""
        return self._subtract

    def set_subtract(self, on: bool) -> None:
        on = bool(on)
        if on != self._subtract:
            self._subtract = on
            emit(self.subtract_changed, on)

    def can_paint(self) -> bool:
        """A stroke would reach the document: an image is shown and the document's is its size."""
        doc = self.document
        if doc is None or self._image.isNull() or not doc.has_image():
            return False
        w, h = doc.size()
        return self._layout_size() == QSize(w, h)

    # -- geometry --------------------------------------------------------------------------

    def fit_rect(self) -> QRectF:
        """The image fitted and centred (never enlarged past 8x), in widget coordinates."""
        if self._layout_size().isEmpty():
            return QRectF()
        margin, below = 12, 22 if self._caption else 0  # room for the caption under the image
        size = self._layout_size()
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
        """A widget point in the shown image's own pixels."""
        r = self.image_rect()
        if r.isEmpty():
            return QPointF()
        return QPointF(
            (pos.x() - r.x()) * self._image.width() / r.width(), (pos.y() - r.y()) * self._image.height() / r.height()
        )

    def to_layout(self, pos: QPointF) -> QPointF:
        """A widget point in image px of the laid-out size (the mask's pixels)."""
        r, size = self.image_rect(), self._layout_size()
        if r.isEmpty():
            return QPointF()
        return QPointF((pos.x() - r.x()) * size.width() / r.width(), (pos.y() - r.y()) * size.height() / r.height())

    def from_image(self, x: float, y: float) -> QPointF:
        """Image px (of the laid-out size) -> widget coordinates."""
        r, size = self.image_rect(), self._layout_size()
        if r.isEmpty():
            return QPointF()
        return QPointF(r.x() + x * r.width() / size.width(), r.y() + y * r.height() / size.height())

    def widget_rect(self, rect: Rect) -> QRectF:
        """An image-px rectangle (x, y, w, h) in widget coordinates."""
        x, y, w, h = rect
        a, b = self.from_image(x, y), self.from_image(x + w, y + h)
        return QRectF(a, b)

    def _scale(self) -> float:
        """Widget pixels per image px."""
        r, size = self.image_rect(), self._layout_size()
        return r.width() / size.width() if not r.isEmpty() and size.width() else 1.0

    def _update_image_area(self, rect: Rect, margin: int = 2) -> None:
        """Repaint only the widget area over an image-px rectangle."""
        if self._image.isNull():
            return
        area = self.widget_rect(rect).toAlignedRect().adjusted(-margin, -margin, margin, margin) & self.rect()
        if not area.isEmpty():
            self.update(area)

    def sizeHint(self) -> QSize:
        return QSize(512, 512)

    def set_control_overlay(self, image: QImage | None, rect: Rect | None = None) -> None:
        """The control layers drawn over the image (ARGB, the image's size; None: none); rect: only it changed."""
        self._controls = image
        if rect is not None:
            self._update_image_area(rect)
        else:
            self.update()

    def control_overlay(self) -> QImage | None:
        return self._controls

    # -- painting ----------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        exposed = event.rect()
        p.fillRect(exposed, self.BACKDROP)
        staged = self.staged_image()
        if self._image.isNull() and staged is None:
            p.setPen(QColor("#5c616b"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Your image appears here\n\nCtrl+Enter to generate")
            return
        r = self.image_rect()
        # Smooth when shrinking, crisp pixels when enlarging a small image.
        smooth = self._smooth or r.width() < self._image.width()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        p.setPen(QPen(QColor("#2e3036"), 1))
        p.drawRect(r.adjusted(-1, -1, 0, 0))
        own = staged is None or self._staging.show_original or staged.size() == self._image.size()
        if own and not self._image.isNull():  # (a candidate of another size has the canvas's layout)
            self._draw_part(p, r, self._image, exposed)
        if self._overlay is not None and self._mask_visible and self._mask_fits():
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, r.width() < self._overlay.width())
            self._draw_part(p, r, self._overlay, exposed)
        if self._controls is not None and self._controls.size() == self._image.size():
            self._draw_part(p, r, self._controls, exposed)
        if staged is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            self._draw_staged(p, r, staged, exposed)
        if self._live is not None:
            image, rect = self._live
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(self.widget_rect(rect), image)
        if self._shape is not None:
            self._draw_shape(p)
        # Both are in the document image's pixels: not drawn over a preview of another size (an upscale).
        same = self.document is None or self.document.image is None or self.document.image.size() == (
            self._logical or self._image.size())
        if self._crop is not None and same:
            self._draw_crop(p, self.widget_rect(self._crop))
        selection = self.selection_rect() if same else None
        if selection is not None:
            self._draw_crop(p, self.widget_rect(selection), f"selection {selection[2]}×{selection[3]}",
                            QColor(124, 92, 255, 255))  # fmt: skip
        if self._caption:
            p.setPen(QColor("#8a909a"))
            p.drawText(QRectF(0, r.bottom() + 4, self.width(), 18), Qt.AlignmentFlag.AlignHCenter, self._caption)
        outline = self._outline()
        if outline is not None:
            centre, radius = outline
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.setPen(QPen(QColor(0, 0, 0, 230), 2))  # dark under white dashes: visible on any image
            p.drawEllipse(centre, radius, radius)
            dashed = QPen(QColor(255, 255, 255, 240), 1)
            dashed.setDashPattern([3, 3])
            p.setPen(dashed)
            p.drawEllipse(centre, radius, radius)

    @staticmethod
    def _draw_part(p: QPainter, target: QRectF, image: QImage, exposed: QRect) -> None:
        """Draw image into target, but only the source pixels under the exposed area (plus a pixel
        of margin for smoothing), so a small repaint of a large image costs a small area."""
        if QRectF(exposed).contains(target):
            p.drawImage(target, image)
            return
        sx, sy = image.width() / target.width(), image.height() / target.height()
        x0 = max(0, math.floor((exposed.left() - target.left()) * sx) - 1)
        y0 = max(0, math.floor((exposed.top() - target.top()) * sy) - 1)
        x1 = min(image.width(), math.ceil((exposed.right() + 1 - target.left()) * sx) + 1)
        y1 = min(image.height(), math.ceil((exposed.bottom() + 1 - target.top()) * sy) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        dest = QRectF(target.left() + x0 / sx, target.top() + y0 / sy, (x1 - x0) / sx, (y1 - y0) / sy)
        p.drawImage(dest, image, QRectF(x0, y0, x1 - x0, y1 - y0))

    def _draw_crop(self, p: QPainter, rect: QRectF, label: str = "inpaint area", colour: QColor | None = None) -> None:
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(0, 0, 0, 200), 1))
        p.drawRect(rect)
        dashed = QPen(colour or QColor(255, 255, 255, 230), 1)
        dashed.setDashPattern([5, 4])
        p.setPen(dashed)
        p.drawRect(rect)
        font = QFont(p.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        p.setFont(font)
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(label) + 8, fm.height() + 2
        top = rect.top() - h - 1 if rect.top() - h - 1 >= 0 else rect.top() + 1
        box = QRectF(rect.left(), top, w, h)
        p.fillRect(box, QColor(20, 21, 24, 200))
        p.setPen(QColor("#e4e6eb"))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, label)
        p.restore()

    def _shape_polygon(self) -> QPolygonF:
        """The shape being dragged, in widget px: the rectangle as it will fill (snapped to pixels), or the lasso."""
        pts = self._shape or []
        if self._tool == "rect" and len(pts) == 2:
            w, h = self._layout_size().width(), self._layout_size().height()
            region = rect_region((h, w), pts[0], pts[1])
            return QPolygonF(self.widget_rect(region[0])) if region is not None else QPolygonF()
        return QPolygonF([self.from_image(x, y) for x, y in pts])

    def _draw_shape(self, p: QPainter) -> None:
        poly = self._shape_polygon()
        if poly.isEmpty():
            return
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setPen(QPen(QColor(0, 0, 0, 220), 1))  # dark under the dashes: visible on any image
        p.drawPolygon(poly)
        dashed = QPen(QColor("#ff8a80") if self._shape_erases() else QColor(255, 255, 255, 240), 1)
        dashed.setDashPattern([4, 4])
        p.setPen(dashed)
        p.drawPolygon(poly)
        p.restore()

    def _shape_erases(self) -> bool:
        return self._subtract or bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.AltModifier)

    def _update_shape_area(self) -> None:
        poly = self._shape_polygon()
        area = poly.boundingRect().toAlignedRect().adjusted(-3, -3, 3, 3) if not poly.isEmpty() else None
        for r in (self._shape_area, area):
            if r is not None:
                self.update(r)
        self._shape_area = area

    def _drop_shape(self) -> None:
        if self._shape is not None:
            self._shape = None
            self._update_shape_area()

    def _begin_shape(self, pos: QPointF) -> None:
        if not self.can_paint():
            return
        p = self.to_layout(pos)
        self._shape = [(p.x(), p.y())] * (2 if self._tool == "rect" else 1)
        self._update_shape_area()

    def _shape_to(self, pos: QPointF) -> None:
        assert self._shape is not None
        p = self.to_layout(pos)
        if self._tool == "rect":
            self._shape[1] = (p.x(), p.y())
        elif (p.x(), p.y()) != self._shape[-1]:
            self._shape.append((p.x(), p.y()))
        self._update_shape_area()

    def _end_shape(self, pos: QPointF, alt: bool) -> None:
        """Fill what the shape encloses (one undo entry), or with Alt / subtract mode unmask it."""
        self._shape_to(pos)
        pts, erase = self._shape or [], self._subtract or alt
        self._drop_shape()
        doc = self.document
        if doc is None or not self.can_paint():
            return
        w, h = doc.size()
        rect = self._tool == "rect"
        region = rect_region((h, w), pts[0], pts[1]) if rect else polygon_region((h, w), pts)
        what = "Rectangle" if rect else "Lasso"
        doc.fill_region(region, erase, f"{what} {'erase' if erase else 'fill'}")

    # -- the brush outline -------------------------------------------------------------------------

    def _outline(self) -> tuple[QPointF, float] | None:
        """Centre and radius (widget px) of the brush outline, when it shows."""
        if (
            self._hover is None
            or not self._paints()
            or self._image.isNull()
            or self._space
            or self._drag_from is not None
            or not self.image_rect().adjusted(-2, -2, 2, 2).contains(self._hover)
        ):
            return None
        return self._hover, max(1.5, self._brush_size * self._scale() / 2)

    def _outline_rect(self) -> QRect | None:
        o = self._outline()
        if o is None:
            return None
        c, radius = o
        reach = math.ceil(radius) + 3
        return QRect(math.floor(c.x()) - reach, math.floor(c.y()) - reach, 2 * reach + 2, 2 * reach + 2)

    def _update_outline(self, old: QRect | None) -> None:
        for area in (old, self._outline_rect()):
            if area is not None:
                self.update(area)

    # -- painting strokes ---------------------------------------------------------------------

    def _painting(self) -> bool:
        return self._stroke is not None or self._colour_stroke

    def _begin_stroke(self, pos: QPointF) -> None:
        if not self.can_paint():
            return
        if self._tool in COLOUR_TOOLS:
            c = self._paint_colour
            self._colour_stroke = self.document.begin_paint(
                (c.red(), c.green(), c.blue()), self._brush_size, self._hardness, erase=self._tool == "paint_eraser")
            if self._colour_stroke:
                self._paint_to(pos)
            return
        erase = self._tool == "eraser"
        mask = self.document.begin_stroke("Erase" if erase else "Brush stroke")
        if mask is None:
            return
        self._stroke = Stroke(mask, self._brush_size, self._hardness, erase=erase)
        self._paint_to(pos)

    def _paint_to(self, pos: QPointF) -> None:
        if self._colour_stroke:
            if self.document is None or not self.document.in_paint():
                self._colour_stroke = False  # the document ended it (an undo, a new image)
                return
            p = self.to_layout(pos)
            self.document.paint_to((p.x(), p.y()))
            return
        doc, stroke = self.document, self._stroke
        if doc is None or not doc.in_stroke() or doc.mask is not stroke.mask:
            self._stroke = None  # the document ended it (an undo, a new image): stop painting
            return
        p = self.to_layout(pos)
        rect = stroke.to((p.x(), p.y()))
        if rect is not None:
            doc.stroke_updated(rect)

    def _end_stroke(self) -> None:
        if self._colour_stroke:
            self._colour_stroke = False
            if self.document is not None and self.document.in_paint():
                self.document.end_paint()
            return
        stroke, self._stroke = self._stroke, None
        doc = self.document
        if stroke is not None and doc is not None and doc.in_stroke() and doc.mask is stroke.mask:
            doc.end_stroke()

    # -- events ----------------------------------------------------------------------------------

    def wheelEvent(self, event: QWheelEvent) -> None:
        if self._layout_size().isEmpty():
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.set_zoom(self._zoom * (1.25**steps), event.position())
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.MiddleButton or not (self._edits_mask() and not self._space):
            self.fit()
        else:  # painting: the second click of a quick double tap is just another dab
            self.mousePressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        button = event.button()
        left = button == Qt.MouseButton.LeftButton
        split = self._split_x()
        if self._painting() or self._shape is not None:
            event.accept()  # another button while painting: ignored
        elif left and split is not None and abs(event.position().x() - split) <= 8:
            self._split_drag = True  # the split view's divider: before any tool
            event.accept()
        elif self._pans(button) and not self._layout_size().isEmpty():
            old = self._outline_rect()
            self._drag_from, self._drag_button = event.position(), button
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            self._update_outline(old)
        elif left and (self._tool == "picker" or self._tool in COLOUR_TOOLS
                       and event.modifiers() & Qt.KeyboardModifier.AltModifier):  # fmt: skip
            self.pick_colour(event.position())
            event.accept()
        elif left and self._paints():
            self._begin_stroke(event.position())
            event.accept()
        elif left and self._tool in SHAPES:
            self._begin_shape(event.position())
            event.accept()
        elif left and self._tool == "select" and self.document is not None and not self._image.isNull():
            self._select_from = self._image_point(event.position())
            self._select_rect = None
            event.accept()
        else:
            super().mousePressEvent(event)

    def _pans(self, button: Qt.MouseButton) -> bool:
        """A press of this button starts panning (middle always, left in pan mode or with Space)."""
        left = button == Qt.MouseButton.LeftButton
        return button == Qt.MouseButton.MiddleButton or left and (self._tool == "pan" or self._space)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        old = self._outline_rect()
        self._hover = pos
        if self._split_drag:
            r = self.image_rect()
            if r.width() > 0:
                self._staging.set_split((pos.x() - r.left()) / r.width())
            return
        if self._drag_from is not None:
            self._pan += pos - self._drag_from
            self._drag_from = pos
            self.update()
            return
        if self._painting():
            if event.buttons() & Qt.MouseButton.LeftButton:
                self._paint_to(pos)
            else:  # the release went elsewhere
                self._end_stroke()
        if self._select_from is not None:
            self._select_rect = self._rect_between(self._select_from, self._image_point(pos))
            self.update()
        if self._shape is not None:
            if event.buttons() & Qt.MouseButton.LeftButton:
                self._shape_to(pos)
            else:  # the release went elsewhere: no fill the artist did not finish
                self._drop_shape()
        self._update_outline(old)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._split_drag and event.button() == Qt.MouseButton.LeftButton:
            self._split_drag = False
        elif self._drag_from is not None and event.button() == self._drag_button:
            self._drag_from, self._drag_button = None, Qt.MouseButton.NoButton
            self._refresh_cursor()
            self._update_outline(None)
        elif self._painting() and event.button() == Qt.MouseButton.LeftButton:
            self._paint_to(event.position())
            self._end_stroke()
        elif self._shape is not None and event.button() == Qt.MouseButton.LeftButton:
            self._end_shape(event.position(), bool(event.modifiers() & Qt.KeyboardModifier.AltModifier))
        elif self._select_from is not None and event.button() == Qt.MouseButton.LeftButton:
            rect = self._rect_between(self._select_from, self._image_point(event.position()))
            self._select_from = self._select_rect = None
            self.document.set_selection(rect)  # a click (no drag) clears it
            self.update()
        else:
            super().mouseReleaseEvent(event)

    def _image_point(self, pos: QPointF) -> tuple[int, int]:
        p = self.to_image(pos)
        w, h = self._image.width(), self._image.height()
        return (min(max(0, round(p.x())), w), min(max(0, round(p.y())), h))

    @staticmethod
    def _rect_between(a: tuple[int, int], b: tuple[int, int]) -> Rect | None:
        x0, x1 = sorted((a[0], b[0]))
        y0, y1 = sorted((a[1], b[1]))
        return (x0, y0, x1 - x0, y1 - y0) if x1 - x0 >= 2 and y1 - y0 >= 2 else None

    def selection_rect(self) -> Rect | None:
        """The selection shown: the one being dragged, else the document's."""
        if self._select_from is not None:
            return self._select_rect
        return self.document.selection if self.document is not None else None

    def _refresh_cursor(self) -> None:
        if self._drag_from is not None:
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        elif self._space:
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif self._edits_mask():
            self.setCursor(Qt.CursorShape.CrossCursor)
        else:
            self.unsetCursor()

    def _key(self, event: QKeyEvent, pressed: bool) -> bool:
        """[ / ] resize the brush, Space held pans; True when the key was taken."""
        key, mods = event.key(), event.modifiers()
        shortcut = bool(mods & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.MetaModifier)) and not (
            mods & Qt.KeyboardModifier.AltModifier  # Ctrl+Alt is AltGr, which types [ on some layouts
        )
        if key == Qt.Key.Key_Alt and self._shape is not None:
            self.update()  # the shape's outline says whether it will mask or unmask (the key is not taken)
        if key in (Qt.Key.Key_BracketLeft, Qt.Key.Key_BracketRight) and not shortcut:
            if pressed:
                self.grow_brush() if key == Qt.Key.Key_BracketRight else self.shrink_brush()
            return True
        if key == Qt.Key.Key_Escape and not mods and self.document is not None and self.document.selection:
            if pressed:  # (while a job runs, Esc is the window's Cancel and never gets here)
                self.document.set_selection(None)
            return True
        if key == Qt.Key.Key_Space and self._edits_mask() and not mods:
            if not event.isAutoRepeat() and self._space != pressed:
                old = self._outline_rect()
                self._space = pressed
                self._refresh_cursor()
                self._update_outline(old)
            return True
        return False

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if not self._key(event, True):
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if not self._key(event, False):
            super().keyReleaseEvent(event)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # Installed on the application while the pointer is over the canvas: [, ] and Space reach
        # the canvas although another widget has the keyboard, unless that widget takes text.
        kind = event.type()
        if kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and obj is not self:
            focus = obj if isinstance(obj, QWidget) else QApplication.focusWidget()  # the window's: its focus
            typing = focus is not None and (
                any(focus.inherits(name) for name in _TEXT_INPUTS) or focus.inherits("QComboBox") and focus.isEditable()
            )
            if not typing and self.isVisible() and self._key(event, kind == QEvent.Type.KeyPress):
                return True
        return False

    def _set_key_filter(self, on: bool) -> None:
        app = QApplication.instance()
        if app is None or on == self._filtering:
            return
        self._filtering = on
        if on:
            app.installEventFilter(self)
        else:
            app.removeEventFilter(self)

    def enterEvent(self, event) -> None:
        self._set_key_filter(True)
        self._refresh_cursor()
        super().enterEvent(event)

    def leaveEvent(self, event) -> None:
        self._set_key_filter(False)
        old = self._outline_rect()
        self._hover = None
        if self._space and self._drag_from is None:
            self._space = False  # its release may go to another widget
            self._refresh_cursor()
        self._update_outline(old)
        super().leaveEvent(event)

    def hideEvent(self, event) -> None:
        self._set_key_filter(False)
        if self._painting():
            self._end_stroke()
        self._drop_shape()
        self._drag_from, self._hover, self._space = None, None, False
        super().hideEvent(event)

    def event(self, event: QEvent) -> bool:
        # While painting over the image, no tooltip pops up under the brush (it still shows over
        # the backdrop, and toolTip() always says what the tool does).
        if event.type() == QEvent.Type.ToolTip and self._edits_mask() and self.image_rect().contains(event.pos()):
            event.ignore()
            return True
        return super().event(event)
