"""Mask painting on the canvas: strokes into the document, the overlay, panning, the toolbar.

The canvas is 424x224 over a 200x100 image: fitted at exactly 2x at (12, 12), so the widget point
of image px (x, y)'s centre is (13 + 2x, 13 + 2y), and it maps back to (x + 0.5, y + 0.5).
"""

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRect, Qt
from PySide6.QtGui import QColor, QEnterEvent, QHelpEvent, QImage
from PySide6.QtWidgets import QApplication, QLineEdit, QPushButton, QVBoxLayout, QWidget

from studio.qimage import qimage_to_array
from studio.session.brush import Stroke, paint_segment
from studio.session.document import Document
from studio.ui.canvas import Canvas
from studio.ui.canvas_tools import CanvasToolbar

W, H = 200, 100
LEFT, MIDDLE = Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton


def white_image(w=W, h=H) -> QImage:
    image = QImage(w, h, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.white)
    return image


def at(canvas, x, y) -> QPoint:
    """The widget point over the centre of image pixel (x, y)."""
    p = canvas.from_image(x + 0.5, y + 0.5)
    return QPoint(round(p.x()), round(p.y()))


def stroke(qtbot, canvas, points, button=LEFT):
    qtbot.mousePress(canvas, button, pos=at(canvas, *points[0]))
    for p in points[1:]:
        qtbot.mouseMove(canvas, at(canvas, *p))
    qtbot.mouseRelease(canvas, button, pos=at(canvas, *points[-1]))


def expected_stroke(points, size, hardness, erase=False, start=None):
    mask = np.zeros((H, W), np.uint8) if start is None else start.copy()
    s = Stroke(mask, size, hardness, erase=erase)
    for x, y in points:
        s.to((x + 0.5, y + 0.5))
    return mask


def pixel(image: QImage, p: QPoint) -> tuple[int, int, int]:
    c = image.pixelColor(p)
    return c.red(), c.green(), c.blue()


def test_a_brush_stroke_paints_the_document_mask_and_undo_redo_restore_it_exactly(qtbot, canvas, doc):
    canvas.set_tool("brush")
    canvas.set_brush_size(10)
    canvas.set_hardness(1.0)
    points = [(20, 50), (60, 50), (100, 50), (140, 30)]
    stroke(qtbot, canvas, points)
    mask = doc.mask
    assert mask is not None and mask.shape == (H, W)
    assert np.all(mask[50, 20:101] == 255)  # along the stroke
    assert mask[40, 120] == 255  # on the diagonal part: (120, 40) lies on (100, 50) -> (140, 30)
    assert mask[50, 150] == 0 and mask[10, 60] == 0 and mask[90, 20] == 0  # far from it
    after = expected_stroke(points, 10, 1.0)
    assert np.array_equal(mask, after)  # exactly the brush's own stroke
    assert doc.history.undo_label() == "Brush stroke" and not doc.in_stroke()
    # a second, eraser stroke across the first
    canvas.set_tool("eraser")
    stroke(qtbot, canvas, [(60, 20), (60, 80)])
    erased = expected_stroke([(60, 20), (60, 80)], 10, 1.0, erase=True, start=after)
    assert np.array_equal(doc.mask, erased) and doc.mask[50, 60] == 0 and doc.mask[50, 30] == 255
    assert doc.history.undo_label() == "Erase"
    assert doc.undo() == "Erase" and np.array_equal(doc.mask, after)
    assert doc.undo() == "Brush stroke" and doc.mask is None  # the stroke had created the mask
    assert doc.redo() == "Brush stroke" and np.array_equal(doc.mask, after)
    assert doc.redo() == "Erase" and np.array_equal(doc.mask, erased)


def test_the_eraser_removes_the_mask_along_its_path(qtbot, canvas, doc):
    doc.fill_mask()
    canvas.set_tool("eraser")
    canvas.set_brush_size(8)
    stroke(qtbot, canvas, [(10, 10), (190, 90)])
    mask = doc.mask
    assert mask[10, 10] == 0 and mask[50, 100] == 0 and mask[90, 190] == 0  # on the line
    assert mask[90, 10] == 255 and mask[10, 190] == 255  # the other corners are kept
    full = np.full((H, W), 255, np.uint8)
    assert np.array_equal(mask, expected_stroke([(10, 10), (190, 90)], 8, 1.0, erase=True, start=full))
    doc.undo()
    assert np.array_equal(doc.mask, full)


