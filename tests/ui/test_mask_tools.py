"""Mask tools: rectangle and lasso fill (and subtract), grow / shrink, the tint's colour and opacity,
and the tint hidden over a result until the mask is edited again.

The canvas is 424x224 over a 200x100 image: fitted at exactly 2x at (12, 12), so image point (x, y)
is widget point (12 + 2x, 12 + 2y) and a drag between whole widget points maps back exactly.
"""

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QColorDialog

from studio.backends.fake import FakeBackend
from studio.session.masktools import grow, polygon_region, shrink
from studio.settings import Settings
from studio.ui.canvas import Canvas
from studio.ui.canvas_tools import CanvasToolbar

W, H = 200, 100
LEFT = Qt.MouseButton.LeftButton
ALT = Qt.KeyboardModifier.AltModifier
NONE = Qt.KeyboardModifier.NoModifier


@pytest.fixture
def toolbar(qtbot, canvas, doc):
    t = CanvasToolbar(canvas, doc)
    qtbot.addWidget(t)
    return t


def corner(canvas, x, y) -> QPoint:
    """The widget point of image point (x, y) (a pixel corner, not a centre)."""
    p = canvas.from_image(x, y)
    return QPoint(round(p.x()), round(p.y()))


def drag(qtbot, canvas, points, modifier=NONE):
    qtbot.mousePress(canvas, LEFT, modifier, corner(canvas, *points[0]))
    for p in points[1:]:
        qtbot.mouseMove(canvas, corner(canvas, *p))
    qtbot.mouseRelease(canvas, LEFT, modifier, corner(canvas, *points[-1]))


def box(x0, y0, x1, y1, value=255, start=None) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8) if start is None else start.copy()
    mask[y0:y1, x0:x1] = value
    return mask


def test_rectangle_fill_masks_exactly_alt_and_the_eraser_subtract_and_each_is_one_undo_entry(qtbot, canvas, doc):
    canvas.set_tool("rect")
    drag(qtbot, canvas, [(10, 20), (35, 40), (60, 70)])
    first = box(10, 20, 60, 70)
    assert np.array_equal(doc.mask, first) and doc.history.undo_label() == "Rectangle fill"
    drag(qtbot, canvas, [(40, 90), (30, 30)], ALT)  # dragged up-left; Alt unmasks
    second = box(30, 30, 40, 90, 0, first)
    assert np.array_equal(doc.mask, second) and doc.history.undo_label() == "Rectangle erase"
    canvas.set_tool("eraser")  # the eraser's mode carries over to the shapes: E then R erases a rectangle
    canvas.set_tool("rect")
    assert canvas.subtract()
    drag(qtbot, canvas, [(0, 0), (20, 30)])
    third = box(0, 0, 20, 30, 0, second)
    assert np.array_equal(doc.mask, third)
    canvas.set_tool("brush")
    canvas.set_tool("rect")
    assert not canvas.subtract()
    drag(qtbot, canvas, [(190, 90), (250, 150)])  # past the image's corner: clipped to it
    fourth = box(190, 90, 200, 100, 255, third)
    assert np.array_equal(doc.mask, fourth)
    qtbot.mouseClick(canvas, LEFT, pos=corner(canvas, 100, 50))  # a click encloses nothing: no entry
    assert len(doc.history.entries) == 4
    for state in (third, second, first):
        doc.undo()
        assert np.array_equal(doc.mask, state)
    doc.undo()
    assert doc.mask is None  # the first fill made the mask: undo takes it away
    for state in (first, second, third, fourth):
        doc.redo()
        assert np.array_equal(doc.mask, state)


def lasso_expected(inside) -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    return np.where(inside(xs, ys), 255, 0).astype(np.uint8)


def test_lasso_fill_masks_the_pixels_whose_centre_is_inside_and_alt_subtracts(qtbot, canvas, doc):
    canvas.set_tool("lasso")
    drag(qtbot, canvas, [(10, 10), (50, 10), (10, 50)])  # a right triangle, closed on release
    triangle = lasso_expected(lambda x, y: (x >= 10) & (y >= 10) & (x + y < 60))
    assert np.array_equal(doc.mask, triangle) and int((doc.mask == 255).sum()) == 39 * 40 // 2
    assert doc.history.undo_label() == "Lasso fill"
    drag(qtbot, canvas, [(15, 15), (25, 15), (25, 25), (15, 25)], ALT)  # a square traced freehand, unmasked
    holed = triangle.copy()
    holed[15:25, 15:25] = 0
    assert np.array_equal(doc.mask, holed) and doc.history.undo_label() == "Lasso erase"
    drag(qtbot, canvas, [(100, 50), (120, 50)])  # a line encloses nothing: no entry
    assert len(doc.history.entries) == 2
    doc.undo()
    assert np.array_equal(doc.mask, triangle)
    doc.redo()
    assert np.array_equal(doc.mask, holed)


