"""The studio window with a fake engine: queue, cancel, errors, previews, timeline, files, keys."""

import json
import threading

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QWidget

from studio.backends.fake import FakeBackend
from studio.core.errors import ModelError
from studio.core.metadata import read_parameters
from studio.settings import Settings


def red(image: QImage, x: int = 0, y: int = 0) -> int:
    assert not image.isNull()
    return image.pixelColor(x, y).red()


def set_prompt(window, text: str, steps: int = 4) -> None:
    window.prompt_panel.prompt.setPlainText(text)
    window.prompt_panel.steps.setValue(steps)
    window.prompt_panel.seed.setText("7")


def click_generate(qtbot, window) -> None:
    qtbot.mouseClick(window.prompt_panel.generate_button, Qt.MouseButton.LeftButton)


def queue_rows(window) -> list[str]:
    lst = window.queue_panel.list
    return [lst.item(i).text() for i in range(lst.count())]


def test_window_shows_title_and_every_control_has_a_tooltip(window):
    assert "Latent Studio" in window.windowTitle()
    assert window.isVisible()
    panel = window.prompt_panel
    controls = [panel.prompt, panel.negative, panel.model, panel.sampler, panel.schedule, panel.steps, panel.cfg,
                panel.seed, panel.seed_random, panel.seed_reuse, panel.width_box, panel.height_box, panel.batch,
                panel.generate_button, panel.cancel_button, window.preview_panel.timeline,
                window.preview_panel.decode_button, window.preview_panel.kind, window.gallery, window.canvas,
                window.queue_panel.remove_button, window.queue_panel.list]  # fmt: skip
    for w in controls:
        assert isinstance(w, QWidget)
        assert w.toolTip(), f"{type(w).__name__} has no tooltip"
    assert "Euler a" in [panel.sampler.itemText(i) for i in range(panel.sampler.count())]


def test_generate_saves_png_with_metadata_then_shows_it(qtbot, window, fake, out_dir):
    set_prompt(window, "a red circle", steps=3)
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image) as blocker:
        click_generate(qtbot, window)
    path, image = blocker.args
    files = sorted(out_dir.glob("*.png"))
    assert [str(f) for f in files] == [path]
    text = read_parameters(files[0])
    assert text.startswith("a red circle\n") and "Steps: 3" in text and "Seed: 7" in text
    assert red(window.canvas.image()) == 7  # the fake paints red = seed
    assert window.gallery.paths()[0] == path
    assert window.session.last_seed == 7


def test_queue_order_and_visible_queue(qtbot, window, fake):
    for prompt in ("first", "second", "third"):
        set_prompt(window, prompt)
        window.session.generate()
    qtbot.waitUntil(lambda: len(queue_rows(window)) == 3 and not queue_rows(window)[0].startswith("queued"))
    rows = queue_rows(window)
    assert [r.split()[-1] for r in rows] == ["first", "second", "third"]
    assert "queued" in rows[1] and "queued" in rows[2]
    assert window.queue_panel.count_label.text() == "2 waiting"
    saved = []
    window.session.result_image.connect(lambda p, img: saved.append(p))
    fake.run_free()
    qtbot.waitUntil(lambda: len(saved) == 3)
    assert [r.prompt for r in fake.requests] == ["first", "second", "third"]
    qtbot.waitUntil(lambda: queue_rows(window) == [])


def test_cancel_while_running_with_esc(qtbot, window, fake, out_dir):
    set_prompt(window, "slow", steps=10)
    steps = []
    window.session.progress.connect(lambda s, t, eta: steps.append(s))
    window.session.generate()
    fake.allow(3)
    qtbot.waitUntil(lambda: 3 in steps)
    assert window.prompt_panel.cancel_button.isEnabled()
    with qtbot.waitSignal(window.session.job_cancelled):
        qtbot.keyClick(window.prompt_panel.prompt, Qt.Key.Key_Escape)
    assert fake.steps_run == 3
    qtbot.waitUntil(lambda: not window.session.is_running())
    assert window.canvas.image().isNull()  # the half-done preview does not stay on the canvas
    assert list(out_dir.iterdir()) == []
    assert window.status_label.text() == "Cancelled"
    assert not window.prompt_panel.cancel_button.isEnabled()


