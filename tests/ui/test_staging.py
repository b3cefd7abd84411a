"""The staging area: a run's images wait over the canvas as candidates; the document changes only on Accept or Keep as
layer (one undo step each), Discard leaves it exact, Regenerate and new runs add to the set, the canvas shows the
candidate, the original, or both split; the project file keeps the staged set."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QImage

from studio.backends.fake import FakeBackend
from studio.qimage import array_to_qimage, qimage_to_array
from studio.session import project

SEED = 40  # the fake paints image i of a batch flat (SEED + i, 7, 9)


def rgb(img: QImage) -> np.ndarray:
    return qimage_to_array(img)[..., :3]


def noise(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def candidate_pixels(i: int, w: int = 64, h: int = 64, seed: int = SEED) -> np.ndarray:
    out = np.zeros((h, w, 3), np.uint8)
    out[...] = (seed + i, 7, 9)
    return out


@pytest.fixture
def staged(qtbot, make_window):
    """A window with a 64x64 noise image (one undo step), and a txt2img batch of four staged over it."""
    window = make_window(FakeBackend(auto=True), stage=True)
    s, doc = window.session, window.session.document
    doc.set_image(array_to_qimage(noise(64, 64, 1)), record="Open image")
    s.update_params(batch=4, seed=SEED, width=64, height=64, steps=2, prompt="a lake")
    run(qtbot, window, expect=4)
    return window


def run(qtbot, window, expect: int, action=None) -> None:
    s = window.session
    with qtbot.waitSignal(s.running_changed, check_params_cb=lambda on: not on, timeout=10_000):
        (action or s.generate)()
    qtbot.waitUntil(lambda: len(s.staging.candidates) == expect, timeout=5_000)


def snapshot(doc) -> tuple:
    return rgb(doc.image).copy(), [la.uid for la in doc.layers], len(doc.history.entries), doc.history.cursor


def shown(window, fx: float, fy: float = 0.3) -> tuple[int, int, int]:
    """The canvas's pixel at a fraction of the image's rectangle, as drawn (grabbed)."""
    canvas = window.canvas
    r = canvas.image_rect()
    grab = canvas.grab().toImage()
    dpr = grab.devicePixelRatio()
    c = grab.pixelColor(QPoint(int((r.left() + fx * r.width()) * dpr), int((r.top() + fy * r.height()) * dpr)))
    return c.red(), c.green(), c.blue()


def key(window, k: Qt.Key, release: bool = False) -> None:
    from PySide6.QtTest import QTest

    (QTest.keyRelease if release else QTest.keyPress)(window.canvas, k)


def test_a_batch_waits_staged_and_accept_lands_the_chosen_one_as_one_undo_step(qtbot, staged):
    window = staged
    s, doc, bar = window.session, window.session.document, window.staging_bar
    before = snapshot(doc)
    assert np.array_equal(before[0], noise(64, 64, 1))  # the document did not change: the four only wait
    assert bar.isVisible() and bar.position.text() == "1 / 4"
    assert [c.seed for c in s.staging.candidates] == [SEED, SEED + 1, SEED + 2, SEED + 3]
    assert window.gallery.count() == 4  # the gallery has every image whatever the artist picks
    bar.next_button.click()
    assert bar.position.text() == "2 / 4"
    from PySide6.QtTest import QTest

    window.prompt_panel.prompt.setFocus()
    QTest.keyClick(window.prompt_panel.prompt, Qt.Key.Key_Return)  # typing in the prompt box: a new line, not Accept
    assert s.staging.active() and window.prompt_panel.prompt.toPlainText().endswith("\n")
    window.canvas.setFocus()
    key(window, Qt.Key.Key_Return)  # Enter accepts the one shown
    assert not s.staging.active() and not bar.isVisible()
    assert np.array_equal(rgb(doc.image), candidate_pixels(1))  # exactly the second candidate
    assert len(doc.layers) == len(before[1]) + 1  # as a new layer (the layers panel's choice)
    assert len(doc.history.entries) == before[2] + 1 and doc.history.cursor == before[3] + 1
    s.undo()
    after_undo = snapshot(doc)
    assert np.array_equal(after_undo[0], before[0]) and after_undo[1] == before[1] and after_undo[3] == before[3]
    assert window.gallery.count() == 4


def test_accept_replaces_the_active_layer_when_the_artist_chose_so(qtbot, staged):
    window = staged
    s, doc = window.session, window.session.document
    window.layers_panel.results_box.setCurrentIndex(1)  # "Replace active layer"
    s.staging.select(3)
    s.staging.accept()
    assert len(doc.layers) == 1 and np.array_equal(rgb(doc.image), candidate_pixels(3))


def test_discard_leaves_the_document_exact(qtbot, staged):
    window = staged
    s, doc = window.session, window.session.document
    before = snapshot(doc)
    window.prompt_panel.prompt.setFocus()
    from PySide6.QtTest import QTest

    QTest.keyClick(window.prompt_panel.prompt, Qt.Key.Key_Escape)  # no job queued: Esc discards (from the prompt too)
    assert not s.staging.active() and not window.staging_bar.isVisible()
    after = snapshot(doc)
    assert np.array_equal(after[0], before[0]) and after[1:] == before[1:]
    assert window.gallery.count() == 4


def test_keep_as_layer_adds_a_layer_and_leaves_the_rest_staged(qtbot, staged):
    window = staged
    s, doc = window.session, window.session.document
    n = len(doc.layers)
    s.staging.select(2)
    window.staging_bar.keep_button.click()
    assert len(doc.layers) == n + 1 and np.array_equal(doc.layers[-1].pixels[..., :3], candidate_pixels(2))
    assert np.array_equal(rgb(doc.image), candidate_pixels(2))  # on top: it is what the stack shows
    assert doc.history.undo_label() == "Keep as layer"
    assert [c.seed for c in s.staging.candidates] == [SEED, SEED + 1, SEED + 3]
    assert window.staging_bar.position.text() == "3 / 3"


def test_regenerate_and_a_new_run_add_to_the_staged_set(qtbot, staged):
    window = staged
    s, doc = window.session, window.session.document
    before = snapshot(doc)
    run(qtbot, window, expect=8, action=window.staging_bar.regenerate_button.click)
    r0, r1 = window.session._worker._backend.requests[-2:]
    assert r1.prompt == r0.prompt and r1.batch == 4 and r1.seed != r0.seed  # the same request, a new seed
    seeds = [c.seed for c in s.staging.candidates]
    assert seeds[:4] == [SEED + i for i in range(4)] and seeds[4:] == [r1.seed + i for i in range(4)]
    assert window.staging_bar.position.text() == "5 / 8"  # the first new one is shown
    s.update_params(seed=7, batch=1)
    run(qtbot, window, expect=9)  # a new run keeps the staged ones
    assert s.staging.candidates[-1].seed == 7 and window.gallery.count() == 9
    after = snapshot(doc)
    assert np.array_equal(after[0], before[0]) and after[1:] == before[1:]


def test_stepping_and_comparing_change_what_the_canvas_shows(qtbot, make_window):
    window = make_window(FakeBackend(auto=True), stage=True)
    s, doc, canvas = window.session, window.session.document, window.canvas
    original = (30, 200, 60)
    doc.set_image(array_to_qimage(np.full((64, 64, 3), original, np.uint8)), record="Open image")
    s.update_params(batch=4, seed=SEED, width=64, height=64, steps=2)
    run(qtbot, window, expect=4)
    assert shown(window, 0.5) == (SEED, 7, 9)
    canvas.setFocus()  # (the keys leave a text box's keys alone: the prompt box has them after a run)
    key(window, Qt.Key.Key_Right)
    assert shown(window, 0.5) == (SEED + 1, 7, 9)
    key(window, Qt.Key.Key_Left)
    key(window, Qt.Key.Key_Left)  # round the set: the last one
    assert shown(window, 0.5) == (SEED + 3, 7, 9) and window.staging_bar.position.text() == "4 / 4"
    key(window, Qt.Key.Key_O)  # held: the original
    assert shown(window, 0.5) == original
    key(window, Qt.Key.Key_O, release=True)
    assert shown(window, 0.5) == (SEED + 3, 7, 9)
    window.staging_bar.original_button.click()  # the toggle
    assert shown(window, 0.5) == original
    window.staging_bar.original_button.click()
    window.staging_bar.split_button.click()  # split: the original left of the divider, the candidate right
    assert shown(window, 0.25) == original and shown(window, 0.75) == (SEED + 3, 7, 9)
    r = canvas.image_rect()
    y = r.top() + 0.3 * r.height()
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPointF(r.center().x(), y).toPoint())
    drag = QPointF(r.left() + 0.9 * r.width(), y).toPoint()
    qtbot.mouseMove(canvas, drag)
    from PySide6.QtGui import QMouseEvent

    canvas.mouseMoveEvent(QMouseEvent(QMouseEvent.Type.MouseMove, QPointF(drag), QPointF(drag),
                                      Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton,
                                      Qt.KeyboardModifier.NoModifier))  # fmt: skip
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=drag)
    assert s.staging.split is not None and s.staging.split > 0.85
    assert shown(window, 0.75) == original and shown(window, 0.95) == (SEED + 3, 7, 9)
    s.staging.discard()
    assert shown(window, 0.5) == original and shown(window, 0.95) == original


def test_staging_off_lands_the_first_image_at_once(qtbot, make_window):
    window = make_window(FakeBackend(auto=True), stage=True)
    s, doc = window.session, window.session.document
    window.layers_panel.stage_box.setChecked(False)
    assert not s.staging.enabled and not window.settings.stage_results
    s.update_params(batch=2, seed=SEED, width=64, height=64, steps=2)
    with qtbot.waitSignal(s.running_changed, check_params_cb=lambda on: not on, timeout=10_000):
        s.generate()
    assert not s.staging.active() and np.array_equal(rgb(doc.image), candidate_pixels(0))


def test_the_project_file_keeps_the_staged_results(qtbot, staged, tmp_path):
    window = staged
    s = window.session
    s.staging.select(2)
    path = window.project.save_to(tmp_path / "lake.lsproj") and window.project.path
    assert path is not None
    loaded = project.load(path)
    assert [c.seed for c in loaded.staged] == [SEED + i for i in range(4)] and loaded.staged_index == 2
    assert all(np.array_equal(rgb(c.image), candidate_pixels(i)) for i, c in enumerate(loaded.staged))
    s.staging.discard()
    assert window.project.open(path)
    assert len(s.staging.candidates) == 4 and s.staging.index == 2 and window.staging_bar.isVisible()
    assert not window.staging_bar.regenerate_button.isEnabled()  # no request kept: generate again
    s.staging.accept()
    assert np.array_equal(rgb(s.document.image), candidate_pixels(2))


def test_the_autosave_keeps_the_staged_results(qtbot, staged, make_window, tmp_path):
    from studio.session import autosave

    window = staged
    folder = tmp_path / "autosave"
    window.start_autosave(folder, ask=lambda info: False)
    window.session.staging.select(1)
    assert window.autosaver.flush()
    candidates, index = autosave.load_staged(folder)
    assert index == 1 and [c.seed for c in candidates] == [SEED + i for i in range(4)]
    assert all(np.array_equal(rgb(c.image), candidate_pixels(i)) for i, c in enumerate(candidates))
    # after a crash (no clean close), the restored window has them staged again over the restored document
    other = make_window(FakeBackend(auto=True), stage=True)
    assert other.start_autosave(folder, ask=lambda info: True)
    st = other.session.staging
    assert len(st.candidates) == 4 and st.index == 1 and other.staging_bar.position.text() == "2 / 4"
    assert np.array_equal(rgb(other.session.document.image), noise(64, 64, 1))
    window.session.staging.discard()  # nothing staged: the next save holds none
    assert window.autosaver.flush() and autosave.load_staged(folder) == ([], 0)