def test_a_soft_brush_leaves_intermediate_values_falling_with_distance(qtbot, canvas, doc):
    canvas.set_tool("brush")
    canvas.set_brush_size(40)
    canvas.set_hardness(0.3)
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 100, 50))
    row = doc.mask[50, 100:125].astype(int)
    assert np.all(row[:6] == 255) and row[20] == 0
    assert np.all(np.diff(row) <= 0) and np.all((row[7:19] > 0) & (row[7:19] < 255))
    expected = np.zeros((H, W), np.uint8)
    paint_segment(expected, (100.5, 50.5), (100.5, 50.5), 40, 0.3)
    assert np.array_equal(doc.mask, expected)


def test_brackets_shrink_and_grow_the_brush_and_the_dab_follows(qtbot, canvas, doc):
    canvas.set_tool("brush")
    canvas.set_brush_size(20)
    changes = []
    canvas.brush_changed.connect(lambda: changes.append(canvas.brush_size()))
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 22  # about 10% larger
    for _ in range(3):
        qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush_size() == 16 and changes == [22, 20, 18, 16]

    def dab_pixels(x):
        qtbot.mouseClick(canvas, LEFT, pos=at(canvas, x, 50))
        return int((doc.mask[:, x - 40 : x + 40] > 0).sum())

    small = dab_pixels(40)
    for _ in range(8):
        qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 35  # 16 -> 18, 20, 22, 24, 26, 29, 32, 35
    large = dab_pixels(140)
    assert small == int((expected_stroke([(40, 50)], 16, 1.0) > 0).sum())
    assert large == int((expected_stroke([(140, 50)], 35, 1.0) > 0).sum())
    assert large > 4 * small  # (35 / 16)^2 = 4.8
    canvas.set_brush_size(1)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush_size() == 1
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 2  # at least 1 px
    canvas.set_brush_size(5000)
    assert canvas.brush_size() == 1024


def test_brackets_reach_the_canvas_under_the_pointer_but_not_from_a_text_box(qtbot, doc):
    host = QWidget()
    layout = QVBoxLayout(host)
    button, edit, canvas = QPushButton("other"), QLineEdit(), Canvas()
    for w in (button, edit, canvas):
        layout.addWidget(w)
    canvas.set_image(doc.image)
    canvas.set_document(doc)
    canvas.set_tool("brush")
    canvas.set_brush_size(20)
    qtbot.addWidget(host)
    host.show()
    qtbot.waitExposed(host)
    button.setFocus()
    qtbot.keyClick(button, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 20  # the pointer is elsewhere
    centre = QPointF(canvas.width() / 2, canvas.height() / 2)
    QApplication.sendEvent(canvas, QEnterEvent(centre, centre, canvas.mapToGlobal(centre)))
    qtbot.keyClick(button, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 22  # over the canvas: it takes the key
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key.Key_BracketRight)
    assert canvas.brush_size() == 22 and edit.text() == "]"  # typing in a text box stays typing
    QApplication.sendEvent(canvas, QEvent(QEvent.Type.Leave))
    button.setFocus()
    qtbot.keyClick(button, Qt.Key.Key_BracketLeft)
    assert canvas.brush_size() == 22


def test_the_overlay_tints_painted_pixels_and_hides(qtbot, canvas, doc):
    canvas.set_tool("brush")
    canvas.set_brush_size(16)
    clean = canvas.grab().toImage()
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 50, 50))
    p, far = at(canvas, 50, 50), at(canvas, 150, 50)
    assert pixel(clean, p) == (255, 255, 255)
    qtbot.mouseMove(canvas, at(canvas, 150, 20))  # the outline follows the pointer: keep it off p and far
    shown = canvas.grab().toImage()
    r, g, b = pixel(shown, p)
    assert r < 235 and g < 220 and b > 240 and g < r  # white under the translucent violet tint
    assert pixel(shown, far) == (255, 255, 255)
    overlay = canvas.overlay()
    assert overlay.size() == doc.image.size() and overlay.pixelColor(50, 50).alpha() == 110
    canvas.set_mask_visible(False)
    assert not canvas.mask_visible()
    assert pixel(canvas.grab().toImage(), p) == (255, 255, 255)
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 100, 50))  # painting still works while hidden
    assert doc.mask[50, 100] == 255
    canvas.set_mask_visible(True)
    assert pixel(canvas.grab().toImage(), at(canvas, 100, 50)) == (r, g, b)