def test_cancel_a_queued_job_from_the_queue(qtbot, window, fake):
    ids = []
    for prompt in ("keep1", "drop", "keep2"):
        set_prompt(window, prompt)
        ids.append(window.session.generate())
    qtbot.waitUntil(lambda: len(queue_rows(window)) == 3)
    window.queue_panel.list.setCurrentRow(1)
    with qtbot.waitSignal(window.session.job_cancelled) as blocker:
        qtbot.mouseClick(window.queue_panel.remove_button, Qt.MouseButton.LeftButton)
    assert blocker.args == [ids[1]]
    assert [r.split()[-1] for r in queue_rows(window)] == ["keep1", "keep2"]
    saved = []
    window.session.result_image.connect(lambda p, img: saved.append(p))
    fake.run_free()
    qtbot.waitUntil(lambda: len(saved) == 2)
    assert [r.prompt for r in fake.requests] == ["keep1", "keep2"]


def test_engine_error_is_shown_not_raised(qtbot, window, fake):
    fake.fail = "Model not found: /models/missing.safetensors"
    set_prompt(window, "x")
    with qtbot.waitSignal(window.session.job_failed):
        window.session.generate()
    qtbot.waitUntil(lambda: window.banner.isVisible())
    assert window.banner.label.text() == "Model not found: /models/missing.safetensors"
    assert "Model not found" in window.status_label.text()
    # the window keeps working
    fake.fail = None
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    assert not window.banner.isVisible()


def test_invalid_request_is_a_message(qtbot, window, fake):
    set_prompt(window, "x")
    window.prompt_panel.width_box.setValue(100)  # not a multiple of 8
    assert window.session.generate() is None
    assert window.banner.isVisible() and "multiple of 8" in window.banner.label.text()
    assert fake.requests == []


def test_previews_arrive_with_step_and_eta(qtbot, window, fake):
    set_prompt(window, "x", steps=4)
    window.session.generate()
    fake.allow(1)
    qtbot.waitUntil(lambda: window.preview_panel.step_label.text() == "step 1/4")
    assert red(window.preview_panel.view.image()) == 101  # x0 estimate of step 1
    assert red(window.canvas.image()) == 101  # the canvas shows the live preview during the run
    assert window.preview_panel.eta_label.text().endswith("left")
    assert window.progress.isVisible() and window.progress.value() == 1
    fake.allow(1)
    qtbot.waitUntil(lambda: window.preview_panel.step_label.text() == "step 2/4")
    assert red(window.preview_panel.view.image()) == 102
    fake.run_free()
    qtbot.waitUntil(lambda: not window.session.is_running())


def test_noisy_latent_preview(qtbot, window, fake):
    window.preview_panel.kind.setCurrentIndex(window.preview_panel.kind.findData("latent"))
    set_prompt(window, "x", steps=4)
    window.session.generate()
    fake.allow(2)
    qtbot.waitUntil(lambda: window.preview_panel.step_label.text() == "step 2/4")
    assert red(window.preview_panel.view.image()) == 2
    assert fake.requests[0].preview == "latent"
    fake.run_free()


def test_timeline_scrubs_every_step_and_decodes_one(qtbot, window, fake):
    set_prompt(window, "x", steps=5)
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    timeline = window.preview_panel.timeline
    qtbot.waitUntil(timeline.isEnabled)
    assert (timeline.minimum(), timeline.maximum(), timeline.value()) == (1, 5, 5)
    timeline.setValue(3)
    assert window.preview_panel.step_label.text() == "step 3/5"
    assert red(window.preview_panel.view.image()) == 103  # x0 of step 3
    window.preview_panel.kind.setCurrentIndex(window.preview_panel.kind.findData("latent"))
    assert red(window.preview_panel.view.image()) == 3  # the noisy latent of step 3
    window.preview_panel.kind.setCurrentIndex(window.preview_panel.kind.findData("x0"))
    timeline.setValue(2)
    with qtbot.waitSignal(window.session.decoded) as blocker:
        qtbot.mouseClick(window.preview_panel.decode_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0] == 2
    assert window.canvas.image().width() == 32 and red(window.canvas.image()) == 102
    assert fake.thread_names[-1] == "studio-engine"  # the decode ran on the engine thread


