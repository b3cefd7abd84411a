"""Layers: the stack, its flattening, the colour brush and picker, undo of every layer operation, the engine's input,
projects and the autosave holding the stack."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QMouseEvent
from PySide6.QtWidgets import QApplication

from studio.backends.fake import FakeBackend
from studio.qimage import array_to_qimage, qimage_to_array
from studio.session import project
from studio.session.document import Document
from studio.session.layers import BACKGROUND, Layer, composite


def rgb(img: QImage) -> np.ndarray:
    return qimage_to_array(img)


def noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def reference(layers: list[tuple[np.ndarray, bool, float]], w: int, h: int) -> np.ndarray:
    """Straight alpha over an opaque background, in float64, rounded after each layer (the documented formula)."""
    out = np.empty((h, w, 3), np.float64)
    out[...] = BACKGROUND
    for rgba, visible, opacity in layers:
        if not visible:
            continue
        a = np.rint(rgba[..., 3:4].astype(np.float64) * np.rint(opacity * 255) / 255)
        out = np.rint((rgba[..., :3] * a + out * (255 - a)) / 255)
    return out.astype(np.uint8)


def stack(doc: Document) -> list:
    """Everything the document's layers hold: name, visibility, opacity, pixels; the active index; the image."""
    return [[(la.name, la.visible, la.opacity, la.pixels.copy()) for la in doc.layers], doc.active, rgb(doc.image)]


def same(a, b) -> bool:
    la, lb = a[0], b[0]
    return (a[1] == b[1] and np.array_equal(a[2], b[2]) and len(la) == len(lb)
            and all(x[:3] == y[:3] and np.array_equal(x[3], y[3]) for x, y in zip(la, lb, strict=True)))  # fmt: skip


def stroke(doc: Document, points, colour=(255, 0, 0), size=9, erase=False) -> None:
    assert doc.begin_paint(colour, size, 1.0, erase)
    for p in points:
        doc.paint_to(p)
    doc.end_paint()


def document(w=64, h=48, seed=1) -> Document:
    doc = Document()
    doc.set_image(array_to_qimage(noise(w, h, seed)), record="Open image")
    return doc


# -- flattening ---------------------------------------------------------------------------------------------


def test_flattening_follows_opacity_visibility_and_order_exactly():
    w, h = 40, 30
    parts = [(np.dstack([noise(w, h, 1), np.full((h, w), 255, np.uint8)]), True, 1.0),
             (noise(w, h, 2, 4), True, 0.6), (noise(w, h, 3, 4), False, 1.0), (noise(w, h, 4, 4), True, 0.25),
             (noise(w, h, 5, 4), True, 1.0)]  # fmt: skip
    layers = [Layer(f"L{i}", px, visible=v, opacity=o) for i, (px, v, o) in enumerate(parts)]
    assert np.array_equal(composite(layers, (w, h)), reference(parts, w, h))
    # order matters: the same layers in another order flatten as the reference says in that order
    assert np.array_equal(composite(layers[::-1], (w, h)), reference(parts[::-1], w, h))
    assert not np.array_equal(reference(parts[::-1], w, h), reference(parts, w, h))
    # a rectangle over the flatten of the layers below gives the whole flatten's pixels there
    below = composite(layers[:2], (w, h))
    rect = (5, 7, 20, 11)
    window = composite(layers[2:], (w, h), rect, base=below)
    assert np.array_equal(window, reference(parts, w, h)[7:18, 5:25])
    # the document's image is the flattened stack, through its own operations
    doc = Document()
    doc.set_image(array_to_qimage(parts[0][0][..., :3]))
    for i, (px, v, o) in enumerate(parts[1:], 1):
        doc.add_image_layer(array_to_qimage(px), name=f"L{i}")
        doc.set_layer_opacity(doc.active, o)
        doc.set_layer_visible(doc.active, v)
    assert np.array_equal(rgb(doc.image), reference(parts, w, h))


# -- operations and their undo ------------------------------------------------------------------------------