def test_the_brush_outline_follows_the_pointer_in_two_colours(qtbot, canvas):
    canvas.set_tool("brush")
    canvas.set_brush_size(40)  # 80 widget px across at 2x
    qtbot.mouseMove(canvas, at(canvas, 100, 50))
    c = at(canvas, 100, 50)

    def ring_and_inside():
        a = qimage_to_array(canvas.grab().toImage()).min(axis=2).astype(int)
        ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
        d = np.hypot(xs - c.x(), ys - c.y())
        return a[(d > 38) & (d < 42)], a[(d < 35) | ((d > 45) & (d < 60))]

    ring, off = ring_and_inside()
    assert (ring < 100).sum() > 60 and (ring > 200).sum() > 60  # dark and white dashes at radius 40 px
    assert np.all(off == 255)  # inside and beyond it: untouched
    canvas.set_tool("pan")
    ring, off = ring_and_inside()
    assert np.all(ring == 255)


def test_painting_with_no_image_does_nothing(qtbot, doc):
    empty = Document()
    canvas = Canvas()
    canvas.resize(424, 224)
    canvas.set_document(empty)
    qtbot.addWidget(canvas)
    canvas.show()
    canvas.set_tool("brush")
    qtbot.mousePress(canvas, LEFT, pos=QPoint(200, 100))
    qtbot.mouseMove(canvas, QPoint(250, 120))
    qtbot.mouseRelease(canvas, LEFT, pos=QPoint(250, 120))
    assert empty.mask is None and not empty.history.can_undo() and not empty.in_stroke()
    canvas.set_image(white_image())  # an image on the canvas, none in the document: still nothing
    assert not canvas.can_paint()
    qtbot.mouseClick(canvas, LEFT, pos=QPoint(200, 100))
    assert empty.mask is None and not empty.history.can_undo()


def test_middle_drag_pans_without_painting_and_so_do_pan_mode_and_space(qtbot, canvas, doc):
    canvas.set_tool("brush")
    before = canvas.image_rect()
    qtbot.mousePress(canvas, MIDDLE, pos=QPoint(200, 100))
    qtbot.mouseMove(canvas, QPoint(230, 110))
    qtbot.mouseMove(canvas, QPoint(260, 120))
    qtbot.mouseRelease(canvas, MIDDLE, pos=QPoint(260, 120))
    assert canvas.image_rect().topLeft() - before.topLeft() == QPointF(60, 20)
    assert doc.mask is None and not doc.history.can_undo()
    canvas.setFocus()
    qtbot.keyPress(canvas, Qt.Key.Key_Space)
    qtbot.mousePress(canvas, LEFT, pos=QPoint(200, 100))
    qtbot.mouseMove(canvas, QPoint(190, 100))
    qtbot.mouseRelease(canvas, LEFT, pos=QPoint(190, 100))
    qtbot.keyRelease(canvas, Qt.Key.Key_Space)
    assert canvas.image_rect().topLeft() - before.topLeft() == QPointF(50, 20) and doc.mask is None
    canvas.set_tool("pan")
    qtbot.mousePress(canvas, LEFT, pos=QPoint(200, 100))
    qtbot.mouseMove(canvas, QPoint(150, 80))
    qtbot.mouseRelease(canvas, LEFT, pos=QPoint(150, 80))
    assert canvas.image_rect().topLeft() == before.topLeft() and doc.mask is None
    # after panning and zooming, a stroke still lands under the pointer
    canvas.set_zoom(2.5, QPointF(100, 60))
    canvas.set_tool("brush")
    canvas.set_brush_size(6)
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 30, 40))
    ys, xs = np.nonzero(doc.mask == 255)
    assert abs(xs.mean() - 30) <= 1 and abs(ys.mean() - 40) <= 1
    qtbot.mouseDClick(canvas, MIDDLE, pos=QPoint(200, 100))  # a middle double-click fits
    assert canvas.image_rect() == canvas.fit_rect()


class PaintSpy(QObject):
    def __init__(self, widget):
        super().__init__()
        self.rects: list[QRect] = []
        widget.installEventFilter(self)

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            self.rects.append(event.rect())
        return False