def test_seed_buttons(qtbot, window, fake):
    set_prompt(window, "x")
    window.prompt_panel.seed.setText("")
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    assert fake.requests[-1].seed is None
    qtbot.mouseClick(window.prompt_panel.seed_reuse, Qt.MouseButton.LeftButton)
    assert window.prompt_panel.seed.text() == "4242" and window.session.params.seed == 4242
    qtbot.mouseClick(window.prompt_panel.seed_random, Qt.MouseButton.LeftButton)
    assert window.prompt_panel.seed.text() == "" and window.session.params.seed == -1


def test_ctrl_enter_generates_from_the_prompt_box_and_elsewhere(qtbot, window, fake):
    fake.run_free()
    window.activateWindow()
    window.prompt_panel.prompt.setFocus()
    qtbot.keyClicks(window.prompt_panel.prompt, "a cat")
    with qtbot.waitSignal(window.session.result_image):
        qtbot.keyClick(window.prompt_panel.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert window.prompt_panel.prompt.toPlainText() == "a cat"  # no new line typed
    assert fake.requests[-1].prompt == "a cat"
    for widget in (window.prompt_panel.steps, window.prompt_panel.seed, window.prompt_panel.negative):
        with qtbot.waitSignal(window.session.result_image):
            qtbot.keyClick(widget, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier)
    assert len(fake.requests) == 4
    assert window.prompt_panel.negative.toPlainText() == ""


def test_ctrl_shift_e_exports_a_copy_with_metadata(qtbot, window, fake, tmp_path, monkeypatch):
    # (Ctrl+S saves the project: tests/ui/test_project.py)
    set_prompt(window, "keep me")
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    target = tmp_path / "mine.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "PNG image (*.png)"))
    window.prompt_panel.prompt.setFocus()
    qtbot.keyClick(window.prompt_panel.prompt, Qt.Key.Key_E,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
    assert target.is_file()
    assert read_parameters(target).startswith("keep me")


def test_copy_image_to_clipboard(qtbot, window, fake):
    set_prompt(window, "x")
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    window.copy_action.trigger()
    assert red(QApplication.clipboard().image()) == 7


def test_open_our_png_restores_its_parameters(qtbot, window, fake, out_dir):
    set_prompt(window, "a lighthouse\nat dusk", steps=6)
    window.prompt_panel.negative.setPlainText("blurry")
    window.prompt_panel.cfg.setValue(5.5)
    window.prompt_panel.sampler.setCurrentText("DPM++ 2M")
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image) as blocker:
        window.session.generate()
    path = blocker.args[0]
    set_prompt(window, "something else", steps=20)
    window.prompt_panel.negative.setPlainText("")
    window.session.open_image(path)
    p = window.prompt_panel
    assert p.prompt.toPlainText() == "a lighthouse\nat dusk"
    assert p.negative.toPlainText() == "blurry"
    assert (p.steps.value(), p.cfg.value(), p.seed.text(), p.sampler.currentText()) == (6, 5.5, "7", "DPM++ 2M")
    assert window.session.params.steps == 6


def test_drop_an_a1111_png_fills_the_panel(qtbot, window, tmp_path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "masterpiece, castle\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 123456, Size: 512x768, "
        "Model hash: abcdef1234, Model: v1-5, Version: v1.10.1",
    )
    path = tmp_path / "a1111.png"
    Image.new("RGB", (16, 24), (200, 10, 10)).save(path, pnginfo=info)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    )
    window.dropEvent(event)
    p = window.prompt_panel
    assert p.prompt.toPlainText() == "masterpiece, castle"
    assert p.negative.toPlainText() == "lowres"
    assert (p.steps.value(), p.cfg.value(), p.seed.text()) == (28, 6.5, "123456")
    assert (p.sampler.currentText(), p.schedule.currentText()) == ("DPM++ 2M", "Karras")
    assert (p.width_box.value(), p.height_box.value()) == (512, 768)
    assert red(window.canvas.image()) == 200


def test_open_a_file_that_is_not_an_image(qtbot, window, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert not window.session.open_image(bad)
    assert window.banner.isVisible()


def test_gallery_lists_earlier_results_from_the_output_folder(qtbot, make_window, out_dir):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (64, 64), (i * 50, 0, 0)).save(out_dir / f"0000{i}-1.png")
    window = make_window(FakeBackend())
    qtbot.waitUntil(lambda: window.gallery.count() == 3)
    assert sorted(window.gallery.paths()) == sorted(str(p) for p in out_dir.glob("*.png"))