def test_every_layer_operation_is_one_undo_step_that_restores_exact_pixels():
    doc = document()
    states = [stack(doc)]
    labels = []

    def step(op, *args, **kw):
        n = len(doc.history.entries)
        assert op(*args, **kw) is not False
        assert len(doc.history.entries) == n + 1  # one entry each
        labels.append(doc.history.undo_label())
        states.append(stack(doc))

    step(doc.add_layer)
    step(stroke, doc, [(10, 10), (40, 20)], (255, 0, 0))
    step(doc.rename_layer, 1, "Sky")
    step(doc.set_layer_opacity, 1, 0.5)
    step(doc.add_layer)
    step(stroke, doc, [(30, 5), (30, 40)], (0, 0, 255), 13)
    step(stroke, doc, [(30, 5), (30, 40)], erase=True, size=5)
    step(doc.move_layer, 2, -1)
    step(doc.set_layer_visible, 0, False)
    step(doc.move_layer, 1, 1)
    step(doc.set_layer_visible, 0, True)
    step(doc.merge_down, 2)
    step(doc.add_image_layer, array_to_qimage(noise(20, 10, 9, 4)), None, "Sticker")
    step(doc.delete_layer, 1)
    assert labels == ["Add layer", "Paint", "Rename layer", "Layer opacity", "Add layer", "Paint", "Erase paint",
                      "Move layer down", "Hide layer", "Move layer up", "Show layer", "Merge down", "Add image",
                      "Delete layer"]  # fmt: skip
    assert all(not same(a, b) for a, b in zip(states, states[1:], strict=False))  # every step changed something
    for i in range(len(states) - 1, 0, -1):
        assert doc.undo()
        assert same(stack(doc), states[i - 1]), f"undo of {labels[i - 1]}"
    assert not doc.history.can_undo() or doc.history.undo_label() == "Open image"
    for i in range(1, len(states)):
        assert doc.redo()
        assert same(stack(doc), states[i]), f"redo of {labels[i - 1]}"


def test_merge_down_flattens_as_the_two_layers_did():
    doc = document()
    doc.add_layer()
    stroke(doc, [(5, 5), (50, 30)], (10, 200, 30), 15)
    doc.set_layer_opacity(1, 0.7)
    doc.add_image_layer(array_to_qimage(noise(64, 48, 7, 4)), None, "Noise")
    doc.set_layer_opacity(2, 0.4)
    before = rgb(doc.image)
    assert doc.merge_down(2) and len(doc.layers) == 2 and doc.layers[1].opacity == 1.0
    assert np.abs(rgb(doc.image).astype(int) - before).max() <= 2  # one rounding step more per channel


def test_opacity_drags_fold_into_one_step_and_the_history_counts_shared_layers_once():
    doc = document(256, 256)
    for _ in range(3):
        doc.add_layer()
    doc.set_layer_opacity(1, 0.9)
    n = len(doc.history.entries)
    doc.set_layer_opacity(1, 0.5)
    doc.set_layer_opacity(1, 0.3)
    assert len(doc.history.entries) == n and doc.history.undo_label() == "Layer opacity"
    doc.undo()
    assert doc.layers[1].opacity == 1.0
    # ten visibility toggles hold the layers' arrays once: each adds a flattened image and a mask-free state
    base = doc.history.nbytes()
    for _ in range(5):
        doc.set_layer_visible(2, False)
        doc.set_layer_visible(2, True)
    image_bytes = doc.image.sizeInBytes()
    assert doc.history.nbytes() - base <= 10 * image_bytes
    assert doc.history.nbytes() - base < 10 * 4 * 256 * 256 * 4  # not the four layers again per entry


