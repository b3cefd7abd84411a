"""The backend wall: typed jobs through the worker, capabilities, a backend without latents, the document."""

import threading

import numpy as np
import pytest
from conftest import leftovers
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget

from studio.backends import Backend
from studio.backends.fake import DemoBackend, FakeBackend
from studio.core.jobs import DecodedStep, DecodeStep, JobKind, JobState, LoadModel, ModelLoaded
from studio.core.requests import GenerateRequest, StepInfo
from studio.worker import Worker


def test_the_fake_backends_implement_the_protocol():
    assert isinstance(FakeBackend(), Backend) and isinstance(DemoBackend(), Backend)


def test_the_worker_takes_typed_requests_only(worker):
    w = worker(FakeBackend(auto=True))
    with pytest.raises(TypeError, match="not a job request"):
        w.submit(lambda backend: None)


def test_job_statuses_carry_kind_and_state(qtbot, worker):
    fake = FakeBackend()
    w = worker(fake)
    gen = w.submit(GenerateRequest(prompt="held", steps=3, seed=1))
    load = w.submit(LoadModel("/models/x"))
    qtbot.waitUntil(fake.in_step.is_set)
    assert [(j.id, j.kind, j.state) for j in w.jobs()] == [
        (gen, JobKind.GENERATE, JobState.RUNNING), (load, JobKind.LOAD_MODEL, JobState.QUEUED)]  # fmt: skip
    fake.run_free()
    qtbot.waitUntil(lambda: w.jobs() == [])


def test_decode_and_load_jobs_run_on_the_engine_thread_with_typed_outputs(qtbot, worker):
    fake = FakeBackend(auto=True)
    w = worker(fake)
    with qtbot.waitSignal(w.model_loaded) as loaded:
        w.submit(LoadModel("/models/other"))
    assert loaded.args[1] == ModelLoaded("/models/other") and fake.loaded == ["/models/other"]
    with qtbot.waitSignal(w.decoded) as decoded:
        job = w.submit(DecodeStep(None, 3, np.full((4, 8, 8), 103, np.float16)))
    out = decoded.args[1]
    assert decoded.args[0] == job and isinstance(out, DecodedStep) and out.step == 3
    assert out.image.shape == (32, 32, 3) and out.image[0, 0, 0] == 103
    assert set(fake.thread_names) == {"studio-engine"}  # start, load and decode alike


def test_the_backend_starts_once_and_is_closed_at_shutdown(qtbot):
    fake = FakeBackend(auto=True)
    w = Worker(fake)
    assert w.info().device == ""  # before start: only what is known without loading
    with qtbot.waitSignal(w.engine_ready) as ready:
        w.start(preload=True)
    assert ready.args[0].device == "cpu" and w.info().device == "cpu"
    with qtbot.waitSignal(w.finished):
        w.submit(GenerateRequest(prompt="x", steps=2, seed=1))
    assert fake.thread_names.count("studio-engine") == 2  # one start, one run
    assert w.shutdown(10) and fake.closed


def test_step_info_labels_a_pass():
    assert StepInfo(4, 20, 1.0).label() == "step 4/20"
    assert StepInfo(4, 20, 1.0, stage="tile", part=3, parts=9).label() == "tile 3/9, step 4/20"
    assert StepInfo(2, 10, 1.0, stage="hires").label() == "hires, step 2/10"


def test_a_multi_pass_run_shows_its_pass_in_the_progress_bar(qtbot, make_window):
    class Tiled(FakeBackend):
        def generate(self, request, on_step=None, cancel=None):
            def tiled(info):
                on_step(StepInfo(info.step, info.total, info.elapsed, info.preview, stage="tile", part=2, parts=4))

            return super().generate(request, tiled, cancel)

    fake = Tiled()
    window = make_window(fake)
    window.prompt_panel.steps.setValue(5)
    window.session.generate()
    fake.allow(2)
    qtbot.waitUntil(lambda: window.progress.format() == "tile 2/4, step 2/5")
    fake.run_free()
    qtbot.waitUntil(lambda: not window.session.is_running())