def test_settings_round_trip(tmp_path):
    s = Settings(params={"prompt": "p", "steps": 9}, geometry="abc", model_folders=["/m"], output_dir="/o",
                 device="cpu", preview_kind="latent")  # fmt: skip
    s.save(tmp_path)
    assert Settings.load(tmp_path) == s
    (tmp_path / "settings.json").write_text("{ broken")
    assert Settings.load(tmp_path) == Settings()


def test_window_restores_parameters_and_geometry(qtbot, make_window, config_dir):
    w = make_window(FakeBackend())
    set_prompt(w, "remember me", steps=33)
    w.prompt_panel.cfg.setValue(4.5)
    w.prompt_panel.sampler.setCurrentText("DDIM")
    w.resize(960, 640)  # the offscreen screen is 800x800: keep it within the min width
    w.close()
    assert (config_dir / "settings.json").is_file()
    w2 = make_window(FakeBackend())
    p = w2.prompt_panel
    assert (p.prompt.toPlainText(), p.steps.value(), p.cfg.value(), p.sampler.currentText(), p.seed.text()) == (
        "remember me", 33, 4.5, "DDIM", "7")  # fmt: skip
    assert (w2.width(), w2.height()) == (960, 640)


def test_the_panel_is_saved_after_each_edit_not_only_at_a_run(qtbot, make_window, config_dir):
    """A crash (no close, no run) still brings the panel back as it was at the last edit."""
    w = make_window(FakeBackend())
    set_prompt(w, "edited, never run", steps=21)
    w.prompt_panel.cfg.setValue(3.5)

    def saved() -> dict:
        f = config_dir / "settings.json"
        return json.loads(f.read_text()).get("params", {}) if f.is_file() else {}

    qtbot.waitUntil(lambda: saved().get("cfg") == 3.5, timeout=5000)
    assert (saved()["prompt"], saved()["steps"]) == ("edited, never run", 21)
    assert not list(config_dir.glob("*.tmp*"))  # written atomically


def test_model_override_is_for_this_run_only(qtbot, make_window, config_dir, tmp_path):
    model = tmp_path / "mymodel"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    w = make_window(FakeBackend(), model=str(model))
    assert w.prompt_panel.model.currentData() == str(model)
    assert w.session.params.to_request().model == str(model)
    w.close()
    assert Settings.load(config_dir).params["model"] == ""


def test_close_during_a_run_leaves_no_thread(qtbot, window, fake):
    set_prompt(window, "x", steps=50)
    window.session.generate()
    window.session.generate()
    fake.allow(1)
    qtbot.waitUntil(lambda: fake.steps_run == 1)
    window.close()
    assert "studio-engine" not in [t.name for t in threading.enumerate()]
    assert "studio-thumbs" not in [t.name for t in threading.enumerate() if t.is_alive()]


def test_ui_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ['QT_QPA_PLATFORM']='offscreen'\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from studio.app import build_window\n"
        "from studio.settings import Settings\n"
        "w = build_window(Settings()); w.show(); app.processEvents()\n"
        "w.close()\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print('BAD', bad) if bad else print('OK')\n"
    )
    env = {**__import__("os").environ, "LATENT_STUDIO_CONFIG_DIR": str(__import__("tempfile").mkdtemp())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_the_chosen_model_loads_in_the_background(qtbot, window, fake, tmp_path):
    loaded = []
    fake.load = lambda model: loaded.append(model)
    window.session.enable_warm_up()
    qtbot.waitUntil(lambda: loaded == [None])  # the built-in model, at start
    qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready")
    model = tmp_path / "other"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    window.session.settings.model_folders.append(str(tmp_path))
    window.prompt_panel.refresh_models()
    window.prompt_panel.model.setCurrentIndex(window.prompt_panel.model.findData(str(model)))
    qtbot.waitUntil(lambda: loaded == [None, str(model)])
    assert window.prompt_panel.model.currentText() == "other"  # no architecture or weights known: the name alone


def test_a_model_that_fails_to_load_says_so_at_once(qtbot, window, fake):
    def load(model):
        raise ModelError("The built-in model is missing")

    fake.load = load
    window.session.enable_warm_up()
    qtbot.waitUntil(lambda: window.banner.isVisible())
    assert window.banner.label.text() == "The built-in model is missing"
    assert window.session.jobs() == []


def test_every_control_in_the_window_has_a_tooltip(window):
    from PySide6.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
        QListWidget,
        QPlainTextEdit,
        QSlider,
    )

    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit, QPlainTextEdit, QSlider, QListWidget)
    missing = []
    for w in window.findChildren(QWidget):
        if not isinstance(w, kinds) or isinstance(w.parent(), (QAbstractSpinBox, QComboBox)):
            continue  # a spin box's own line edit carries no separate tooltip
        if w.objectName().startswith("qt_"):
            continue  # Qt's own parts (the menu bar's overflow button)
        if not w.toolTip():
            missing.append(f"{type(w).__name__} {w.objectName()!r} {getattr(w, 'text', lambda: '')()!r}")
    assert missing == []