def test_a_colour_stroke_changes_only_the_active_layer_and_redraws_only_its_rectangle():
    doc = document()
    doc.add_layer()
    doc.add_layer()
    doc.set_active(1)
    before = [la.pixels.copy() for la in doc.layers]
    image = rgb(doc.image)
    rects = []
    doc.pixels_changed.connect(rects.append)
    stroke(doc, [(10, 10), (20, 12)], (0, 255, 0), 5)
    after = [la.pixels for la in doc.layers]
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[2], before[2])
    assert not np.array_equal(after[1], before[1])
    assert after[1][11, 15].tolist() == [0, 255, 0, 255] and after[1][40, 60, 3] == 0
    changed = np.argwhere((rgb(doc.image) != image).any(axis=2))
    x0 = min(r[0] for r in rects)
    assert changed[:, 1].min() >= x0 and rgb(doc.image)[11, 15].tolist() == [0, 255, 0]
    assert np.array_equal(rgb(doc.image), composite(doc.layers, doc.size()))  # the dirty rects add up to a flatten
    assert doc.history.undo_label() == "Paint"
    # a hidden layer is not painted
    doc.set_layer_visible(1, False)
    assert not doc.begin_paint((1, 2, 3), 5, 1.0)


# -- the canvas: brush, eraser, picker ----------------------------------------------------------------------


def press(canvas, kind, x, y, buttons=Qt.MouseButton.LeftButton, mods=Qt.KeyboardModifier.NoModifier):
    pos = canvas.from_image(x, y)
    button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
    QApplication.sendEvent(canvas, QMouseEvent(kind, pos, pos, button, buttons, mods))


def drag(canvas, points) -> None:
    press(canvas, QEvent.Type.MouseButtonPress, *points[0])
    for p in points[1:]:
        press(canvas, QEvent.Type.MouseMove, *p)
    press(canvas, QEvent.Type.MouseButtonRelease, *points[-1], buttons=Qt.MouseButton.NoButton)


def test_the_canvas_paints_erases_and_picks_colours_on_the_active_layer(qtbot, window):
    s, doc, canvas = window.session, window.session.document, window.canvas
    s.show_image(array_to_qimage(np.full((60, 80, 3), (30, 60, 90), np.uint8)))
    window.layers_panel.add_button.click()
    assert len(doc.layers) == 2 and doc.active == 1
    assert [window.layers_panel.list.item(i).text() for i in range(2)] == ["Paint 1", "Image"]  # top first
    canvas.set_tool("paint")
    assert window.layers_panel.tool_buttons["paint"].isChecked()
    assert window.canvas_toolbar.tools.checkedButton() is None  # the mask tools are off
    canvas.set_paint_colour(QColor(250, 200, 0))
    canvas.set_brush_size(8)
    drag(canvas, [(10, 30), (40, 30), (70, 30)])
    assert doc.layers[1].pixels[30, 40].tolist() == [250, 200, 0, 255]
    assert doc.layers[0].pixels[30, 40].tolist() == [30, 60, 90, 255]  # the image under it is untouched
    assert rgb(doc.image)[30, 40].tolist() == [250, 200, 0] and doc.mask is None  # not the mask
    assert np.array_equal(rgb(canvas.image()), rgb(doc.image))  # what the canvas shows, rectangle by rectangle
    canvas.set_tool("paint_eraser")
    drag(canvas, [(40, 20), (40, 40)])
    assert doc.layers[1].pixels[30, 40, 3] == 0 and rgb(doc.image)[30, 40].tolist() == [30, 60, 90]
    assert np.array_equal(rgb(canvas.image()), rgb(doc.image))
    # the picker: Alt + click with the paint tool, and the picker tool, take the flattened colour
    canvas.set_tool("paint")
    press(canvas, QEvent.Type.MouseButtonPress, 20.5, 30.5, mods=Qt.KeyboardModifier.AltModifier)
    assert canvas.paint_colour().getRgb()[:3] == (250, 200, 0)
    canvas.set_tool("picker")
    press(canvas, QEvent.Type.MouseButtonPress, 5.5, 5.5)
    assert canvas.paint_colour().getRgb()[:3] == (30, 60, 90)
    assert [e.label for e in doc.history.entries][-3:] == ["Add layer", "Paint", "Erase paint"]
    window.undo_action.trigger() if hasattr(window, "undo_action") else s.undo()
    assert rgb(doc.image)[30, 40].tolist() == [250, 200, 0]
    assert np.array_equal(rgb(canvas.image()), rgb(doc.image))


