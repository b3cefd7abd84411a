"""What the window says about a run is true: an upscaler-model run counts its tiles, not steps; before the first
step a phase, not "step 0/20"; a cancelled run's timeline says what was done of what was asked; sizes too large
to be useful are warned about; a size typed past the limit is refused visibly, never cut."""

import json
import time

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from studio.backends.fake import FakeBackend
from studio.core.requests import GenerateResult, StepInfo
from studio.qimage import array_to_qimage


class TileBackend(FakeBackend):
    """The fake, with the engine's upscaler-model reporting: one StepInfo per tile, no steps (total 0)."""

    def _upscale(self, request, used, w, h, on_step, cancel, t0):
        if request.upscale.method not in ("model", "resize"):
            return super()._upscale(request, used, w, h, on_step, cancel, t0)
        for part in range(1, 5):
            if not self._wait_step(cancel):
                return GenerateResult([], used, [], cancelled=True)
            if on_step is not None:
                on_step(StepInfo(0, 0, time.perf_counter() - t0, self.preview_image(100 + part), stage="tile",
                                 part=part, parts=4, region=(0, 0, w, h)))  # fmt: skip
        return GenerateResult([request.init_image.repeat(2, 0).repeat(2, 1)], used.replace(seed=None), [])


def queue_rows(window) -> list[str]:
    lst = window.queue_panel.list
    return [lst.item(i).text() for i in range(lst.count())]


def test_an_upscaler_model_run_counts_tiles_never_steps(qtbot, make_window):
    fake = TileBackend()
    window = make_window(fake)
    s = window.session
    s.show_image(array_to_qimage(np.full((16, 16, 3), 80, np.uint8)))
    s.set_mode("upscale")
    s.update_params(upscale_mode="model", upscaler="x4.pth", steps=20)
    assert s.generate() is not None
    qtbot.waitUntil(s.is_running)
    qtbot.wait(50)
    shown = [window.progress.format(), window.preview_panel.step_label.text(), *queue_rows(window)]
    assert not any("/20" in t for t in shown), shown
    fake.allow(3)
    qtbot.waitUntil(lambda: window.progress.format() == "tile 3/4")
    assert window.preview_panel.step_label.text() == "tile 3/4"
    assert not any("/20" in t for t in queue_rows(window)) and "3/4" in queue_rows(window)[0]
    fake.run_free()
    qtbot.waitUntil(lambda: not s.is_running())
    assert "seed" not in window.status_label.text()


def test_a_phase_shows_before_the_first_step(qtbot, window, fake):
    window.prompt_panel.steps.setValue(20)
    window.session.generate()
    qtbot.waitUntil(window.session.is_running)
    qtbot.wait(50)
    assert window.progress.format() in ("loading model", "preparing")
    assert window.preview_panel.step_label.text() == window.progress.format()
    assert queue_rows(window)[0].startswith("starting")
    fake.allow(1)
    qtbot.waitUntil(lambda: window.progress.format() == "step 1/20")
    fake.run_free()
    qtbot.waitUntil(lambda: not window.session.is_running())


def test_a_cancelled_run_says_what_was_done_of_what_was_asked(qtbot, window, fake):
    window.prompt_panel.steps.setValue(20)
    steps = []
    window.session.progress.connect(lambda s, t, eta: steps.append(s))
    window.session.generate()
    for k in (1, 2, 3):  # one at a time: each step's preview is kept
        fake.allow(1)
        qtbot.waitUntil(lambda k=k: k in steps)
    with qtbot.waitSignal(window.session.job_cancelled):
        window.session.cancel()
    qtbot.waitUntil(lambda: not window.session.is_running())
    timeline = window.preview_panel.timeline
    qtbot.waitUntil(timeline.isEnabled)
    assert timeline.maximum() == 3
    assert window.preview_panel.step_label.text() == "step 3/20, cancelled"
    timeline.setValue(2)
    assert window.preview_panel.step_label.text() == "step 2/20, cancelled"


def test_a_size_sixteen_times_the_native_area_is_warned_about(qtbot, window, tmp_path):
    folder = tmp_path / "sd15"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"sample_size": 64}))
    panel = window.prompt_panel
    window.session.update_params(model=str(folder))
    panel.width_box.setValue(1024)
    panel.height_box.setValue(1024)
    assert not panel.size_note.isVisibleTo(panel)  # 4x: fine
    panel.width_box.setValue(2048)
    panel.height_box.setValue(2048)
    assert panel.size_note.isVisibleTo(panel)
    assert panel.size_note.text() == ("2048x2048 is 16x this model's native area: it will be slow and may repeat "
                                      "itself; try Native size and upscale")  # fmt: skip
    panel.width_box.setValue(0)
    assert not panel.size_note.isVisibleTo(panel)



def test_the_built_in_models_native_area_counts_its_4x_vae(qtbot, window):
    """The built-in model's VAE scales 4x (sample size 16 -> 64 px): 256x256 is 16x its area, not 4x."""
    panel = window.prompt_panel
    window.session.update_params(model="")
    assert window.session.native_side() == 64
    panel.width_box.setValue(256)
    panel.height_box.setValue(256)
    assert panel.size_note.isVisibleTo(panel) and panel.size_note.text().startswith("256x256 is 16x")

def test_a_size_typed_past_the_limit_is_refused_visibly_not_cut(qtbot, window):
    panel = window.prompt_panel
    box = panel.width_box
    box.setFocus()
    box.selectAll()
    QTest.keyClicks(box, "8192")
    QTest.keyClick(box, Qt.Key.Key_Return)
    assert box.value() == 4096 and window.session.params.width == 4096  # clamped, not 819
    assert panel.size_note.isVisibleTo(panel) and "8192" in panel.size_note.text()
    assert "4096" in panel.size_note.text()
    box.selectAll()
    QTest.keyClicks(box, "768")
    QTest.keyClick(box, Qt.Key.Key_Return)
    assert box.value() == 768 and window.session.params.width == 768
    assert not panel.size_note.isVisibleTo(panel)