def test_polygon_region_handles_a_concave_shape_and_points_outside():
    # A U shape: the notch between its arms stays unmasked; the part past the border is clipped.
    u = [(-5, 0), (30, 0), (30, 20), (20, 20), (20, 10), (10, 10), (10, 20), (-5, 20)]
    (x, y, w, h), inside = polygon_region((H, W), u)
    mask = np.zeros((H, W), bool)
    mask[y : y + h, x : x + w] = inside
    expected = np.zeros((H, W), bool)
    expected[0:20, 0:30] = True
    expected[10:20, 10:20] = False
    assert np.array_equal(mask, expected)
    assert polygon_region((H, W), [(1, 1), (5, 5)]) is None


def test_grow_and_shrink_move_a_squares_edges_by_n_pixels_one_undo_entry_each(qtbot, toolbar, doc):
    square = box(90, 40, 110, 60)
    doc.set_mask(square, "Brush stroke")
    toolbar.amount_box.setValue(3)
    toolbar.grow_action.trigger()
    grown = doc.mask
    assert doc.history.undo_label() == "Grow mask 3 px"
    assert np.array_equal(np.nonzero(grown[50])[0], np.arange(87, 113))  # each edge moved out by exactly 3
    assert np.array_equal(np.nonzero(grown[:, 100])[0], np.arange(37, 63))
    # a round brush: the corners are rounded (4 pixels of a radius-3 disk's quarter beyond each corner)
    assert int((grown == 255).sum()) == 20 * 20 + 4 * 20 * 3 + 4 * 4 and set(np.unique(grown)) == {0, 255}
    assert grown[37, 87] == 0 and grown[38, 88] == 255
    doc.undo()
    assert np.array_equal(doc.mask, square)
    toolbar.shrink_action.trigger()
    assert np.array_equal(doc.mask, box(93, 43, 107, 57)) and doc.history.undo_label() == "Shrink mask 3 px"
    toolbar.amount_box.setValue(10)
    toolbar.shrink_action.trigger()
    assert not doc.mask.any()  # 14 px shrunk by 10 on each side: nothing left
    doc.undo()
    doc.undo()
    assert np.array_equal(doc.mask, square)
    assert len(doc.history.entries) == 3  # stroke, shrink, shrink (the undone grow was dropped)


def test_grow_keeps_soft_edges_soft_and_shrink_leaves_the_image_border_alone():
    soft = np.zeros((40, 40), np.uint8)
    soft[20, 10:30] = 128
    g = grow(soft, 2)
    assert set(np.unique(g)) == {0, 128} and np.array_equal(np.nonzero(g[:, 20])[0], np.arange(18, 23))
    full = np.full((40, 40), 255, np.uint8)
    assert np.array_equal(shrink(full, 5), full)  # the border is no edge
    left = np.zeros((40, 40), np.uint8)
    left[:, :10] = 255
    assert np.array_equal(np.nonzero(shrink(left, 4)[5])[0], np.arange(0, 6))  # only its right edge moved


def widget_rgb(canvas, x, y) -> tuple[int, int, int]:
    c = canvas.grab().toImage().pixelColor(corner(canvas, x + 0.5, y + 0.5))
    return c.red(), c.green(), c.blue()


def test_the_chosen_colour_and_opacity_are_what_the_canvas_draws(qtbot, canvas, toolbar, doc, monkeypatch):
    doc.set_mask(box(50, 20, 100, 60))
    violet = widget_rgb(canvas, 70, 40)
    assert violet != (255, 255, 255) and violet[2] == 255  # today's default: a violet tint
    monkeypatch.setattr(QColorDialog, "getColor", lambda initial, parent, title: QColor("#00ff00"))
    qtbot.mouseClick(toolbar.color_button, LEFT)
    assert canvas.mask_tint().name() == "#00ff00" and canvas.mask_tint().alpha() == Canvas.MASK_TINT.alpha()
    toolbar.opacity_slider.setValue(100)
    assert canvas.mask_tint().alpha() == 255
    assert widget_rgb(canvas, 70, 40) == (0, 255, 0)  # fully opaque green over the masked pixels
    assert widget_rgb(canvas, 20, 40) == (255, 255, 255)  # untouched outside the mask
    toolbar.opacity_slider.setValue(50)
    r, g, b = widget_rgb(canvas, 70, 40)  # half green over white
    assert abs(r - 127) <= 1 and g == 255 and abs(b - 127) <= 1
    canvas.set_mask_tint(QColor(255, 0, 0, 153))
    assert toolbar.opacity_slider.value() == 60  # the toolbar follows the canvas


