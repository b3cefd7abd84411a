"""Control layers: added from the layers panel, drawn on with the canvas brush (white lines on black), made by a
preprocessor, shown as an overlay, sent as the request's ControlNets in every mode (hidden ones not), undone step
by step, and kept by projects and the autosave."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QColor, QImage, QMouseEvent
from PySide6.QtWidgets import QApplication

from studio.backends.fake import FakeBackend
from studio.core import preprocess
from studio.core.metadata import read_parameters
from studio.qimage import array_to_qimage, qimage_to_array
from studio.session import library, project
from studio.session.controls import ControlProps, control_image
from studio.session.document import Document
from studio.ui.control_props import NO_MODELS

SCRIBBLE = "/models/ControlNet/control_v11p_sd15_scribble.safetensors"
CANNY = "/models/ControlNet/control_v11p_sd15_canny.safetensors"


@pytest.fixture
def nets(monkeypatch):
    """Two ControlNet models in the library (the library lists none until ControlNet files are detected)."""
    real = library.addon_choices
    found = [("control_v11p_sd15_canny", CANNY), ("control_v11p_sd15_scribble", SCRIBBLE)]

    def choices(folders, kind):
        return list(found) if kind == "controlnet" else real(folders, kind)

    monkeypatch.setattr(library, "addon_choices", choices)
    return found


def picture(w=80, h=64) -> np.ndarray:
    img = np.full((h, w, 3), (200, 210, 220), np.uint8)
    img[20:40, 25:55] = (40, 60, 160)  # a dark rectangle: canny has edges to find
    return img


def press(canvas, kind, x, y, buttons=Qt.MouseButton.LeftButton):
    pos = canvas.from_image(x, y)
    button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
    QApplication.sendEvent(canvas, QMouseEvent(kind, pos, pos, button, buttons, Qt.KeyboardModifier.NoModifier))


def drag(canvas, points) -> None:
    press(canvas, QEvent.Type.MouseButtonPress, *points[0])
    for p in points[1:]:
        press(canvas, QEvent.Type.MouseMove, *p)
    press(canvas, QEvent.Type.MouseButtonRelease, *points[-1], buttons=Qt.MouseButton.NoButton)


def rgb(img: QImage) -> np.ndarray:
    return qimage_to_array(img)


def run(qtbot, s, fake, mode="txt2img"):
    s.set_mode(mode)
    with qtbot.waitSignal(s.result_image):
        assert s.generate() is not None
    return fake.requests[-1]


def test_a_scribble_drawn_on_a_control_layer_is_sent_with_its_settings(qtbot, make_window, nets):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc, canvas, panel = window.session, window.session.document, window.canvas, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    s.update_params(width=80, height=64)  # results of the canvas size land as layers: the stack stays
    flat = rgb(doc.image)
    panel.control_button.click()
    assert len(doc.layers) == 2 and doc.active == 1
    layer = doc.layers[1]
    assert layer.control == ControlProps("scribble", SCRIBBLE)  # the model whose name says the type
    assert panel.list.item(0).text() == "Control 1  ·  Control: scribble" and not panel.list.item(0).icon().isNull()
    props = panel.control_props
    assert props.isVisibleTo(panel) and props.title.text() == "Control: scribble"
    assert canvas.tool() == "paint"  # ready to draw
    canvas.set_paint_colour(QColor(0, 0, 0))  # whatever the paint colour, a control line is white
    canvas.set_brush_size(6)
    drag(canvas, [(10, 50), (40, 50), (70, 50)])
    assert doc.layers[1].pixels[50, 40].tolist() == [255, 255, 255, 255] and doc.layers[1].pixels[5, 5, 3] == 0
    assert np.array_equal(rgb(doc.image), flat)  # not part of the picture
    overlay = qimage_to_array(canvas.control_overlay(), alpha=True)
    assert overlay[50, 40, 3] > 150 and overlay[5, 5, 3] == 0 and overlay[30, 40, 3] == 0
    # the settings, from the properties editor
    props.weight.setValue(0.75)
    props.start.setValue(0.1)
    props.end.setValue(0.8)
    props.mode_box.setCurrentText("ControlNet is more important")
    r = run(qtbot, s, fake)
    assert len(r.controls) == 1
    c = r.controls[0]
    assert (c.model, c.module, c.weight, c.start, c.end, c.mode) == (
        SCRIBBLE, "scribble", 0.75, 0.1, 0.8, "ControlNet is more important")
    assert c.image.shape == (64, 80, 3)
    assert c.image[50, 40].tolist() == [255, 255, 255] and not c.image[:44].any()  # white lines on black
    assert np.array_equal(c.image, control_image(doc.layers[1].pixels))
    # other modes send it too; the picture (without the control layer) stays the init image
    assert doc.undo() == doc.history.entries[-1].label  # the txt2img result, landed as a layer on top: gone
    r = run(qtbot, s, fake, "img2img")
    assert np.array_equal(r.init_image, flat) and np.array_equal(r.controls[0].image, c.image)
    doc.set_mask(np.pad(np.full((10, 10), 255, np.uint8), ((0, 54), (0, 70))))
    r = run(qtbot, s, fake, "inpaint")
    assert r.mask is not None and len(r.controls) == 1 and r.controls[0].weight == 0.75


def test_canny_from_the_picture_two_controls_at_once_and_hidden_ones_not_sent(qtbot, make_window, nets):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    s.update_params(width=80, height=64)
    panel.add_control()
    drawn = doc.layers[1]
    doc.add_layer()  # a paint layer with a blob: a source for the preprocessor other than the picture
    doc.begin_paint((0, 0, 0), 16, 1.0)
    doc.paint_to((60, 15))
    doc.end_paint()
    panel.add_control()
    props = panel.control_props
    props.type_box.setCurrentIndex(props.type_box.findData("canny"))
    assert doc.layers[-1].control.module == "canny" and props.title.text() == "Control: canny"
    assert [props.source_box.itemText(i) for i in range(props.source_box.count())] == [
        "Flattened image", "Layer: Paint 1", "Layer: Image"]
    assert props.run_preprocessor()
    edges = preprocess.canny(rgb(doc.image))
    assert edges.any() and np.array_equal(control_image(doc.layers[-1].pixels), edges)
    props.source_box.setCurrentIndex(1)  # the paint layer alone (over white): the blob's outline only
    assert props.run_preprocessor()
    blob = control_image(doc.layers[-1].pixels)
    assert blob[:, 60].any() and not blob[28:, :].any()  # no trace of the rectangle further down
    props.source_box.setCurrentIndex(0)
    assert props.run_preprocessor()
    props.model_box.setCurrentIndex(props.model_box.findData(CANNY))
    r = run(qtbot, s, fake)
    assert [c.module for c in r.controls] == ["scribble", "canny"]  # bottom to top
    assert [c.model for c in r.controls] == [SCRIBBLE, CANNY]
    assert not r.controls[0].image.any() and np.array_equal(r.controls[1].image, edges)
    # hide the drawn one: only canny goes
    row = panel.list.count() - 1 - [la.uid for la in doc.layers].index(drawn.uid)
    panel.list.item(row).setCheckState(Qt.CheckState.Unchecked)
    r = run(qtbot, s, fake, "img2img")
    assert [c.module for c in r.controls] == ["canny"]
    # hiding all control layers hides the overlay too; "Show control" off hides it with them visible
    assert window.canvas.control_overlay() is not None
    panel.show_controls.setChecked(False)
    assert window.canvas.control_overlay() is None
    assert len(run(qtbot, s, fake).controls) == 1  # the overlay toggle is only a view


def test_without_models_the_panel_says_so_and_a_run_is_refused_with_one_line(qtbot, make_window, monkeypatch):
    monkeypatch.setattr(library, "addon_choices", lambda folders, kind: [])
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, panel = window.session, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    panel.add_control()
    box = panel.control_props.model_box
    assert box.currentText() == NO_MODELS and not box.isEnabled()
    messages = []
    s.message.connect(lambda text, level: messages.append((text, level)))
    assert s.generate() is None
    assert messages[-1][1] == "error" and "Control 0 needs a ControlNet model" in messages[-1][0]
    # depth: the preprocessor option is disabled and says what is missing
    props = panel.control_props
    props.type_box.setCurrentIndex(props.type_box.findData("depth"))
    assert not props.run_button.isEnabled() and "none found" in props.run_button.toolTip()
    assert "models/annotators" in props.note.text()


def test_control_edits_are_undone_one_by_one(qtbot, window, nets):
    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    panel.add_control()
    props = panel.control_props
    doc.begin_paint((0, 0, 0), 8, 1.0)
    doc.paint_to((20, 20))
    doc.end_paint()
    painted = doc.layers[1].pixels.copy()
    props.weight.setValue(0.5)
    props.weight.setValue(0.4)  # a run of one setting: one step
    props.type_box.setCurrentIndex(props.type_box.findData("softedge"))
    assert props.run_preprocessor()
    soft = control_image(doc.layers[1].pixels)
    assert np.array_equal(soft, preprocess.softedge(rgb(doc.image)))
    labels = [e.label for e in doc.history.entries]
    assert labels[-5:] == ["Add control layer", "Paint", "Control weight", "Control type", "Preprocess: softedge"]
    assert s.document.undo() == "Preprocess: softedge"
    assert np.array_equal(doc.layers[1].pixels, painted) and doc.layers[1].control.module == "softedge"
    assert doc.undo() == "Control type" and props.title.text() == "Control: scribble"
    assert doc.undo() == "Control weight" and doc.layers[1].control.weight == 1.0 and props.weight.value() == 1.0
    assert doc.undo() == "Paint" and not doc.layers[1].pixels.any()
    overlay = qimage_to_array(window.canvas.control_overlay(), alpha=True)
    assert not overlay[..., 3].any()  # the overlay follows the undo
    assert doc.undo() == "Add control layer" and len(doc.layers) == 1
    assert window.canvas.control_overlay() is None
    for _ in range(5):
        doc.redo()
    assert np.array_equal(control_image(doc.layers[1].pixels), soft) and doc.layers[1].control.weight == 0.4


def controls_document() -> Document:
    doc = Document()
    doc.set_image(array_to_qimage(picture()))
    doc.add_control_layer(ControlProps("scribble", SCRIBBLE, 0.6, 0.0, 0.5, "Balanced"))
    doc.begin_paint((0, 0, 0), 5, 0.5)  # soft: grey edges must come back exactly
    doc.paint_to((10, 10))
    doc.paint_to((70, 50))
    doc.end_paint()
    doc.add_control_layer(ControlProps("canny", CANNY, 1.2, 0.2, 1.0, "My prompt is more important"),
                          image=preprocess.canny(picture()))  # fmt: skip
    doc.set_layer_visible(1, False)
    return doc


def saved_stack(doc: Document) -> list:
    return [(la.name, la.visible, la.control, la.pixels.copy()) for la in doc.layers]


def same_stack(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] and np.array_equal(x[3], y[3]) for x, y in zip(a, b, strict=True))


def test_a_project_keeps_the_control_layers(tmp_path):
    doc = controls_document()
    path = project.save(tmp_path / "c.lsproj", doc, {})
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read("project.json"))
    assert m["version"] == 2  # an older reader refuses it rather than flattening the controls into the picture
    assert [la.get("control", {}).get("module") for la in m["layers"]] == [None, "scribble", "canny"]
    assert m["layers"][2]["control"] == {"module": "canny", "model": CANNY, "weight": 1.2, "start": 0.2, "end": 1.0,
                                         "mode": "My prompt is more important"}  # fmt: skip
    p = project.load(path)
    fresh = Document()
    fresh.restore(p.state, p.entries, p.cursor)
    assert same_stack(saved_stack(fresh), saved_stack(doc))
    assert np.array_equal(rgb(fresh.image), picture())  # still not part of the picture
    assert [(c.module, c.weight) for c in fresh.control_specs()] == [("canny", 1.2)]
    assert np.array_equal(fresh.control_specs()[0].image, preprocess.canny(picture()))
    # a project without control layers is still version 1
    plain = Document()
    plain.set_image(array_to_qimage(picture()))
    with zipfile.ZipFile(project.save(tmp_path / "p.lsproj", plain, {})) as z:
        assert json.loads(z.read("project.json"))["version"] == 1


def test_the_autosave_keeps_the_control_layers(qtbot, autosaved):
    doc = controls_document()
    fresh = autosaved(doc)
    assert same_stack(saved_stack(fresh), saved_stack(doc))


def test_a_damaged_control_entry_reads_as_defaults():
    assert ControlProps.from_dict({"module": "x", "weight": 9, "start": 0.9, "end": 0.1, "mode": 3}) == ControlProps()
    assert ControlProps.from_dict("nonsense") == ControlProps()


def test_a_result_never_replaces_a_control_layer_and_controls_do_not_merge():
    doc = controls_document()
    assert doc.layers[-1].control is not None and doc.active == 2
    assert not doc.merge_down()  # a control image is not picture
    doc.land_result(array_to_qimage(np.zeros((64, 80, 3), np.uint8)), None, "Result", as_layer=False)
    assert [la.control.module if la.control else "picture" for la in doc.layers] == [
        "picture", "scribble", "canny", "picture"]  # landed as a new layer on top
    assert not rgb(doc.image).any()


def test_depth_is_offered_when_a_depth_model_is_in_a_model_folder(qtbot, window, nets, tmp_path):
    from pathlib import Path

    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    panel.add_control()
    props = panel.control_props
    props.type_box.setCurrentIndex(props.type_box.findData("depth"))
    assert not props.run_button.isEnabled()
    (tmp_path / "annotators").mkdir()
    tiny = Path(__file__).parents[1] / "data" / "tiny_depth.onnx"
    (tmp_path / "annotators" / "midas_v21_small_256.onnx").write_bytes(tiny.read_bytes())
    s.settings.model_folders = [str(tmp_path)]
    props.refresh()
    assert props.run_button.isEnabled() and props.note.text() == ""
    assert props.run_preprocessor()
    assert np.array_equal(control_image(doc.layers[-1].pixels),
                          preprocess.run("depth", rgb(doc.image), [tmp_path]))  # fmt: skip
    assert doc.history.undo_label() == "Preprocess: depth"


def test_every_undo_state_of_a_reopened_project_keeps_its_control_layers(tmp_path):
    """The saved history holds each state's whole stack: a control layer undone to and redone from after reopening is
    still a control layer with its settings (not a picture layer mixed into the image)."""
    doc = controls_document()
    doc.set_control(2, ControlProps("canny", CANNY, 0.7, 0.1, 0.9, "Balanced"), merge=False)
    states = []
    while True:  # every state, newest first
        states.append(saved_stack(doc))
        if not doc.undo():
            break
    for _ in range(len(states) - 1):
        doc.redo()
    p = project.load(project.save(tmp_path / "h.lsproj", doc, {}))
    fresh = Document()
    fresh.restore(p.state, p.entries, p.cursor)
    for i, want in enumerate(states):
        assert same_stack(saved_stack(fresh), want), f"undo state {i}"
        if i < len(states) - 1:
            assert fresh.undo()
    assert any(s[2] is not None for st in states for s in st)  # the walk went through control layers


def test_save_them_with_the_images_writes_each_control_image_beside_the_png(qtbot, make_window, nets, out_dir):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    s.update_params(width=80, height=64)
    assert not panel.control_row.isVisibleTo(panel)  # no control layer: no control row
    doc.add_control_layer(ControlProps("canny", CANNY), image=preprocess.canny(picture()))
    assert panel.control_row.isVisibleTo(panel)
    run(qtbot, s, fake)
    assert not list(out_dir.glob("*.control0.png"))  # off by default
    panel.save_controls.setChecked(True)
    assert window.settings.save_control_images
    run(qtbot, s, fake)
    (saved,) = out_dir.glob("*.control0.png")
    png = saved.with_name(saved.name.replace(".control0", ""))
    assert png.is_file()
    got = qimage_to_array(QImage(str(saved)))[..., :3]
    assert np.array_equal(got, preprocess.canny(picture()))


def test_opening_a_png_saved_with_its_control_images_brings_the_control_layers_back(qtbot, make_window, nets, out_dir):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc, panel = window.session, window.session.document, window.layers_panel
    s.show_image(array_to_qimage(picture()))
    s.update_params(width=80, height=64)
    doc.add_control_layer(ControlProps("canny", CANNY, 0.8, 0.1, 0.7, "ControlNet is more important"),
                          image=preprocess.canny(picture()))  # fmt: skip
    panel.save_controls.setChecked(True)
    run(qtbot, s, fake)
    (side,) = out_dir.glob("*.control0.png")
    png = side.with_name(side.name.replace(".control0", ""))
    assert "ControlNet 0: " in (read_parameters(png) or "")

    other = make_window(FakeBackend(auto=True))
    assert other.session.open_image(png)
    d2 = other.session.document
    specs = d2.control_specs()
    assert [(c.model, c.module, c.weight, c.start, c.end, c.mode) for c in specs] == [
        (CANNY, "canny", 0.8, 0.1, 0.7, "ControlNet is more important")]
    assert np.array_equal(specs[0].image, preprocess.canny(picture()))
    side.unlink()  # without its image: one line says so, and no control layer
    third = make_window(FakeBackend(auto=True))
    said = []
    third.session.message.connect(lambda text, *_: said.append(text))
    assert third.session.open_image(png)
    assert not third.session.document.control_specs()
    assert any("its control image is not beside the PNG" in t for t in said)


def test_on_a_server_the_control_models_are_the_servers(qtbot, make_window, monkeypatch):
    """A ComfyUI server lists its own ControlNet files (ControlNetLoader's list): the control layer's model box shows
    those, not the local folders'."""
    import dataclasses

    window = make_window(FakeBackend(auto=True))
    s = window.session
    remote = dataclasses.replace(s.info, remote_files=True, controlnets=(("cn/canny.safetensors", "canny (server)"),))
    monkeypatch.setattr(type(s), "info", property(lambda self: remote))
    assert s.addon_choices("controlnet") == [("canny (server)", "cn/canny.safetensors")]