def test_a_mask_change_recomputes_and_repaints_only_its_rectangle(qtbot, canvas, doc):
    doc.set_mask(np.zeros((H, W), np.uint8))
    overlay = canvas.overlay()
    assert overlay is not None and overlay.pixelColor(0, 0).alpha() == 0
    spy = PaintSpy(canvas)
    QApplication.processEvents()
    spy.rects.clear()
    changed = []
    canvas.mask_changed.connect(changed.append)
    mask = doc.begin_stroke("test")
    mask[:] = 255  # everywhere, but only (10, 20, 30, 15) is announced
    doc.stroke_updated((10, 20, 30, 15))
    assert changed == [(10, 20, 30, 15)]
    o = canvas.overlay()
    alpha = np.array([[o.pixelColor(x, y).alpha() for x in range(W)] for y in range(0, H, 3)])
    rows = np.arange(0, H, 3)
    inside = (rows >= 20) & (rows < 35)
    assert (
        np.all(alpha[inside][:, 10:40] == 110) and not alpha[inside][:, :10].any() and not alpha[inside][:, 40:].any()
    )
    assert not alpha[~inside].any()  # outside the rectangle: not recomputed
    qtbot.waitUntil(lambda: bool(spy.rects))
    area = canvas.widget_rect((10, 20, 30, 15)).toAlignedRect().adjusted(-2, -2, 2, 2)
    assert all(area.contains(r) for r in spy.rects), (spy.rects, area)  # only the widget area over it
    assert sum(r.width() * r.height() for r in spy.rects) <= area.width() * area.height()
    doc.end_stroke()
    doc.set_mask(np.full((H, W), 255, np.uint8))  # mask_changed(None): all of it
    assert changed[-1] is None and canvas.overlay().pixelColor(199, 99).alpha() == 110


def test_crop_rect_and_live_overlay_are_drawn_over_the_image(qtbot, canvas):
    canvas.set_crop_rect((50, 20, 100, 60))
    assert canvas.crop_rect() == (50, 20, 100, 60)
    image = canvas.grab().toImage()
    top_left = canvas.widget_rect((50, 20, 100, 60)).toAlignedRect().topLeft()
    border = [pixel(image, QPoint(top_left.x() + dx, top_left.y())) for dx in range(40, 60)]
    assert any(max(p) < 100 for p in border)  # the dashed line's dark part
    label = [pixel(image, QPoint(top_left.x() + dx, top_left.y() - 8)) for dx in range(2, 60)]
    assert any(p != (255, 255, 255) for p in label)  # the "inpaint area" tag above it
    assert pixel(image, at(canvas, 100, 50)) == (255, 255, 255)  # the inside stays clear
    canvas.set_crop_rect(None)
    assert pixel(canvas.grab().toImage(), QPoint(top_left.x() + 45, top_left.y())) == (255, 255, 255)

    live = QImage(10, 10, QImage.Format.Format_ARGB32)
    live.fill(QColor(255, 0, 0, 255))
    for y in range(10):
        for x in range(5, 10):
            live.setPixelColor(x, y, QColor(0, 0, 255, 0))  # the right half is transparent
    canvas.set_live_overlay(live, (100, 0, 50, 50))
    image = canvas.grab().toImage()
    assert pixel(image, at(canvas, 110, 25)) == (255, 0, 0)  # scaled into its rectangle
    assert pixel(image, at(canvas, 145, 25)) == (255, 255, 255)  # its own alpha: transparent there
    assert pixel(image, at(canvas, 90, 25)) == (255, 255, 255) and pixel(image, at(canvas, 110, 60)) == (255,) * 3
    canvas.set_live_overlay(None, None)
    assert canvas.live_overlay() is None and pixel(canvas.grab().toImage(), at(canvas, 110, 25)) == (255,) * 3


def test_tools_and_the_tooltip(canvas):
    assert canvas.tool() == "pan" and "drag: pan" in canvas.toolTip()
    seen = []
    canvas.tool_changed.connect(seen.append)
    canvas.set_tool("brush")
    assert "paint the mask" in canvas.toolTip() and "[ and ]" in canvas.toolTip()
    canvas.set_tool("eraser")
    assert "remove the mask" in canvas.toolTip()
    assert seen == ["brush", "eraser"]
    over, backdrop = QPoint(200, 100), QPoint(3, 3)
    shown = {}
    for pos in (over, backdrop):  # no tooltip pops up under the brush; over the backdrop it does
        event = QHelpEvent(QEvent.Type.ToolTip, pos, canvas.mapToGlobal(pos))
        QApplication.sendEvent(canvas, event)
        shown[pos.x()] = event.isAccepted()
    assert shown == {200: False, 3: True}
    with pytest.raises(ValueError, match="smudge"):
        canvas.set_tool("smudge")
    canvas.set_hardness(7)
    assert canvas.hardness() == 1.0
    canvas.set_hardness(-1)
    assert canvas.hardness() == 0.0


