"""Colour strokes and layer operations are part of the saved undo history: a project file and the autosave give back
the same layers, mask and undo/redo stack, and every undo state's pixels are the ones it had before the save."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PySide6.QtGui import QImage

from studio.qimage import array_to_qimage, qimage_to_array
from studio.session import autosave, project
from studio.session.document import Document


def noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def stroke(doc: Document, points, colour, size=7, erase=False) -> None:
    assert doc.begin_paint(colour, size, 0.6, erase)
    for p in points:
        doc.paint_to(p)
    doc.end_paint()


def look(doc: Document) -> tuple:
    """Everything an undo state shows and holds: the flattened image, every layer (metadata and RGBA), active, mask."""
    layers = tuple((la.name, la.visible, la.opacity, la.pixels.tobytes()) for la in doc.layers)
    mask = None if doc.mask is None else doc.mask.tobytes()
    image = None if doc.image is None else qimage_to_array(doc.image).tobytes()
    return image, layers, doc.active, mask


def walk(doc: Document) -> tuple[list, int]:
    """Every state the history reaches, oldest first, and the cursor (put back after)."""
    start = doc.history.cursor
    while doc.undo():
        pass
    states = [look(doc)]
    while doc.redo():
        states.append(look(doc))
    while doc.history.cursor > start:
        doc.undo()
    return states, start


def busy_document() -> Document:
    """Strokes on paint layers and on an image layer, between every kind of layer operation, a mask, one redo step."""
    doc = Document()
    doc.set_image(array_to_qimage(noise(40, 32, 1)), record="Open image")
    stroke(doc, [(3, 3), (20, 10)], (200, 10, 10))  # paints the image layer itself (its source becomes pixels)
    doc.add_layer("Sketch")
    stroke(doc, [(5, 25), (35, 5)], (0, 128, 255))
    stroke(doc, [(10, 10), (12, 30)], (0, 0, 0), erase=True)
    doc.set_layer_opacity(1, 0.55)
    doc.add_image_layer(array_to_qimage(noise(40, 32, 2, 4)), None, "Texture")
    stroke(doc, [(1, 1), (39, 31)], (9, 200, 9), size=5)  # on the texture layer
    doc.rename_layer(2, "Grain")
    doc.set_layer_visible(2, False)
    doc.move_layer(1, 1)  # Sketch over Grain
    doc.add_layer("Blocks")
    stroke(doc, [(30, 3), (30, 28)], (250, 250, 0), size=9)
    doc.merge_down()  # Blocks into Sketch
    stroke(doc, [(2, 16), (38, 16)], (255, 0, 255))
    mask = np.zeros((32, 40), np.uint8)
    mask[4:20, 6:30] = 255
    doc.set_mask(mask, "Load mask")
    doc.add_layer("Scrap")
    stroke(doc, [(8, 8)], (1, 2, 3))
    doc.delete_layer()
    stroke(doc, [(20, 2), (20, 30)], (90, 40, 10))
    doc.undo()  # a redo step
    return doc


def check_equal(doc: Document, fresh: Document) -> None:
    before, cursor = walk(doc)
    assert fresh.history.cursor == cursor and len(fresh.history.entries) == len(doc.history.entries)
    assert [e.label for e in fresh.history.entries] == [e.label for e in doc.history.entries]
    assert look(fresh) == look(doc)
    after, _ = walk(fresh)
    assert len(after) == len(before) and len(set(before)) > 15  # the states differ: a real walk
    for k, (a, b) in enumerate(zip(before, after, strict=True)):
        assert a == b, f"undo state {k} ({(doc.history.entries[k - 1].label if k else 'start')}) differs"


def test_a_project_keeps_every_stroke_and_layer_operation_in_its_undo_history(tmp_path):
    doc = busy_document()
    path = project.save(tmp_path / "p.lsproj", doc, {})
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read("project.json"))
    kinds = [e["kind"] for e in m["entries"]]
    assert kinds.count("paint") == 8 and m["version"] == 2
    p = project.load(path)
    fresh = Document()
    fresh.restore(p.state, p.entries, p.cursor)
    check_equal(doc, fresh)
    # the reopened document goes on: a stroke, its undo, the redo step
    stroke(fresh, [(0, 0), (10, 10)], (5, 5, 5))
    assert fresh.undo() == "Paint" and fresh.redo() == "Paint"


def test_a_project_reopened_then_saved_again_is_still_equal(tmp_path):
    doc = busy_document()
    p = project.load(project.save(tmp_path / "a.lsproj", doc, {}))
    once = Document()
    once.restore(p.state, p.entries, p.cursor)
    p = project.load(project.save(tmp_path / "b.lsproj", once, {}))
    twice = Document()
    twice.restore(p.state, p.entries, p.cursor)
    check_equal(doc, twice)


def test_a_document_without_strokes_still_writes_version_1(tmp_path):
    doc = Document()
    doc.set_image(array_to_qimage(noise(16, 16, 3)), record="Open image")
    doc.add_layer()
    with zipfile.ZipFile(project.save(tmp_path / "v1.lsproj", doc, {})) as z:
        assert json.loads(z.read("project.json"))["version"] == 1


def test_the_autosave_keeps_every_stroke_and_layer_operation(qtbot, autosaved):
    doc = busy_document()
    check_equal(doc, autosaved(doc))


def test_an_autosave_during_a_colour_stroke_waits_for_its_end(qtbot, tmp_path):
    doc = busy_document()
    saver = autosave.Autosaver(doc, tmp_path / "save", delay_ms=0)
    try:
        assert doc.begin_paint((0, 0, 0), 9, 1.0)
        doc.paint_to((5, 5))
        assert saver._snapshot() is autosave.autosaver.POSTPONE
        doc.end_paint()
        assert saver.flush()
        loaded = autosave.load(tmp_path / "save")
    finally:
        saver.close()
    fresh = Document()
    fresh.restore(*loaded)
    check_equal(doc, fresh)


@pytest.mark.parametrize("damage", ["slot", "patch"])
def test_a_project_naming_a_missing_array_or_a_bad_patch_is_refused_in_one_line(tmp_path, damage):
    doc = busy_document()
    path = project.save(tmp_path / "p.lsproj", doc, {})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    m = json.loads(members["project.json"])
    if damage == "slot":
        m["arrays"] = m["arrays"][1:]
    else:
        paint = next(e for e in m["entries"] if e["kind"] == "paint")
        paint["rect"][2] += 3
    members["project.json"] = json.dumps(m).encode()
    bad = tmp_path / "bad.lsproj"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(project.ProjectError) as e:
        project.load(bad)
    assert "\n" not in str(e.value)
    _ = QImage