def test_the_panel_drives_visibility_opacity_order_and_merge(qtbot, window):
    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(np.full((40, 40, 3), 200, np.uint8)))
    panel.add_button.click()
    stroke(doc, [(20, 20)], (0, 0, 0), 10)
    top = panel.list.item(0)
    top.setCheckState(Qt.CheckState.Unchecked)
    assert not doc.layers[1].visible and rgb(doc.image)[20, 20].tolist() == [200, 200, 200]
    top.setCheckState(Qt.CheckState.Checked)
    panel.opacity.setValue(50)
    assert doc.layers[1].opacity == 0.5 and rgb(doc.image)[20, 20].tolist() == [100, 100, 100]
    panel.list.item(0).setText("Shadow")
    assert doc.layers[1].name == "Shadow"
    panel.down_button.click()
    assert [la.name for la in doc.layers] == ["Shadow", "Image"] and doc.active == 0
    assert not panel.down_button.isEnabled() and not panel.merge_button.isEnabled()
    panel.up_button.click()
    panel.merge_button.click()
    assert len(doc.layers) == 1 and rgb(doc.image)[20, 20].tolist() == [100, 100, 100]
    assert not panel.delete_button.isEnabled()


# -- the engine's input and results -------------------------------------------------------------------------


def test_the_engine_gets_the_flattened_stack_and_results_land_as_the_artist_chose(qtbot, make_window):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc = window.session, window.session.document
    s.show_image(array_to_qimage(noise(72, 56, 3)))
    doc.add_layer()
    stroke(doc, [(10, 10), (60, 40)], (255, 0, 255), 12)
    doc.add_image_layer(array_to_qimage(noise(72, 56, 4, 4)), None, "Texture")
    doc.set_layer_opacity(2, 0.3)
    flat = rgb(doc.image)
    assert np.array_equal(flat, composite(doc.layers, doc.size()))
    s.set_mode("img2img")
    with qtbot.waitSignal(s.result_image):
        s.generate()
    r = fake.requests[-1]
    assert r.mode == "img2img" and np.array_equal(r.init_image, flat)
    # default: the result is a new layer on top, one undo step; what was under it stays
    assert len(doc.layers) == 4 and doc.layers[-1].name.startswith(doc.history.undo_label())
    assert doc.active == 3 and window.layers_panel.results_box.currentText() == "New layer"
    s.undo()
    assert len(doc.layers) == 3 and np.array_equal(rgb(doc.image), flat)
    # the other choice: the result replaces the active layer (here the paint layer), remembered in the settings
    window.layers_panel.results_box.setCurrentIndex(1)
    assert not s.results_as_layer and not window.settings.results_as_layer
    doc.set_active(1)
    with qtbot.waitSignal(s.result_image):
        s.generate()
    assert len(doc.layers) == 3 and doc.layers[1].name == "Paint 1" and doc.layers[1].opaque_source
    assert np.array_equal(doc.layers[0].pixels[..., :3], noise(72, 56, 3))


def test_paste_and_open_add_a_layer_and_the_first_image_sets_the_size(qtbot, window, tmp_path):
    s, doc = window.session, window.session.document
    QApplication.clipboard().setImage(array_to_qimage(np.full((30, 50, 3), 9, np.uint8)))
    window.paste_action.trigger()
    assert doc.size() == (50, 30) and len(doc.layers) == 1
    QApplication.clipboard().setImage(array_to_qimage(np.full((10, 20, 3), 200, np.uint8)))
    window.paste_action.trigger()
    assert doc.size() == (50, 30) and len(doc.layers) == 2  # the canvas keeps its size
    flat = rgb(doc.image)
    assert flat[15, 25].tolist() == [200] * 3 and flat[0, 0].tolist() == [9] * 3  # centred, the rest shows through
    path = tmp_path / "big.png"
    array_to_qimage(np.full((40, 90, 3), 77, np.uint8)).save(str(path))
    assert s.open_image(path)
    assert doc.size() == (50, 30) and len(doc.layers) == 3 and doc.layers[2].name == "big.png"
    assert rgb(doc.image)[0, 0].tolist() == [77] * 3  # larger: centred, cut off at the canvas
    s.undo()
    assert len(doc.layers) == 2