def test_an_unexpected_error_in_the_window_becomes_a_message(window, monkeypatch):
    import sys

    from studio.app import install_excepthook

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_excepthook(window)
    try:
        raise KeyError("gone")
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert window.banner.isVisible()
    assert window.banner.label.text() == "Unexpected error (KeyError): 'gone'"


def test_parameters_are_saved_when_a_job_is_queued(qtbot, window, config_dir):
    set_prompt(window, "saved early")
    window.session.generate()
    assert Settings.load(config_dir).params["prompt"] == "saved early"


def test_an_image_that_cannot_be_saved_is_still_shown_and_can_be_saved_elsewhere(
    qtbot, make_window, tmp_path, monkeypatch
):
    out = tmp_path / "out"  # the folder takes files when the run is queued; the disk refuses the image itself
    _disk_full_in(monkeypatch, out, from_image=1)
    fake = FakeBackend(auto=True)
    window = make_window(fake, output_dir=str(out))
    set_prompt(window, "keep me anyway")
    with qtbot.waitSignal(window.session.result_image) as blocker:
        window.session.generate()
    assert blocker.args[0] == ""
    assert red(window.canvas.image()) == 7  # shown although not written
    qtbot.waitUntil(lambda: window.banner.isVisible())
    assert "Not saved" in window.banner.label.text()
    target = tmp_path / "rescued.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    window.save_action.trigger()
    assert read_parameters(target).startswith("keep me anyway\n")
    assert "Seed: 7" in read_parameters(target)
    window.canvas.set_image(None)
    window.gallery.setCurrentRow(0)
    window._gallery_show("")
    assert red(window.canvas.image()) == 7 and window.canvas.image().width() == 64


def test_eta_follows_the_pace_after_the_first_step(window):
    s = window.session
    s._first_step = None
    assert s._eta(1, 10, 5.0) == 45.0  # one step known: its time (prompt encoding included)
    assert s._eta(2, 10, 6.0) == 8.0  # then the pace since step 1: 1 s a step, 8 to go
    assert s._eta(5, 10, 9.0) == 5.0


def test_help_lists_the_shortcuts(window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: shown.append((title, text)))
    monkeypatch.setattr(QMessageBox, "about", lambda parent, title, text: shown.append((title, text)))
    window.show_shortcuts()
    window.about()
    assert shown[0][0] == "Keyboard shortcuts" and "Ctrl+Enter" in shown[0][1] and "Esc" in shown[0][1]
    assert "Latent Studio" in shown[1][0]


def test_the_help_lists_every_shortcut_the_window_has(window, monkeypatch):
    from PySide6.QtGui import QAction, QKeySequence
    from PySide6.QtWidgets import QMessageBox

    from studio.ui.canvas_tools import SHORTCUTS

    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: shown.append(text))
    window.show_shortcuts()
    text = shown[0]
    actions = [a for a in window.findChildren(QAction) if any(not k.isEmpty() for k in a.shortcuts())]
    assert len(actions) >= 15  # the menus' actions are found, not a few
    for act in actions:
        for key in act.shortcuts():
            assert f"{key.toString(QKeySequence.SequenceFormat.NativeText)}" in text, act.text()
        assert act.text().replace("&", "").rstrip("…") in text
    for key in ("Ctrl+4", *SHORTCUTS.values(), "[ and ]", "Space + drag", "Delete"):
        assert f"<b>{key}" in text or f"or {key}" in text, key