def test_the_window_follows_the_backend_samplers_once_started(qtbot, make_window):
    class FewSamplers(FakeBackend):
        def info(self):
            import dataclasses

            info = super().info()
            return dataclasses.replace(info, samplers=("Euler", "DDIM") if self.started else info.samplers)

    window = make_window(FewSamplers())
    window.prompt_panel.sampler.setCurrentText("DDIM")
    with qtbot.waitSignal(window.session.capabilities_changed):
        window.start_engine()
    combo = window.prompt_panel.sampler
    assert [combo.itemText(i) for i in range(combo.count())] == ["Euler", "DDIM"]
    assert combo.currentText() == "DDIM" and window.session.params.sampler == "DDIM"
    qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready")
    assert "Fake backend on cpu" in window.engine_label.toolTip()


def test_a_backend_that_keeps_no_latents_still_scrubs_previews_but_cannot_decode(qtbot, make_window):
    fake = FakeBackend(auto=True, keeps_latents=False)
    window = make_window(fake)
    window.prompt_panel.steps.setValue(4)
    with qtbot.waitSignal(window.session.result_image):
        window.session.generate()
    timeline, decode = window.preview_panel.timeline, window.preview_panel.decode_button
    qtbot.waitUntil(timeline.isEnabled)
    timeline.setValue(2)
    assert window.preview_panel.view.image().pixelColor(0, 0).red() == 102  # the kept preview of step 2
    assert not decode.isEnabled()
    assert "keeps no latents" in decode.toolTip()
    assert window.session.decode_step(2) is None  # asked anyway (a shortcut): a message, no job
    assert "keeps no latents" in window.status_label.text()


def test_the_document_holds_the_image_and_its_mask(qtbot, window):
    doc = window.session.document
    image = QImage(64, 48, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.white)
    window.session.show_image(image)
    assert window.canvas.image().size() == image.size()
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 5:25] = 255
    doc.set_mask(mask)
    mask[:] = 0  # the document keeps its own copy
    assert doc.mask[15, 10] == 255
    overlay = window.canvas.mask()
    assert overlay is not None and overlay.pixelColor(10, 15).red() == 255 and overlay.pixelColor(0, 0).red() == 0
    same = QImage(64, 48, QImage.Format.Format_RGB888)
    same.fill(Qt.GlobalColor.black)
    window.session.show_image(same)  # a new result of the same size: the mask is reused
    assert doc.mask is not None and window.canvas.mask() is not None
    with pytest.raises(ValueError, match="64x48"):
        doc.set_mask(np.zeros((10, 10), np.uint8))
    other = QImage(32, 32, QImage.Format.Format_RGB888)
    other.fill(Qt.GlobalColor.gray)
    window.session.show_image(other)
    assert doc.mask is None and window.canvas.mask() is None
    arr = doc.image_array()
    assert arr.shape == (32, 32, 3) and arr[0, 0, 0] == other.pixelColor(0, 0).red()


def test_the_demo_backend_runs_the_window_without_a_model(qtbot, out_dir):
    from studio.app import build_window
    from studio.settings import Settings

    window = build_window(Settings(), demo=True, output_dir=str(out_dir))
    qtbot.addWidget(window)
    window.show()
    assert isinstance(window.session._worker._backend, DemoBackend)
    window.prompt_panel.prompt.setPlainText("a sunset")
    window.prompt_panel.steps.setValue(2)
    with qtbot.waitSignal(window.session.result_image, timeout=20_000) as saved:
        window.session.generate()
    pixels = saved.args[1]
    assert pixels.width() == 512 and pixels.pixelColor(0, 0) != pixels.pixelColor(256, 256)  # a picture, not flat
    window.close()


def test_the_leftover_check_sees_threads_and_timers(qtbot):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="studio-straggler", daemon=True)
    thread.start()
    widget = QWidget()
    timer = QTimer(widget)
    timer.start(1000)
    try:
        found = leftovers(grace_s=0.05)
        assert "thread studio-straggler" in found
        assert any(item.startswith("timer QWidget") for item in found)
    finally:
        stop.set()
        thread.join(5)
        timer.stop()
        widget.deleteLater()
    assert leftovers(grace_s=1.0) == []


def test_the_engine_label_says_ready_when_a_run_started_the_backend_first(qtbot, make_window):
    fake = FakeBackend()
    window = make_window(fake)
    window.session.generate()  # starts the backend before the delayed start_engine
    qtbot.waitUntil(fake.in_step.is_set)
    qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready")
    window.start_engine()  # the warm-up load queues behind the held run
    qtbot.wait(20)
    assert window.engine_label.text() == "Engine: ready"  # not "loading" while it is plainly running
    fake.run_free()
    qtbot.waitUntil(lambda: fake.loaded == [None] and not window.session.is_running())


