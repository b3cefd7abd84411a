"""The window on a ComfyUI server (the fake of tests/fake_comfyui.py): switching engines, the server's files in
the pickers, a run saved with its metadata and its steps in the timeline, the fallback to the local engine."""

from __future__ import annotations

import pytest
from fake_comfyui import FakeComfy, allow_loopback
from PySide6.QtCore import Qt

from studio.backends.fake import FakeBackend
from studio.core.metadata import read_parameters


@pytest.fixture
def server():
    with allow_loopback():
        fake = FakeComfy(models={"checkpoints": ["tiny-sd15.safetensors", "xl-base.safetensors"],
                                 "loras": ["ink.safetensors"]}, cache=False).start()  # fmt: skip
        try:
            yield fake
        finally:
            fake.stop()


def _local_is_fake(window):
    """The fallback's local engine: a fake backend, not torch."""
    from studio.app import make_backend

    window.session._backend_factory = lambda s: FakeBackend() if s.backend == "local" else make_backend(s)


def test_switch_to_a_server_run_there_and_back(qtbot, make_window, fake, server, out_dir):
    window = make_window(fake)
    _local_is_fake(window)
    session = window.session
    assert session.switch_engine("comfyui", server.url)
    qtbot.waitUntil(lambda: window.engine_label.text() == "ComfyUI 0.27.0: ready", timeout=10000)
    assert window.server_engine_action.isChecked() and not window.local_engine_action.isChecked()
    assert session.settings.backend == "comfyui" and session.settings.server_url == server.url
    panel = window.prompt_panel
    labels = [panel.model.itemText(i) for i in range(panel.model.count())]
    assert labels == ["Server default (tiny-sd15)", "tiny-sd15", "xl-base"]
    panel._fill_extras()
    assert "ink" in [a.text() for a in panel.extras_menu.actions()]
    panel.prompt.setPlainText("a fox")
    panel.steps.setValue(3)
    panel.seed.setText("9")
    panel.width_box.setValue(64)
    panel.height_box.setValue(64)
    with qtbot.waitSignal(session.result_image, timeout=15000) as blocker:
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    path, image = blocker.args
    assert image.width() == 64 and image.pixelColor(0, 0).red() == 9
    text = read_parameters(path)
    assert text.startswith("a fox\n") and "Seed: 9" in text and "Model: tiny-sd15" in text
    assert session.timeline_length() == 3
    assert not window.preview_panel.decode_button.isEnabled()
    assert "keeps no latents" in window.preview_panel.decode_button.toolTip()
    assert server.prompts and server.prompts[-1]["client_id"]

    session.switch_engine("local")
    qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready", timeout=10000)
    assert window.local_engine_action.isChecked()


def test_a_server_that_is_not_there_falls_back_to_the_local_engine(qtbot, make_window, fake):
    window = make_window(fake)
    _local_is_fake(window)
    with allow_loopback():
        window.session.switch_engine("comfyui", "http://127.0.0.1:9")
        qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=10000)
        qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready", timeout=10000)
    text = window.banner.label.text()
    assert "Cannot reach the ComfyUI server at http://127.0.0.1:9" in text and text.endswith("Using the local engine instead")
    assert window.local_engine_action.isChecked()


def test_the_server_dialog_switches_and_a_bad_address_is_refused(qtbot, make_window, fake, server, monkeypatch):
    from studio.ui.dialogs import ServerDialog

    window = make_window(fake)
    _local_is_fake(window)
    answers = iter([("gpu-box:8188", ""), (server.url, "")])

    def fake_exec(dialog):
        url, token = next(answers)
        dialog.url.setText(url)
        dialog.token.setText(token)
        return ServerDialog.DialogCode.Accepted

    monkeypatch.setattr(ServerDialog, "exec", fake_exec)
    window.choose_server()
    assert "gpu-box:8188 is not a server address" in window.banner.label.text()
    assert window.session.settings.backend == "local"
    window.choose_server()
    qtbot.waitUntil(lambda: window.engine_label.text() == "ComfyUI 0.27.0: ready", timeout=10000)
    assert window.session.settings.server_url == server.url


def test_reuse_parameters_restores_the_servers_model_by_name(qtbot, make_window, fake, server, tmp_path):
    from PIL import Image, PngImagePlugin

    window = make_window(fake)
    _local_is_fake(window)
    session = window.session
    assert session.switch_engine("comfyui", server.url)
    qtbot.waitUntil(lambda: window.engine_label.text() == "ComfyUI 0.27.0: ready", timeout=10000)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Model: xl-base")
    png = tmp_path / "earlier.png"
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    assert session.open_image(png)
    assert session.params.model == "xl-base.safetensors" and session.params.seed == 5


def test_a_lost_server_shows_as_lost_and_comes_back_by_itself(qtbot, make_window, fake, server, monkeypatch):
    import studio.worker

    monkeypatch.setattr(studio.worker, "HEALTH_EVERY", 0.2, raising=False)  # the idle engine checks this often
    window = make_window(fake)
    _local_is_fake(window)
    session = window.session
    states: list[tuple[str, str]] = []
    session.engine_state.connect(lambda state, text: states.append((state, text)))
    assert session.switch_engine("comfyui", server.url)
    qtbot.waitUntil(lambda: window.engine_label.text() == "ComfyUI 0.27.0: ready", timeout=10000)
    server.go_down()
    qtbot.waitUntil(lambda: bool(states) and states[-1][0] == "lost", timeout=10000)
    assert states[-1][1] == f"ComfyUI server lost: {server.url} does not answer; retrying"
    assert window.engine_label.text() == "ComfyUI 0.27.0: lost, retrying…"
    assert window.engine_label.toolTip() == states[-1][1]
    server.come_back()
    qtbot.waitUntil(lambda: window.engine_label.text() == "ComfyUI 0.27.0: ready", timeout=10000)
    assert states[-1] == ("ready", "") and session.settings.backend == "comfyui"  # no fallback to the local engine
