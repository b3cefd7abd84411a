"""Defects a new artist found (issue 23, item 8): a gallery click is one undo entry and keeps the painted mask in
the history; Ctrl+Z reaches the canvas from the prompt box; the live preview keeps the run's aspect; the model
picker lists models for the mode; an A1111 PNG's model is found by name or hash, or its absence said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage

from studio.backends.fake import FakeBackend
from studio.settings import Settings

U = "model.diffusion_model."
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TEXT = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"


def solid(w: int, h: int, red: int) -> QImage:
    image = QImage(w, h, QImage.Format.Format_RGB888)
    image.fill(QColor(red, 0, 0))
    return image


def checkpoint(path: Path, text: str, in_ch: int = 4) -> Path:
    """A header-only checkpoint the model library classifies (in_ch 7 with SD 2 text: the x4 upscaler layout)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({U + "input_blocks.0.0.weight": np.zeros((8, in_ch, 3, 3), np.float32),
               text: np.zeros((1,), np.float32)}, str(path))  # fmt: skip
    return path


def png_with(path: Path, text: str, size: tuple[int, int] = (16, 16)) -> Path:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", size, (90, 10, 10)).save(path, pnginfo=info)
    return path


def a1111_text(model: str, model_hash: str) -> str:
    return ("a castle\nNegative prompt: lowres\nSteps: 12, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 512x512, "
            f"Model hash: {model_hash}, Model: {model}, Version: v1.10.1")  # fmt: skip


# -- a gallery click is undoable -----------------------------------------------------------------


def click_item(qtbot, gallery, row: int) -> None:
    rect = gallery.visualItemRect(gallery.item(row))
    qtbot.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_a_gallery_click_is_one_undo_entry_and_undo_brings_back_the_mask(qtbot, window, tmp_path):
    s, doc = window.session, window.session.document
    s.use_as_input(solid(64, 64, 10))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 8:40] = 255
    doc.set_mask(mask, "Brush stroke")
    entries = len(doc.history.entries)
    other = tmp_path / "other.png"
    solid(32, 48, 200).save(str(other))
    window.gallery.add_result(str(other), QImage(str(other)))
    click_item(qtbot, window.gallery, 0)  # opens as a layer on top, centred (as paste and open do)
    assert (doc.image.width(), doc.image.height(), doc.image.pixelColor(32, 32).red()) == (64, 64, 200)
    assert doc.image.pixelColor(0, 0).red() == 10 and [la.name for la in doc.layers][-1] == "other.png"
    assert doc.mask is not None and np.array_equal(doc.mask, mask)  # the canvas keeps its size: the mask stays
    assert len(doc.history.entries) == entries + 1
    window.undo_action.trigger()  # undo removes the layer
    assert (doc.image.width(), doc.image.pixelColor(32, 32).red(), len(doc.layers)) == (64, 10, 1)
    assert doc.mask is not None and np.array_equal(doc.mask, mask)
    window.redo_action.trigger()
    assert doc.image.pixelColor(32, 32).red() == 200
    click_item(qtbot, window.gallery, 0)  # the image already shown: no second entry
    assert len(doc.history.entries) == entries + 1


# -- Ctrl+Z from the prompt box ------------------------------------------------------------------


def ctrl(qtbot, widget, key, shift: bool = False) -> None:
    mods = Qt.KeyboardModifier.ControlModifier | (
        Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier(0)
    )
    qtbot.keyClick(widget, key, mods)


def test_ctrl_z_in_the_prompt_undoes_typing_first(qtbot, window):
    s, doc = window.session, window.session.document
    s.use_as_input(solid(32, 32, 10))
    prompt = window.prompt_panel.prompt
    prompt.setFocus()
    qtbot.keyClicks(prompt, "a cat")
    ctrl(qtbot, prompt, Qt.Key.Key_Z)
    assert prompt.toPlainText() == ""  # the typing, not the canvas
    assert doc.history.can_undo() and doc.image.pixelColor(0, 0).red() == 10
    ctrl(qtbot, prompt, Qt.Key.Key_Z, shift=True)
    assert prompt.toPlainText() == "a cat"


def test_ctrl_z_after_a_generate_with_the_prompt_focused_undoes_the_result(qtbot, make_window):
    window = make_window(FakeBackend(auto=True))
    s, doc = window.session, window.session.document
    s.use_as_input(solid(64, 64, 10))
    s.set_mode("txt2img")
    prompt = window.prompt_panel.prompt
    prompt.setFocus()
    qtbot.keyClicks(prompt, "a cat")
    window.prompt_panel.seed.setText("7")
    prompt.setFocus()
    ctrl(qtbot, prompt, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: doc.image.pixelColor(0, 0).red() == 7, timeout=10000)
    ctrl(qtbot, prompt, Qt.Key.Key_Z)
    assert doc.image.pixelColor(0, 0).red() == 10  # the result undone on the canvas
    assert prompt.toPlainText() == "a cat"  # the prompt kept
    ctrl(qtbot, prompt, Qt.Key.Key_Z, shift=True)
    assert doc.image.pixelColor(0, 0).red() == 7