def test_arrow_keys_browse_the_gallery(qtbot, window, fake):
    fake.run_free()
    for seed in ("1", "2"):
        set_prompt(window, "x")
        window.prompt_panel.seed.setText(seed)
        with qtbot.waitSignal(window.session.result_image):
            window.session.generate()
    assert red(window.canvas.image()) == 2  # the newest, first in the gallery
    window.gallery.setFocus()
    qtbot.keyClick(window.gallery, Qt.Key.Key_Right)
    assert window.gallery.currentRow() == 1
    assert red(window.canvas.image()) == 1


def test_canvas_zooms_about_the_cursor_and_fits_back(qtbot, window):
    from PySide6.QtCore import QPointF

    image = QImage(64, 64, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.darkCyan)
    canvas = window.canvas
    canvas.set_image(image)
    fit = canvas.image_rect()
    anchor = QPointF(fit.x() + fit.width() * 0.25, fit.y() + fit.height() * 0.75)
    under = canvas.to_image(anchor)
    canvas.set_zoom(3.0, anchor)
    assert abs(canvas.image_rect().width() - 3 * fit.width()) < 1e-6
    after = canvas.to_image(anchor)
    assert abs(after.x() - under.x()) < 1e-6 and abs(after.y() - under.y()) < 1e-6  # the point stays put
    canvas.set_image(image)  # same size: the zoom stays
    assert canvas.zoom() == 3.0
    qtbot.mouseDClick(canvas, Qt.MouseButton.LeftButton)
    assert canvas.image_rect() == fit


def _disk_full_in(monkeypatch, folder, from_image: int) -> None:
    """Writes into `folder` meet a full disk from its `from_image`-th image on (elsewhere the disk is fine)."""
    import contextlib
    import errno

    import studio.core.output as output

    real = output.atomic_write
    count = {"n": 0}

    @contextlib.contextmanager
    def full(path, **kw):
        with real(path, **kw) as f:
            if str(path).startswith(str(folder)):
                count["n"] += 1
                if count["n"] >= from_image:
                    f.write(b"\x89PNG partial")
                    raise OSError(errno.ENOSPC, "No space left on device")
            yield f

    monkeypatch.setattr(output, "atomic_write", full)


def test_an_unwritable_output_folder_is_said_before_anything_is_queued(qtbot, make_window, tmp_path):
    blocker_file = tmp_path / "not-a-folder"
    blocker_file.write_text("x")
    fake = FakeBackend(auto=True)
    window = make_window(fake, output_dir=str(blocker_file / "out"))
    set_prompt(window, "never run")
    with qtbot.waitSignal(window.session.message) as blocker:
        assert window.session.generate() is None
    text, level = blocker.args
    assert level == "error" and text.startswith(f"Cannot write to the output folder {blocker_file / 'out'}: ")
    assert queue_rows(window) == [] and fake.requests == []


def test_a_full_disk_mid_batch_keeps_the_saved_images_and_offers_the_rest(qtbot, make_window, out_dir, monkeypatch):
    _disk_full_in(monkeypatch, out_dir, from_image=2)
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    set_prompt(window, "three of them")
    window.session.update_params(batch=3)
    shown = []
    window.session.result_image.connect(lambda path, image: shown.append((path, red(image))))
    window.session.generate()
    qtbot.waitUntil(lambda: len(shown) == 3)
    (saved,) = sorted(out_dir.glob("*.png"))
    assert shown == [(str(saved), 7), ("", 8), ("", 9)]  # the saved one with its path, the rest still offered
    assert not list(out_dir.glob(".*.tmp"))
    qtbot.waitUntil(lambda: window.banner.isVisible())
    assert "Not saved" in window.banner.label.text() and "images 2 and 3 of 3" in window.banner.label.text()


def test_a_16_bit_grey_png_opens_and_loads_as_a_mask_in_grey(qtbot, window, tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "g16.png"
    Image.fromarray(np.full((16, 16), 128 * 257, np.uint16)).save(path)
    assert window.session.open_image(path)
    assert red(window.session.current_image) == 128  # not white
    assert window.session.load_mask(path)
    assert int(window.session.document.mask.max()) == 128


def test_a_huge_image_is_refused_from_its_header_with_the_limit(qtbot, window, tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"\0" * 9)) + chunk(b"IEND", b""))  # fmt: skip
    with qtbot.waitSignal(window.session.message) as blocker:
        assert not window.session.open_image(big)
    assert blocker.args == ["Could not open big.png: 20000×20000 is too large (at most 8192 px a side)", "error"]


# -- restoring hostile PNGs (issue 24) -------------------------------------------------------------

