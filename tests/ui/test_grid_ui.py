"""The comparison grid in the window and the worker (one job, cells to the gallery, cancel keeps cells), and the
panel's Variation row."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QApplication

from studio.backends.fake import FakeBackend
from studio.core import GenerateRequest
from studio.core import grid as g
from studio.core.metadata import read_parameters


def test_worker_runs_a_grid_as_one_job(qtbot, worker, tmp_path):
    from studio.session import library

    w = worker(FakeBackend(auto=True))
    grid = g.plan(GenerateRequest(prompt="p", seed=3, steps=2), [g.parse_axis("CFG", "4,7"), g.parse_axis("Steps", "2,3")])
    cells, labels = [], []
    w.cell_finished.connect(lambda job_id, out: cells.append(out))
    w.step.connect(lambda job_id, info: labels.append(info.label()))
    with qtbot.waitSignal(w.finished, timeout=10000) as blocker:
        job = w.submit(grid, save=lambda r: library.save_result(r, tmp_path))
    assert blocker.args[0] == job
    qtbot.waitUntil(lambda: not w.jobs())
    assert [o.result.request.cfg for o in cells] == [4.0, 7.0, 4.0, 7.0]
    assert all(o.paths and o.paths[0].is_file() for o in cells)
    out = blocker.args[1]
    text = read_parameters(out.paths[0]) or ""
    assert "Script: X/Y/Z plot, X Type: CFG Scale" in text
    assert "cell 4/4, step 3/3" in labels


def test_cancel_mid_grid_keeps_finished_cells(qtbot, make_window):
    fake = FakeBackend()
    window = make_window(fake)
    s = window.session
    s.update_params(prompt="a cat", steps=2, seed=5)
    gallery_before = len(window.gallery.paths())
    job = s.generate_grid([("CFG Scale", "3, 5, 9"), ("", "")])
    assert job is not None and s.jobs()[0].label.startswith("grid 3: a cat")
    with qtbot.waitSignal(window.session.result_image, timeout=10000):
        fake.allow(3)  # cell 1's two steps, and the first of cell 2
    qtbot.waitUntil(lambda: fake.steps_run == 3)
    with qtbot.waitSignal(window.session.job_cancelled, timeout=10000):
        s.cancel()
    assert len(fake.requests) == 2  # the third cell never started
    qtbot.waitUntil(lambda: len(window.gallery.paths()) == gallery_before + 1)
    kept = Path(window.gallery.paths()[0])
    assert kept.is_file() and "CFG scale: 3" in (read_parameters(kept) or "")
    assert not s.is_running()


def test_grid_dialog_checks_axes_and_queues(qtbot, make_window):
    window = make_window(FakeBackend(auto=True))
    window.session.update_params(prompt="a cat", steps=2, seed=5)
    window.open_grid_dialog()
    d = window._grid_dialog
    d.kinds[0].setCurrentText("Steps")
    d.values[0].setText("1-5 (+0)")
    assert not d.run_button.isEnabled() and "never reaches its end" in d.error.text()
    d.values[0].setText("2-3")
    d.kinds[1].setCurrentText("Prompt S/R")
    d.values[1].setText("cat, dog")
    assert d.run_button.isEnabled() and d.note.text().startswith("2 × 2 = 4 images")
    with qtbot.waitSignal(window.session.result_image, timeout=10000):
        d.run_button.click()
    qtbot.waitUntil(lambda: not window.session.is_running() and not window.session.jobs(), timeout=10000)
    assert len(window.gallery.paths()) >= 5  # four cells and the grid
    QApplication.processEvents()


def test_variation_row_sets_and_restores(qtbot, make_window):
    window = make_window(FakeBackend(auto=True))
    row = window.prompt_panel.variation_options
    assert not row.fields.isVisibleTo(window)
    row.toggle.click()
    row.subseed.setText("123")
    row.slider.setValue(30)
    row.resize_w.setValue(512)
    row.resize_h.setValue(384)
    p = window.session.params
    assert (p.subseed, p.subseed_strength, p.seed_resize_from_w, p.seed_resize_from_h) == (123, 0.3, 512, 384)
    r = p.to_request()
    assert (r.subseed, r.subseed_strength, r.seed_resize_from_w) == (123, 0.3, 512)
    row.dice.click()
    assert window.session.params.subseed == -1
    fresh = make_window(FakeBackend(auto=True))
    found = {"subseed": 77, "subseed_strength": 0.25, "seed_resize_from_w": 0, "seed_resize_from_h": 0}
    fresh.session.apply_fields(found)
    frow = fresh.prompt_panel.variation_options
    assert frow.toggle.isChecked() and frow.subseed.text() == "77" and abs(frow.strength.value() - 0.25) < 1e-9
    assert frow.toggle.text() == "Variation (0.25)"


def test_the_grid_button_is_off_in_upscale_mode_and_says_why(qtbot, make_window):
    window = make_window()
    button = window.prompt_panel.grid_button
    window.session.set_mode("upscale")
    assert not button.isEnabled() and "not an upscale" in button.toolTip()
    window.session.set_mode("txt2img")
    assert button.isEnabled()