def test_history_entries_never_change_after_they_are_pushed(window):
    doc = window.session.document
    image = QImage(32, 32, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.white)
    window.session.show_image(image)
    loaded = np.zeros((32, 32), np.uint8)
    loaded[:8] = 255
    doc.set_mask(loaded, "Load mask")
    same = QImage(image)
    doc.set_image(same, None, record="Result")  # keeps the mask
    work = doc.begin_stroke()
    work[20:, :] = 255  # a stroke paints into the live mask in place
    doc.stroke_updated((0, 20, 32, 12))
    doc.end_stroke()
    mask_entry, image_entry = doc.history.entries[0], doc.history.entries[1]
    assert np.array_equal(mask_entry.after, loaded)
    assert np.array_equal(image_entry.after.mask, loaded) and np.array_equal(image_entry.before.mask, loaded)
    doc.undo()
    doc.undo()
    work = doc.begin_stroke()  # painting after an undo must not reach the entry it restored
    work[:] = 255
    doc.stroke_updated((0, 0, 32, 32))
    doc.end_stroke()
    assert np.array_equal(image_entry.before.mask, loaded)


def test_the_panel_offers_what_the_backend_can_do_and_follows_a_switch(qtbot, make_window):
    """A backend without the x4 latent upscaler and the noisy-latent preview (a server's): the window does not
    offer them, and offers them again once it is back on a backend that has them."""
    server_like = lambda: FakeBackend(keeps_latents=False, upscale_modes=("resize", "model", "diffusion"))  # noqa: E731
    window = make_window(server_like())
    window.session._backend_factory = lambda s: FakeBackend() if s.backend == "local" else server_like()
    method, kind = window.prompt_panel.upscale_options.method, window.preview_panel.kind
    methods = lambda: [method.itemData(i) for i in range(method.count())]  # noqa: E731
    kinds = lambda: [kind.itemData(i) for i in range(kind.count())]  # noqa: E731

    def switch(backend: str) -> None:
        with qtbot.waitSignal(window.session.capabilities_changed, timeout=10000):
            window.session.switch_engine(backend, "http://server:8188" if backend == "comfyui" else "")

    assert methods() == ["diffusion", "model", "resize"] and kinds() == ["x0"]
    window.start_engine()
    qtbot.waitUntil(lambda: window.engine_label.text() == "Engine: ready")
    assert methods() == ["diffusion", "model", "resize"] and kinds() == ["x0"]
    window.session.set_preview_kind("latent")  # asked anyway (a stored setting): refused
    assert window.session.preview_kind == "x0"

    switch("local")
    assert methods() == ["diffusion", "model", "latent", "resize"] and kinds() == ["x0", "latent"]
    method.setCurrentIndex(method.findData("latent"))
    kind.setCurrentIndex(kind.findData("latent"))
    assert window.session.params.upscale_mode == "latent" and window.session.preview_kind == "latent"

    switch("comfyui")  # the choices it lacks fall back to ones it has, and the widgets say so
    assert methods() == ["diffusion", "model", "resize"] and kinds() == ["x0"]
    assert window.session.params.upscale_mode == "diffusion" and method.currentData() == "diffusion"
    assert window.session.preview_kind == "x0" and kind.currentData() == "x0"


def test_a_mode_the_backend_lacks_cannot_be_picked(qtbot, make_window):
    import dataclasses

    class NoUpscale(FakeBackend):
        def info(self):
            return dataclasses.replace(super().info(), modes=("txt2img", "img2img", "inpaint"), upscale_modes=())

    window = make_window(NoUpscale())
    switch, action = window.prompt_panel.mode_switch.buttons["upscale"], window.mode_actions["upscale"]
    assert not switch.isEnabled() and not action.isEnabled() and "not available" in switch.toolTip()
    assert window.mode_actions["inpaint"].isEnabled() and window.prompt_panel.mode_switch.buttons["inpaint"].isEnabled()
    window.session.set_mode("upscale")
    assert window.session.params.mode == "txt2img"