# -- projects and the autosave ------------------------------------------------------------------------------


def three_layers() -> Document:
    doc = document(48, 40, 11)
    doc.add_layer("Colours")
    stroke(doc, [(5, 5), (40, 30)], (0, 128, 255), 9)
    doc.set_layer_opacity(1, 0.6)
    doc.add_image_layer(array_to_qimage(noise(48, 40, 12, 4)), None, "Texture")
    doc.set_layer_visible(2, False)
    doc.set_active(1)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 10:30] = 255
    doc.set_mask(mask, "Load mask")
    return doc


def test_a_project_with_three_layers_opens_equal(tmp_path):
    doc = three_layers()
    path = project.save(tmp_path / "p.lsproj", doc, {"prompt": "x"})
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read("project.json"))
    assert [la["name"] for la in m["layers"]] == ["Image", "Colours", "Texture"] and m["active"] == 1
    assert [la["visible"] for la in m["layers"]] == [True, True, False] and m["layers"][1]["opacity"] == 0.6
    p = project.load(path)
    fresh = Document()
    fresh.restore(p.state, p.entries, p.cursor)
    assert same(stack(fresh), stack(doc)) and np.array_equal(fresh.mask, doc.mask)
    # an undo and a redo come back to the layers, as in the document that was saved
    fresh.undo()
    assert np.array_equal(rgb(fresh.image), rgb(doc.image))  # the mask step: the picture is the same
    fresh.undo()
    assert fresh.redo() and fresh.redo()
    doc.undo(), doc.undo(), doc.redo(), doc.redo()
    assert same(stack(fresh), stack(doc))
    # and it keeps working: paint on the restored colour layer
    fresh.set_active(1)
    stroke(fresh, [(2, 2)], (1, 2, 3), 3)
    assert fresh.layers[1].pixels[2, 2].tolist() == [1, 2, 3, 255]


def test_an_old_single_layer_project_opens(tmp_path):
    doc = document(32, 24, 5)
    path = project.save(tmp_path / "old.lsproj", doc, {})
    # what the writer before layers wrote: one layer that is the current image, no "active"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    m = json.loads(members["project.json"])
    assert m["layers"] == [{"name": "Image", "visible": True, "opacity": 1.0, "image": m["current"]["image"]}]
    del m["active"]
    members["project.json"] = json.dumps(m).encode()
    old = tmp_path / "old2.lsproj"
    with zipfile.ZipFile(old, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    p = project.load(old)
    fresh = Document()
    fresh.restore(p.state, p.entries, p.cursor)
    assert len(fresh.layers) == 1 and np.array_equal(rgb(fresh.image), rgb(doc.image))
    assert np.array_equal(fresh.layers[0].pixels[..., :3], rgb(doc.image))
    fresh.add_layer()
    assert len(fresh.layers) == 2


def test_the_autosave_keeps_the_layers(qtbot, autosaved):
    doc = three_layers()
    fresh = autosaved(doc)
    assert same(stack(fresh), stack(doc)) and np.array_equal(fresh.mask, doc.mask)


@pytest.mark.parametrize("size", [(64, 48)])
def test_canvas_shows_strokes_in_place_of_a_full_redraw(qtbot, size):
    """The canvas copies only the stroke's rectangles: its image is not replaced during a stroke."""
    from studio.ui.canvas import Canvas

    doc = document(*size)
    canvas = Canvas()
    qtbot.addWidget(canvas)
    canvas.set_document(doc)
    canvas.set_image(doc.image)
    canvas.resize(200, 160)
    canvas.show()
    doc.add_layer()
    canvas.set_image(doc.image)
    replaced = []
    canvas.image_changed.connect(lambda: replaced.append(1))
    canvas.set_tool("paint")
    canvas.set_paint_colour(QColor(0, 0, 0))
    drag(canvas, [(5, 5), (30, 20), (60, 40)])
    assert not replaced and np.array_equal(rgb(canvas.image()), rgb(doc.image))
    assert rgb(doc.image)[20, 30].tolist() == [0, 0, 0]
    _ = QPointF