def test_the_mask_colour_and_opacity_persist_through_the_settings(qtbot, make_window, config_dir):
    first = make_window(settings=Settings.load())
    assert first.canvas.mask_tint().rgba() == Canvas.MASK_TINT.rgba()  # the default stays as it was
    first.canvas.set_mask_tint(QColor(255, 170, 0))
    first.canvas_toolbar.opacity_slider.setValue(70)
    first.save_settings()
    stored = Settings.load(config_dir)
    assert (stored.mask_color, stored.mask_opacity) == ("#ffaa00", 70)
    second = make_window(settings=stored)
    tint = second.canvas.mask_tint()
    assert (tint.name(), tint.alpha(), second.canvas_toolbar.opacity_slider.value()) == ("#ffaa00", 178, 70)
    broken = Settings.load(config_dir)
    broken.mask_color, broken.mask_opacity = "not a colour", 1000
    third = make_window(settings=broken)
    assert third.canvas.mask_tint().name() == Canvas.MASK_TINT.name() and third.canvas.mask_tint().alpha() == 255


def test_the_tint_is_hidden_over_a_result_and_shows_again_on_the_next_stroke(qtbot, make_window):
    window = make_window(FakeBackend(auto=True))
    s, doc, canvas = window.session, window.session.document, window.canvas
    image = QImage(96, 80, QImage.Format.Format_RGB888)
    image.fill(QColor(40, 120, 200))
    s.show_image(image)
    mask = np.zeros((80, 96), np.uint8)
    mask[16:40, 20:50] = 255
    doc.set_mask(mask, "Brush stroke")
    canvas.set_mask_tint(QColor(0, 255, 0, 255))
    s.set_mode("inpaint")
    window.prompt_panel.seed.setText("9")

    def over_mask() -> tuple[int, int, int]:
        p = canvas.from_image(35, 28)
        c = canvas.grab().toImage().pixelColor(round(p.x()), round(p.y()))
        return c.red(), c.green(), c.blue()

    assert over_mask() == (0, 255, 0)
    with qtbot.waitSignal(s.result_image):
        s.generate()
    qtbot.waitUntil(lambda: not canvas.mask_visible())
    assert np.array_equal(doc.mask, mask)  # kept for the next inpaint, only not drawn
    assert not window.canvas_toolbar.mask_toggle.isChecked()  # the toggle says so, and shows it again
    result = doc.image.pixelColor(35, 28)
    assert result.red() == 9 and over_mask() == (result.red(), result.green(), result.blue())
    window.canvas_toolbar.mask_toggle.click()
    assert canvas.mask_visible() and over_mask() == (0, 255, 0)
    window.canvas_toolbar.mask_toggle.click()
    assert not canvas.mask_visible()
    # Hidden by the artist: a stroke keeps it hidden. Hidden by a result: the next stroke shows it.
    canvas.set_tool("brush")
    p = canvas.from_image(80, 70)
    qtbot.mouseClick(canvas, LEFT, pos=QPoint(round(p.x()), round(p.y())))
    assert not canvas.mask_visible()
    canvas.set_mask_visible(True)
    with qtbot.waitSignal(s.result_image):
        s.generate()
    qtbot.waitUntil(lambda: not canvas.mask_visible())
    qtbot.mouseClick(canvas, LEFT, pos=QPoint(round(p.x()), round(p.y())))
    assert canvas.mask_visible() and over_mask() == (0, 255, 0)


def test_r_and_l_pick_the_rectangle_and_the_lasso(qtbot, window):
    from studio.ui.canvas_tools import CANVAS_KEYS, SHORTCUTS

    window.activateWindow()
    window.canvas.setFocus()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window.canvas, Qt.Key.Key_R)
    assert window.canvas.tool() == "rect" and window.canvas_toolbar.tool_buttons["rect"].isChecked()
    qtbot.keyClick(window.canvas, Qt.Key.Key_L)
    assert window.canvas.tool() == "lasso"
    assert len(set(SHORTCUTS.values())) == len(SHORTCUTS)
    keys = [k for k, _ in window.shortcut_rows()]
    assert "R" in keys and "L" in keys and len(keys) == len(set(keys))  # no key does two things
    assert any(k == "Alt + drag" for k, _ in CANVAS_KEYS)


def brute_force_polygon(shape, points) -> np.ndarray:
    """Even-odd by ray casting from every pixel centre: the crossings of the row's centre line at or left of it."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    p = np.asarray(points, float)
    count = np.zeros(shape, int)
    for (ax, ay), (bx, by) in zip(p, np.roll(p, -1, axis=0), strict=True):
        crosses = (ay <= ys) != (by <= ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = ax + (ys - ay) * (bx - ax) / (by - ay)
        count += crosses & (x <= xs)
    return count % 2 == 1


def test_polygon_region_matches_ray_casting_on_random_lassos():
    rng = np.random.default_rng(7)
    shape = (60, 80)
    for _ in range(40):
        n = int(rng.integers(3, 25))
        points = rng.uniform(-10, 90, size=(n, 2))  # self-intersecting, partly outside: the even-odd rule holds
        if rng.random() < 0.5:  # vertices on pixel corners and on centre lines: the half-open rule at vertices
            points = np.round(points * 2) / 2
        region = polygon_region(shape, points)
        got = np.zeros(shape, bool)
        if region is not None:
            (x, y, w, h), inside = region
            got[y : y + h, x : x + w] = inside
        assert np.array_equal(got, brute_force_polygon(shape, points))