# -- the live preview keeps the run's aspect -----------------------------------------------------


def test_the_live_preview_keeps_its_own_aspect(qtbot, make_window, tmp_path):
    fake = FakeBackend()
    window = make_window(fake)
    s = window.session
    tall = tmp_path / "tall.png"
    solid(512, 768, 30).save(str(tall))
    assert s.open_image(tall)
    s.set_mode("txt2img")
    window.prompt_panel.width_box.setValue(0)  # Native size
    window.prompt_panel.height_box.setValue(0)
    assert (s.params.width, s.params.height) == (0, 0)
    window.prompt_panel.steps.setValue(3)
    s.generate()
    fake.allow(1)
    qtbot.waitUntil(lambda: window._preview_on_canvas, timeout=10000)
    shown, drawn = window.canvas.image(), window.canvas.image_rect()
    assert abs(drawn.width() / drawn.height() - shown.width() / shown.height()) < 0.02
    fake.run_free()
    qtbot.waitUntil(lambda: not s.is_running(), timeout=10000)


# -- the model picker by mode ----------------------------------------------------------------------


def picker_files(window) -> set[str]:
    combo = window.prompt_panel.model
    return {Path(combo.itemData(i)).name for i in range(combo.count()) if combo.itemData(i)}


def test_the_model_picker_offers_the_x4_upscaler_only_for_latent_upscale(qtbot, make_window, tmp_path):
    folder = tmp_path / "models"
    dream = checkpoint(folder / "dream.safetensors", SD1_TEXT)
    checkpoint(folder / "x4.safetensors", SD2_TEXT, in_ch=7)
    window = make_window(FakeBackend(), settings=Settings(model_folders=[str(folder)]))
    combo = window.prompt_panel.model
    window.prompt_panel.refresh_models()
    combo.setCurrentIndex(combo.findData(str(dream)))
    files = picker_files(window)
    assert "dream.safetensors" in files
    assert "x4.safetensors" not in files and "latent-upscaler-x4" not in files  # Text mode
    window.session.set_mode("upscale")
    options = window.prompt_panel.upscale_options
    options.method.setCurrentIndex(options.method.findData("diffusion"))
    assert "x4.safetensors" not in picker_files(window)  # a diffusion upscale runs the loaded SD model
    options.method.setCurrentIndex(options.method.findData("latent"))
    files = picker_files(window)
    assert "x4.safetensors" in files and "dream.safetensors" not in files
    assert window.session.params.model == "" and combo.currentData() == ""  # the built-in x4 upscaler
    window.session.set_mode("txt2img")
    assert "x4.safetensors" not in picker_files(window)
    assert window.session.params.model == str(dream) == combo.currentData()  # Text mode's choice is back


# -- an A1111 PNG's model ------------------------------------------------------------------------


def test_an_a1111_model_we_lack_is_said(qtbot, window, tmp_path):
    path = png_with(tmp_path / "a.png", a1111_text("dreamshaper_8", "879db523c3"))
    assert window.session.open_image(path)
    text = window.banner.label.text()
    assert window.banner.isVisible()
    assert ("The image was made with dreamshaper_8 (hash 879db523c3), which is not in your model folders: "
            "kept the built-in model") in text  # fmt: skip
    assert window.session.params.model == ""


def test_an_a1111_model_is_picked_by_name_or_by_hash(qtbot, make_window, tmp_path):
    from studio.core.metadata import model_hash

    folder = tmp_path / "models"
    dream = checkpoint(folder / "Stable-diffusion" / "dreamshaper_8.safetensors", SD1_TEXT)
    renamed = checkpoint(folder / "mine.safetensors", SD2_TEXT)
    window = make_window(FakeBackend(), settings=Settings(model_folders=[str(folder)]))
    s = window.session
    assert s.open_image(png_with(tmp_path / "a.png", a1111_text("dreamshaper_8", "0000000000")))
    assert s.params.model == str(dream)
    assert window.prompt_panel.model.currentData() == str(dream)
    assert s.open_image(png_with(tmp_path / "b.png", a1111_text("some_name", model_hash(renamed))))
    assert s.params.model == str(renamed)
    assert "not in your model folders" not in window.banner.label.text()


def test_a_model_never_hashed_is_not_hashed_on_the_window_thread(qtbot, make_window, tmp_path, monkeypatch):
    """Looking a PNG's hash up reads only the hash cache: hashing a 4 GB file there would freeze the window."""
    from studio.core import filehash

    folder = tmp_path / "models"
    fresh = checkpoint(folder / "fresh.safetensors", SD1_TEXT)
    reads: list[object] = []
    monkeypatch.setattr(filehash, "_digest", lambda *paths, start=0: reads.append(paths) or "0" * 64)
    window = make_window(FakeBackend(), settings=Settings(model_folders=[str(folder)]))
    s = window.session
    assert s.open_image(png_with(tmp_path / "c.png", a1111_text("other_name", "0000000000")))
    assert reads == [] and s.params.model != str(fresh)
    assert "not in your model folders" in window.banner.label.text()