def test_a_live_preview_in_the_final_size_keeps_the_mask_and_painting(qtbot, canvas, doc):
    doc.fill_mask()
    small = QImage(50, 25, QImage.Format.Format_RGB888)
    small.fill(Qt.GlobalColor.black)
    from PySide6.QtCore import QSize

    canvas.set_image(small, "preview", smooth=True, logical_size=QSize(W, H))
    assert canvas.mask() is not None and doc.mask is not None  # the preview does not drop the mask
    canvas.set_tool("eraser")
    canvas.set_brush_size(4)
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 20, 20))
    assert doc.mask[20, 20] == 0 and doc.mask[60, 60] == 255
    other = QImage(64, 64, QImage.Format.Format_RGB888)  # a preview of another size: not paintable
    canvas.set_image(other)
    assert not canvas.can_paint()


def test_the_toolbar_drives_the_canvas_and_the_document(qtbot, canvas, doc):
    bar = CanvasToolbar(canvas, doc)
    qtbot.addWidget(bar)
    bar.show()
    for w in bar.controls():
        assert w.toolTip(), f"{type(w).__name__} has no tooltip"
    assert "(B)" in bar.brush_button.toolTip() and "(E)" in bar.eraser_button.toolTip()
    assert "(H)" in bar.pan_button.toolTip()
    assert bar.pan_button.isChecked() and not bar.size_box.isEnabled()
    qtbot.mouseClick(bar.brush_button, LEFT)
    assert canvas.tool() == "brush" and bar.brush_button.isChecked() and bar.size_box.isEnabled()
    canvas.set_tool("eraser")
    assert bar.eraser_button.isChecked() and not bar.brush_button.isChecked()
    bar.size_box.setValue(30)
    assert canvas.brush_size() == 30
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert bar.size_box.value() == 33
    bar.hardness_slider.setValue(40)
    assert canvas.hardness() == 0.4 and bar.hardness_value.text() == "40%"
    assert bar.mask_toggle.isChecked()
    qtbot.mouseClick(bar.mask_toggle, LEFT)
    assert not canvas.mask_visible()
    canvas.set_mask_visible(True)
    assert bar.mask_toggle.isChecked()
    assert not bar.clear_button.isEnabled() and bar.fill_button.isEnabled()
    qtbot.mouseClick(bar.fill_button, LEFT)
    assert np.all(doc.mask == 255) and bar.clear_button.isEnabled()
    qtbot.mouseClick(bar.invert_button, LEFT)
    assert not doc.mask.any()
    qtbot.mouseClick(bar.clear_button, LEFT)
    assert doc.mask is None and not bar.clear_button.isEnabled()
    canvas.set_tool("brush")
    qtbot.mouseClick(canvas, LEFT, pos=at(canvas, 100, 50))  # the first dab makes a mask: clear enables
    assert doc.mask is not None and bar.clear_button.isEnabled()
    assert [doc.undo() for _ in range(4)] == ["Brush stroke", "Clear mask", "Invert mask", "Fill mask"]


def test_the_toolbar_shortcuts_pick_the_tool(qtbot, doc):
    host = QWidget()
    layout = QVBoxLayout(host)
    canvas = Canvas()
    bar = CanvasToolbar(canvas, doc)
    edit = QLineEdit()
    for w in (bar, canvas, edit):
        layout.addWidget(w)
    qtbot.addWidget(host)
    with qtbot.waitActive(host):
        host.show()
        host.activateWindow()
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    assert canvas.tool() == "brush"
    qtbot.keyClick(canvas, Qt.Key.Key_E)
    assert canvas.tool() == "eraser"
    qtbot.keyClick(canvas, Qt.Key.Key_H)
    assert canvas.tool() == "pan"
    edit.setFocus()
    qtbot.keyClick(edit, Qt.Key.Key_B)
    assert canvas.tool() == "pan" and edit.text() == "b"  # typing is not a shortcut