ABSURD_VALUES = ("1e100", "-5", "NaN", "inf", "9" * 100)
# Metadata key -> the keys that put the text in the mode the key belongs to.
HOSTILE_KEYS = {
    "Steps": "", "CFG scale": "", "Seed": "", "Size": "", "Denoising strength": "", "Clip skip": "",
    "Mask blur": "Inpaint area: Only masked", "Masked area padding": "Inpaint area: Only masked",
    "Hires upscale": "Upscale mode: diffusion", "Upscale tile": "Upscale mode: diffusion",
    "Upscale overlap": "Upscale mode: diffusion", "Hires resize": "Upscale mode: diffusion",
}  # fmt: skip


def hostile_png(folder, key: str, value: str):
    from PIL import Image, PngImagePlugin

    pairs = {"Steps": "12", "Sampler": "Euler a", "CFG scale": "6", "Seed": "5", "Size": "64x64", "Model": "m"}
    pairs[key] = f"{value}x64" if key in ("Size", "Hires resize") else value
    line = ", ".join(f"{k}: {v}" for k, v in pairs.items())
    if HOSTILE_KEYS[key]:
        line += ", " + HOSTILE_KEYS[key]
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a cat\nNegative prompt: dog\n{line}")
    path = folder / f"hostile-{len(list(folder.iterdir()))}.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(path, pnginfo=info)
    return path


def test_absurd_numbers_in_a_png_restore_cleanly_and_generate_works(qtbot, window, fake, tmp_path):
    import numpy as np

    session, panel = window.session, window.prompt_panel
    canvas, upscale = panel.canvas_options, panel.upscale_options
    messages: list[str] = []
    session.message.connect(lambda text, *_: messages.append(text))
    fake.run_free()
    folder = tmp_path / "hostile"
    folder.mkdir()
    for key in HOSTILE_KEYS:
        for value in ABSURD_VALUES:
            messages.clear()
            path = hostile_png(folder, key, value)
            assert session.open_image(path), (key, value)
            p = session.params
            shown = (panel.steps.value(), panel.cfg.value(), panel.seed.text(), panel.width_box.value(),
                     panel.height_box.value(), canvas.strength.value(), canvas.mask_blur.value(),
                     canvas.padding.value(), upscale.scale.value(), upscale.tile.value(), upscale.overlap.value())
            held = (p.steps, p.cfg, "" if p.seed < 0 else str(p.seed), p.width, p.height, p.strength, p.mask_blur,
                    p.inpaint_padding, p.scale, p.tile, p.tile_overlap)  # fmt: skip
            assert shown == held, (key, value)
            naming = [m for m in messages if key in m]
            assert len(naming) == 1, (key, value, messages)
            assert value[:10] in naming[0] and "9" * 40 not in naming[0], naming  # a long number is shortened
            # in the banner too: the status bar alone is overwritten by the next routine message
            assert window.banner.isVisible() and key in window.banner.label.text(), (key, value)
            if p.mode == "inpaint":
                session.document.set_mask(np.full((64, 64), 255, np.uint8), "test mask")
            with qtbot.waitSignal(session.result_image, timeout=10000):
                assert session.generate() is not None, (key, value, messages)


def test_a_png_with_a_one_megabyte_word_as_its_prompt_opens_at_once(qtbot, window, fake, tmp_path, capfd):
    import faulthandler
    import os
    import sys

    from PIL import Image, PngImagePlugin

    word = "a" * 1_000_000
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{word}\nNegative prompt: {word}\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 1")
    path = tmp_path / "word.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    # A hang guard (the parser and Qt's wrap were quadratic: 335 s): the test process ends after 60 s, its
    # traceback on the terminal (not in pytest's capture, which ends with the process).
    with capfd.disabled():
        terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    faulthandler.dump_traceback_later(60, exit=True, file=terminal)
    try:
        assert window.session.open_image(path)
        QApplication.processEvents()
        assert window.prompt_panel.prompt.toPlainText() == word
        assert window.session.params.negative_prompt == word
        fake.run_free()
        with qtbot.waitSignal(window.session.result_image, timeout=30000):
            assert window.session.generate() is not None
        window.prompt_panel.prompt.setPlainText("a short prompt")  # back to word wrap, without a relayout of 1 MB
        QApplication.processEvents()
    finally:
        faulthandler.cancel_dump_traceback_later()
        terminal.close()
