"""The speed mode in the window: the panel's combo (remembered, restored from a PNG, disabled where the backend has
none), the Speed key on disk, the line that says why a run used another mode, and turbo's preparation as a status
with cancel (the real engine on a tiny model, a stand-in studio.engine.turbo)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import types

from studio.backends.base import BackendInfo
from studio.backends.fake import FakeBackend
from studio.core.metadata import read_parameters, request_fields
from studio.settings import Settings


def set_prompt(window, text: str, steps: int = 3) -> None:
    window.prompt_panel.prompt.setPlainText(text)
    window.prompt_panel.steps.setValue(steps)
    window.prompt_panel.seed.setText("7")


def choose(combo, name: str) -> None:
    combo.setCurrentIndex(combo.findData(name))


def run(qtbot, window, fake) -> str:
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image, timeout=10_000) as blocker:
        window.session.generate()
    return blocker.args[0]


class NoSpeedBackend(FakeBackend):
    """A backend without speed modes, as the ComfyUI client is."""

    def info(self) -> BackendInfo:
        return dataclasses.replace(super().info(), name="ComfyUI server", speeds=())


class FastDefaultBackend(FakeBackend):
    """A backend whose device defaults to fast (the local engine on a bf16 CPU)."""

    def info(self) -> BackendInfo:
        return dataclasses.replace(super().info(), default_speed="fast")


def test_the_chosen_speed_runs_is_written_remembered_and_restored(qtbot, make_window, config_dir):
    fake = FakeBackend()
    w = make_window(fake)
    combo = w.prompt_panel.speed
    assert [combo.itemData(i) for i in range(combo.count())] == ["exact", "fast", "turbo"]
    assert combo.isEnabled() and combo.currentData() == "exact"  # the fake backend's default
    assert "OpenVINO" in combo.itemData(2, 3)  # each mode's tooltip (Qt.ToolTipRole) says what it does
    set_prompt(w, "a lighthouse")
    choose(combo, "fast")
    assert w.session.params.speed == "fast"
    path = run(qtbot, w, fake)
    assert fake.requests[-1].speed == "fast"
    assert "Speed: fast" in read_parameters(path) and request_fields(read_parameters(path))["speed"] == "fast"
    choose(combo, "turbo")
    w.session.open_image(path)  # the PNG's mode comes back into the panel
    assert combo.currentData() == "fast" and w.session.params.speed == "fast"
    choose(combo, "turbo")
    w.close()
    assert Settings.load(config_dir).params["speed"] == "turbo"
    w2 = make_window(FakeBackend())
    assert w2.prompt_panel.speed.currentData() == "turbo"  # remembered across launches


def test_a_run_that_used_another_mode_says_why_and_its_png_says_the_mode_used(qtbot, make_window):
    fake = FakeBackend()
    line = "This CPU has no native bf16: fast runs as exact"
    fake.speed_fallback = {"fast": ("exact", line)}
    w = make_window(fake)
    messages = []
    w.session.message.connect(lambda text, level: messages.append((text, level)))
    set_prompt(w, "x")
    choose(w.prompt_panel.speed, "fast")
    path = run(qtbot, w, fake)
    assert (line, "attention") in messages
    qtbot.waitUntil(lambda: w.banner.label.text() == line)
    assert "Speed: exact" in read_parameters(path)


def test_a_backend_without_speed_modes_disables_the_choice_and_says_why(qtbot, make_window):
    from studio.backends.comfyui.backend import ComfyUIBackend

    assert ComfyUIBackend("http://127.0.0.1:9").info().speeds == ()  # the real client: none (built offline)
    w = make_window(NoSpeedBackend())
    combo = w.prompt_panel.speed
    assert not combo.isEnabled()
    assert combo.toolTip() == "ComfyUI server runs its own way: speed modes are for the local engine"


def test_until_chosen_the_panel_shows_the_backends_default(qtbot, make_window, config_dir):
    fake = FastDefaultBackend()
    w = make_window(fake)
    assert w.prompt_panel.speed.currentData() == "fast" and w.session.params.speed == ""
    set_prompt(w, "x")
    run(qtbot, w, fake)
    assert fake.requests[-1].speed == "fast"
    w.close()
    assert Settings.load(config_dir).params["speed"] == ""  # not chosen: a faster device later gets its own default


def test_turbo_preparation_is_a_status_and_cancel_ends_the_run(qtbot, make_window, tiny_model, monkeypatch):
    """The real engine on the tiny model; studio.engine.turbo is a stand-in that reports 40% and waits."""
    from studio.backends.local import LocalBackend
    from studio.engine.steps import Cancelled

    waiting = threading.Event()

    def turbo_unet(unet, *, cache_key, precision, on_progress=None, cancel=None):
        on_progress(0.4, "Converting the U-Net")
        waiting.set()
        assert cancel is not None and cancel.wait(60)
        raise Cancelled

    mod = types.ModuleType("studio.engine.turbo")
    mod.TurboUnavailable = type("TurboUnavailable", (Exception,), {})  # type: ignore[attr-defined]
    mod.turbo_unet = turbo_unet  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "studio.engine.turbo", mod)
    w = make_window(LocalBackend(device="cpu"), model=str(tiny_model))
    set_prompt(w, "a red circle")
    w.prompt_panel.width_box.setValue(32)
    w.prompt_panel.height_box.setValue(32)
    choose(w.prompt_panel.speed, "turbo")
    labels = []
    w.session.step_info.connect(lambda info: labels.append(info.label()))
    steps = []
    w.session.preview_changed.connect(steps.append)
    job = w.session.generate()
    status = "Preparing turbo for tiny-sd: 40%"
    qtbot.waitUntil(lambda: status in labels, timeout=120_000)
    qtbot.waitUntil(lambda: w.preview_panel.step_label.text() == status)
    assert w.progress.format() == status and waiting.is_set()
    with qtbot.waitSignal(w.session.job_cancelled, timeout=30_000) as blocker:
        w.session.cancel()
    assert blocker.args == [job]
    qtbot.waitUntil(lambda: not w.session.is_running())
    assert not steps  # no step ran


def test_the_engine_menu_shows_the_turbo_cache_and_clears_it(qtbot, make_window, tmp_path, monkeypatch):
    from studio.backends.fake import FakeBackend
    from studio.core import turbocache

    monkeypatch.setenv(turbocache.CACHE_ENV, str(tmp_path / "cache"))
    entry = turbocache.models_dir() / "abc"
    entry.mkdir(parents=True)
    (entry / "unet.bin").write_bytes(b"x" * 2_500_000)
    w = make_window(FakeBackend())
    w._show_turbo_cache()
    assert "(2.5 MB)" in w.turbo_cache_action.text() and w.turbo_cache_action.isEnabled()
    w.clear_turbo_cache(ask=lambda text: False)  # the artist says no: nothing removed
    assert (entry / "unet.bin").is_file()
    asked: list[str] = []
    w.clear_turbo_cache(ask=lambda text: asked.append(text) or True)
    assert "2.5 MB" in asked[0] and not turbocache.turbo_cache_dir().exists()
    assert "Cleared the turbo cache (2.5 MB)" in w.status_label.text()
    w._show_turbo_cache()
    assert "(0 B)" in w.turbo_cache_action.text() and not w.turbo_cache_action.isEnabled()


def test_prepare_exact_is_an_engine_menu_opt_in_sent_with_runs_and_remembered(qtbot, make_window, config_dir):
    fake = FakeBackend()
    w = make_window(fake)
    act = w.prepare_exact_action
    assert act.isCheckable() and not act.isChecked()  # off until the artist opts in (minutes, gigabytes once)
    set_prompt(w, "a lighthouse")
    run(qtbot, w, fake)
    assert fake.requests[-1].prepare_exact is False
    act.setChecked(True)
    run(qtbot, w, fake)
    assert fake.requests[-1].prepare_exact is True
    w.close()
    assert Settings.load(config_dir).params["prepare_exact"] is True
    w2 = make_window(FakeBackend())
    assert w2.prepare_exact_action.isChecked()  # remembered across launches
