"""Inpainting from the window on the fake backend: modes, the canvas as input, results, undo, masks, files."""

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QApplication

from studio.backends.fake import FakeBackend
from studio.qimage import array_to_qimage, qimage_to_array


def canvas_image(w=96, h=80, value=(40, 120, 200)) -> QImage:
    image = QImage(w, h, QImage.Format.Format_RGB888)
    image.fill(QColor(*value))
    return image


def square_mask(w=96, h=80, box=(20, 16, 30, 24)) -> np.ndarray:
    x, y, bw, bh = box
    mask = np.zeros((h, w), np.uint8)
    mask[y : y + bh, x : x + bw] = 255
    return mask


def rgb(image: QImage) -> np.ndarray:
    return qimage_to_array(image.convertToFormat(QImage.Format.Format_RGB888))[..., :3]


def test_the_mode_switch_changes_the_panel(qtbot, window):
    panel = window.prompt_panel
    assert not panel.canvas_options.isVisibleTo(panel) and panel.generate_button.text().strip() == "Generate"
    qtbot.mouseClick(panel.mode_switch.buttons["inpaint"], Qt.MouseButton.LeftButton)
    assert window.session.params.mode == "inpaint"
    assert panel.canvas_options.isVisibleTo(panel) and panel.canvas_options.area.isVisibleTo(panel)
    assert panel.generate_button.text().strip() == "Inpaint"
    qtbot.keyClick(panel.prompt, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert window.session.params.mode == "img2img" and panel.mode_switch.buttons["img2img"].isChecked()
    assert panel.canvas_options.strength.isVisibleTo(panel) and not panel.canvas_options.area.isVisibleTo(panel)


def test_inpainting_needs_an_image_and_a_mask(qtbot, window, fake):
    window.session.set_mode("inpaint")
    assert window.session.generate() is None
    assert "open, paste or generate an image first" in window.banner.label.text()
    window.session.show_image(canvas_image())
    assert window.session.generate() is None
    assert "Paint a mask" in window.banner.label.text()
    assert fake.requests == []


def test_inpaint_sends_the_canvas_its_mask_and_the_options_and_the_result_lands_undoably(qtbot, window, out_dir):
    fake = FakeBackend(auto=True)
    window.session._worker._backend = fake  # a free-running fake for this test
    s, doc = window.session, window.session.document
    s.show_image(canvas_image())
    mask = square_mask()
    doc.set_mask(mask, "Brush stroke")
    panel = window.prompt_panel
    s.set_mode("inpaint")
    panel.canvas_options.strength.setValue(0.6)
    panel.canvas_options.mask_blur.setValue(6)
    panel.canvas_options.area.setCurrentIndex(panel.canvas_options.area.findData("masked"))
    panel.canvas_options.padding.setValue(16)
    panel.canvas_options.content.setCurrentIndex(panel.canvas_options.content.findData("fill"))
    panel.seed.setText("9")
    before = rgb(doc.image)
    with qtbot.waitSignal(s.result_image) as saved:
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    r = fake.requests[-1]
    assert r.mode == "inpaint" and np.array_equal(r.init_image, before) and np.array_equal(r.mask, mask)
    assert (r.strength, r.inpaint.mask_blur, r.inpaint.area, r.inpaint.padding, r.inpaint.masked_content) == (
        0.6, 6, "masked", 16, "fill")  # fmt: skip
    result = rgb(doc.image)
    assert result.shape == before.shape and doc.path is not None and str(doc.path) == saved.args[0]
    assert np.array_equal(result[mask == 0], before[mask == 0])  # the fake keeps unmasked pixels
    assert (result[mask == 255][:, 0] == 9).all()  # red = seed inside the mask
    assert np.array_equal(doc.mask, mask)  # the mask stays for another try
    assert list(out_dir.glob("*.png")) and "Undo Inpaint" in window.undo_action.text().replace("&", "")
    s.undo()
    assert np.array_equal(rgb(doc.image), before) and np.array_equal(doc.mask, mask)
    s.redo()
    assert np.array_equal(rgb(doc.image), result)


def test_image_to_image_uses_the_canvas_at_its_size(qtbot, make_window):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    window.session.show_image(canvas_image(72, 56))
    window.session.set_mode("img2img")
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    r = fake.requests[-1]
    assert r.mode == "img2img" and r.init_image.shape == (56, 72, 3) and r.mask is None
    assert window.session.document.size() == (72, 56)


def test_the_live_inpaint_preview_is_drawn_through_the_mask_over_the_canvas(qtbot, window, fake):
    s, doc = window.session, window.session.document
    s.show_image(canvas_image())
    doc.set_mask(square_mask(), "Brush stroke")
    s.set_mode("inpaint")
    overlays = []
    s.live_overlay.connect(lambda image, rect: overlays.append((image, rect)))
    s.generate()
    fake.allow(1)
    qtbot.waitUntil(lambda: len(overlays) == 1)
    image, rect = overlays[0]
    assert rect == (0, 0, 96, 80)  # whole picture: the preview covers the image
    alpha = qimage_to_array(image, alpha=True)[..., 3]
    assert alpha.shape == (8, 8) and alpha[0, 0] == 0 and alpha[3, 3] > 200  # transparent outside the mask
    assert window.canvas.image().size() == doc.image.size()  # the canvas keeps the image, not the preview
    fake.run_free()
    qtbot.waitUntil(lambda: overlays[-1] == (None, None))  # cleared when the run ends


def test_paste_new_canvas_and_use_as_input(qtbot, window):
    s, doc = window.session, window.session.document
    QApplication.clipboard().setImage(canvas_image(40, 24, (200, 10, 10)))
    window.paste_action.trigger()
    assert doc.size() == (40, 24) and rgb(doc.image)[0, 0].tolist() == [200, 10, 10]
    assert s.params.mode == "img2img"  # an image to work on
    assert s.new_canvas(64, 32, (0, 0, 0)) and doc.size() == (64, 32) and rgb(doc.image).max() == 0
    assert not s.new_canvas(5000, 32) and "8 to 4096" in window.banner.label.text()
    assert doc.size() == (64, 32)  # unchanged
    s.undo()
    assert doc.size() == (40, 24)


def test_save_and_load_a_mask(qtbot, window, tmp_path):
    s, doc = window.session, window.session.document
    s.show_image(canvas_image())
    mask = square_mask()
    doc.set_mask(mask, "Brush stroke")
    path = s.save_mask(tmp_path / "m")
    assert path == tmp_path / "m.png" and path.is_file()
    doc.clear_mask()
    assert doc.mask is None
    assert s.load_mask(path) and np.array_equal(doc.mask, mask)
    small = np.zeros((40, 48), np.uint8)
    small[:, 24:] = 255
    from PIL import Image

    Image.fromarray(small).save(tmp_path / "small.png")
    assert s.load_mask(tmp_path / "small.png")
    assert "scaled to the image's 96×80" in window.status_label.text()
    assert doc.mask.shape == (80, 96) and doc.mask[40, 90] == 255 and doc.mask[40, 5] == 0
    before = doc.mask.copy()
    (tmp_path / "not.png").write_text("hello")
    assert not s.load_mask(tmp_path / "not.png") and "not an image" in window.banner.label.text()
    assert np.array_equal(doc.mask, before)  # a bad file changes nothing


def test_studio_opens_an_image_given_at_launch(monkeypatch, tmp_path, capsys):
    import studio.app
    from studio.__main__ import main

    got = {}
    monkeypatch.setattr(studio.app, "run_app", lambda **kw: got.update(kw) or 0)
    image = tmp_path / "photo.png"
    array_to_qimage(np.zeros((8, 8, 3), np.uint8)).save(str(image))
    assert main([str(image), "--output-dir", str(tmp_path)]) == 0
    assert got["image"] == str(image) and got["output_dir"] == str(tmp_path)
    assert main([str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_the_crop_rectangle_follows_mask_and_options(qtbot, window, area):
    pytest.importorskip("studio.core.inpaint")
    s, doc = window.session, window.session.document
    s.show_image(canvas_image(256, 192))
    rects = []
    s.crop_changed.connect(rects.append)
    s.set_mode("inpaint")
    s.update_params(inpaint_area=area, inpaint_padding=16, mask_blur=0)
    doc.set_mask(square_mask(256, 192, (100, 80, 20, 20)), "Brush stroke")
    if area == "whole":
        assert s.inpaint_crop() is None
        return
    x, y, w, h = s.inpaint_crop()
    assert x <= 100 - 16 and y <= 80 - 16 and x + w >= 120 + 16 and y + h >= 100 + 16
    assert w == h and w % 8 == 0  # the working aspect (native: square), aligned to 8
    assert rects[-1] == (x, y, w, h)
    s.update_params(mode="txt2img")
    assert s.inpaint_crop() is None and rects[-1] is None


def test_the_window_offers_the_canvas_back_after_a_crash(qtbot, make_window, tmp_path):
    import shutil

    folder = tmp_path / "autosave"
    first = make_window()
    first.start_autosave(folder, ask=lambda info: pytest.fail("nothing to restore yet"))
    doc = first.session.document
    first.session.show_image(canvas_image())
    doc.set_mask(square_mask(), "Brush stroke")
    first.session.new_canvas(64, 48, (10, 20, 30))
    first.session.undo()  # back to the masked image: one redo step waits
    assert first.autosaver.flush(10)
    crashed = tmp_path / "crashed"
    shutil.copytree(folder, crashed, ignore=shutil.ignore_patterns("lock"))  # files without a clean shutdown
    asked = []
    second = make_window()
    assert second.start_autosave(crashed, ask=lambda info: asked.append(info) or True)
    restored = second.session.document
    assert asked[0].size == (96, 80) and asked[0].has_mask
    assert np.array_equal(rgb(restored.image), rgb(doc.image)) and np.array_equal(restored.mask, square_mask())
    assert second.redo_action.isEnabled()
    second.session.redo()
    assert restored.size() == (64, 48)
    first.close()
    third = make_window()
    assert not third.start_autosave(folder, ask=lambda info: pytest.fail("a clean close leaves nothing to offer"))


def test_extend_canvas_masks_the_new_area_and_refuses_too_much(qtbot, window):
    s, doc = window.session, window.session.document
    s.show_image(canvas_image(96, 80))
    before = rgb(doc.image)
    assert s.extend_canvas(16, 0, 32, 8, overlap=8)
    assert doc.size() == (96 + 48, 80 + 8) and s.params.mode == "inpaint"
    m = doc.mask
    assert (m[:, :16] == 255).all() and (m[:, -32:] == 255).all() and (m[-8:, :] == 255).all()
    assert (m[10:60, 30:100] == 0).all()  # the old image's inside is kept
    assert np.array_equal(rgb(doc.image)[0:80, 16:112], before)  # and its pixels, where not masked, are the old ones
    assert not s.extend_canvas(4000, 0, 0, 0)
    assert "4096" in window.banner.label.text() and doc.size() == (144, 88)  # nothing changed
    s.undo()
    assert doc.size() == (96, 80) and doc.mask is None


def test_an_inpainted_png_gives_its_options_back_to_the_panel(qtbot, window, tmp_path):
    from studio.core.metadata import parameters_for
    from studio.core.output import save_image
    from studio.core.requests import GenerateRequest

    req = GenerateRequest.from_fields(prompt="a cat", mode="inpaint", init_image=np.zeros((64, 64, 3), np.uint8),
                          mask=np.full((64, 64), 255, np.uint8), strength=0.55, mask_blur=9, inpaint_area="masked",
                          inpaint_padding=48, masked_content="noise", width=64, height=64, seed=3)  # fmt: skip
    path = save_image(np.zeros((64, 64, 3), np.uint8), tmp_path / "inpainted.png",
                      parameters_for(req, 3, "builtin", "", "0.1.0"))  # fmt: skip
    assert window.session.open_image(path)
    p, opts = window.session.params, window.prompt_panel.canvas_options
    assert (p.strength, p.mask_blur, p.inpaint_area, p.inpaint_padding, p.masked_content) == (
        0.55, 9, "masked", 48, "noise")  # fmt: skip
    assert opts.mask_blur.value() == 9 and opts.area.currentData() == "masked" and opts.content.currentData() == "noise"


def test_a_second_window_says_in_the_window_that_crash_protection_is_off(make_window, tmp_path):
    folder = tmp_path / "autosave"
    first = make_window()
    first.start_autosave(folder, ask=lambda info: False)
    assert first.autosaver.enabled and not first.banner.isVisible()
    second = make_window()
    second.start_autosave(folder, ask=lambda info: False)
    assert not second.autosaver.enabled
    assert second.banner.isVisible() and "crash protection" in second.banner.label.text()
    assert "crash protection" not in first.banner.label.text()
