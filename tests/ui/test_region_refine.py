"""Refine a region in place from the window, on the fake backend: Image and Upscale runs on a selection are pasted
back at its place (feathered inside it), every pixel outside it untouched; the selection persists across runs and
through a project's save and open; Esc, Edit > Deselect and the panel's button clear it."""

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage

from studio.backends.fake import FakeBackend
from studio.qimage import array_to_qimage, qimage_to_array
from studio.session.region import feather_alpha, paste_back, working_size

BOX = (30, 20, 80, 50)  # the selection the tests drag: x, y, w, h in image px


def picture(w=200, h=100, seed=1) -> QImage:
    return array_to_qimage(np.random.default_rng(seed).integers(0, 250, (h, w, 3), np.uint8))


def rgb(image: QImage) -> np.ndarray:
    return qimage_to_array(image)[..., :3]


def outside(a: np.ndarray, box=BOX) -> np.ndarray:
    x, y, w, h = box
    keep = np.ones(a.shape[:2], bool)
    keep[y : y + h, x : x + w] = False
    return a[keep]


def inside(a: np.ndarray, box=BOX) -> np.ndarray:
    x, y, w, h = box
    return a[y : y + h, x : x + w]


def widget_point(canvas, x, y) -> QPoint:
    p = canvas.from_image(x, y)
    return QPoint(round(p.x()), round(p.y()))


def drag_selection(qtbot, canvas, box=BOX) -> None:
    x, y, w, h = box
    canvas.set_tool("select")
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, x, y))
    qtbot.mouseMove(canvas, widget_point(canvas, x + w // 2, y + h // 2))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, x + w, y + h))


def run(qtbot, session, fake) -> None:
    fake.run_free()
    with qtbot.waitSignal(session.running_changed, check_params_cb=lambda running: not running, timeout=10000):
        assert session.generate() is not None


def refined_window(qtbot, make_window, fake, mode="img2img"):
    window = make_window(fake)
    s = window.session
    s.show_image(picture())
    drag_selection(qtbot, window.canvas)
    assert s.document.selection == BOX
    s.set_mode(mode)
    s.update_params(steps=2, seed=7)
    return window


def test_image_mode_refines_the_selection_in_place_and_nothing_outside_changes(qtbot, make_window):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake)
    s, doc = window.session, window.session.document
    before = rgb(doc.image)
    panel = window.prompt_panel.region_options
    assert panel.isVisibleTo(window.prompt_panel)
    ww, wh = working_size(80, 50, s.native_side())
    assert (ww, wh) == (128, 64)  # the built-in model's native side is 64: the selection is never made smaller
    assert panel.text.text().startswith(f"Refine region: the selection 80×50 is re-rendered at the working size "
                                        f"{ww}×{wh} and pasted back")  # fmt: skip
    run(qtbot, s, fake)

    r = fake.requests[-1]
    assert r.mode == "img2img" and r.init_image.shape == (wh, ww, 3) and (r.width, r.height) == (ww, wh)
    after = rgb(doc.image)
    assert doc.size() == (200, 100)  # the document, not the crop
    assert np.array_equal(outside(after), outside(before))  # every pixel outside the selection, exactly
    changed = (inside(after) != inside(before)).any(axis=2)
    assert changed.mean() > 0.95  # the inside is the result (the fake paints a flat colour)
    result = fake.picture(ww, wh, 7)
    assert np.array_equal(after, paste_back(before, result, BOX, s.params.region_feather))
    x, y, w, h = BOX
    assert (after[y + h // 2, x + w // 2] == result[0, 0]).all()  # the middle is the result
    # The feathered edge: the share of the result grows from the selection's edge inwards.
    weights = feather_alpha(w, h, s.params.region_feather)[h // 2, :20] / 255.0
    assert (np.diff(weights) >= 0).all() and weights[0] < 0.1 and weights[-1] == 1.0
    gap = float(result[0, 0, 0]) - before[y + h // 2, x : x + 20, 0]
    far = np.abs(gap) > 60  # (where result and document are close, 8 bits cannot show the share)
    share = (after[y + h // 2, x : x + 20, 0].astype(float) - before[y + h // 2, x : x + 20, 0])[far] / gap[far]
    assert far.sum() > 5 and np.allclose(share, weights[far], atol=0.02)
    assert doc.selection == BOX  # it persists: the next run refines the same region
    s.undo()
    assert np.array_equal(rgb(doc.image), before)


def test_the_selection_persists_across_two_runs(qtbot, make_window):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake)
    s, doc = window.session, window.session.document
    before = rgb(doc.image)
    run(qtbot, s, fake)
    first = rgb(doc.image)
    s.update_params(seed=9)
    run(qtbot, s, fake)
    second = rgb(doc.image)
    assert doc.selection == BOX and window.canvas.selection_rect() == BOX
    assert len(fake.requests) == 2
    assert fake.requests[1].init_image.shape == fake.requests[0].init_image.shape  # the same region, again
    assert np.array_equal(outside(second), outside(before))
    assert not np.array_equal(inside(second), inside(first))  # the second run refined it again
    assert np.array_equal(second, paste_back(first, fake.picture(128, 64, 9), BOX, s.params.region_feather))


def test_an_upscaled_region_is_scaled_back_into_place_and_the_document_keeps_its_size(qtbot, make_window):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake, mode="upscale")
    s, doc = window.session, window.session.document
    s.update_params(upscale_mode="diffusion")
    before = rgb(doc.image)
    target = window.prompt_panel.upscale_options.target.text()
    assert (
        target
        == "Upscales the selection 80×50 to 160×100, then scales it back into its place (the image stays 200×100)"
    )
    assert "the image stays 200×100" in window.prompt_panel.region_options.text.text()
    run(qtbot, s, fake)
    r = fake.requests[-1]
    assert r.mode == "upscale" and np.array_equal(r.init_image, inside(before))  # the region, at its own size
    after = rgb(doc.image)
    assert doc.size() == (200, 100) and doc.selection == BOX
    assert np.array_equal(outside(after), outside(before))
    # The fake's upscale is the input enlarged with red + 1: scaled back, the region's red went up
    assert inside(after)[..., 0].astype(int).mean() > inside(before)[..., 0].astype(int).mean() + 0.5
    s.undo()
    assert np.array_equal(rgb(doc.image), before)


def test_paste_back_off_keeps_the_old_ways(qtbot, make_window):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake)
    s, doc = window.session, window.session.document
    panel = window.prompt_panel.region_options
    panel.in_place.setChecked(False)
    assert s.params.region_in_place is False and not panel.feather.isEnabled()
    run(qtbot, s, fake)
    assert fake.requests[-1].init_image.shape == (100, 200, 3)  # Image mode: the whole image
    s.set_mode("upscale")
    run(qtbot, s, fake)
    assert doc.size() == (160, 100)  # Upscale: the upscaled selection is the new canvas


@pytest.mark.parametrize("mode", ["img2img", "upscale"])
def test_the_live_preview_of_a_region_forms_over_the_selection(qtbot, make_window, mode):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake, mode=mode)
    s = window.session
    s.update_params(steps=3, upscale_mode="diffusion")  # (an upscale's tiles show steps in the diffusion method)
    assert s.generate() is not None
    fake.allow(1)
    qtbot.waitUntil(lambda: window.canvas.live_overlay() is not None)
    image, rect = window.canvas.live_overlay()
    assert rect == BOX
    if mode == "upscale":  # the upscale forming at its output size, drawn into the selection
        assert (image.width(), image.height()) == (160, 100)
    else:  # the estimate through the paste's feathered edge
        assert image.hasAlphaChannel()
    assert window.canvas.image().size() == s.document.image.size()  # not the whole canvas replaced by the crop
    fake.run_free()
    qtbot.waitUntil(lambda: not s.is_running())
    assert window.canvas.live_overlay() is None


def test_the_selection_and_the_feather_are_saved_in_the_project(qtbot, make_window, tmp_path):
    fake = FakeBackend()
    first = refined_window(qtbot, make_window, fake)
    first.prompt_panel.region_options.feather.setValue(5)
    run(qtbot, first.session, fake)
    first.project.choose_save_path = lambda: tmp_path / "refined"
    with qtbot.waitSignal(first.project.saved):  # written off the UI thread
        first.project.save_action.trigger()
    saved = tmp_path / "refined.lsproj"
    assert saved.is_file()

    fake2 = FakeBackend()
    second = make_window(fake2)
    assert second.project.open(saved)
    s, doc = second.session, second.session.document
    assert doc.selection == BOX and s.params.region_feather == 5 and s.params.mode == "img2img"
    assert second.prompt_panel.region_options.feather.value() == 5
    before = rgb(doc.image)
    assert np.array_equal(before, rgb(first.session.document.image))
    s.update_params(seed=3)
    run(qtbot, s, fake2)  # the reopened selection is refined in place
    assert np.array_equal(rgb(doc.image), paste_back(before, fake2.picture(128, 64, 3), BOX, 5))


def test_esc_the_menu_and_the_button_clear_the_selection(qtbot, make_window):
    window = refined_window(qtbot, make_window, FakeBackend())
    doc, canvas, panel = window.session.document, window.canvas, window.prompt_panel.region_options
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)
    assert doc.selection is None and not panel.deselect.isEnabled()
    assert panel.text.text().startswith("Select a region on the canvas")
    doc.set_selection(BOX)
    assert panel.deselect.isEnabled()
    window.deselect_action.trigger()
    assert doc.selection is None
    doc.set_selection(BOX)
    qtbot.mouseClick(panel.deselect, Qt.MouseButton.LeftButton)
    assert doc.selection is None


def test_the_only_masked_inpaint_crop_still_shows_with_a_selection(qtbot, make_window):
    fake = FakeBackend()
    window = refined_window(qtbot, make_window, fake, mode="inpaint")
    s, doc = window.session, window.session.document
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 120:150] = 255
    doc.set_mask(mask, "Mask")
    s.update_params(inpaint_area="masked")
    crop = s.inpaint_crop()
    assert crop is not None and window.canvas._crop == crop
    assert not window.prompt_panel.region_options.isVisibleTo(window.prompt_panel)  # inpaint has its own area
    run(qtbot, s, fake)
    assert fake.requests[-1].init_image.shape == (100, 200, 3)  # an inpaint takes the whole image and its mask
    assert doc.selection == BOX


def test_a_region_refine_with_the_real_engine_keeps_the_outside_exact(qtbot, tiny_model, out_dir):
    """The working size (rounded up to 64s) is one the real engine takes, and the paste keeps the outside exact."""
    from studio.app import build_window
    from studio.backends.local import LocalBackend
    from studio.settings import Settings

    window = build_window(Settings(stage_results=False), LocalBackend(device="cpu"), model=str(tiny_model), output_dir=str(out_dir))
    qtbot.addWidget(window)
    window.show()
    try:
        s, doc = window.session, window.session.document
        s.show_image(picture(96, 64))
        box = (20, 10, 40, 30)
        doc.set_selection(box)
        s.set_mode("img2img")
        s.update_params(steps=2, seed=3, strength=0.6, sampler="Euler")
        before = rgb(doc.image)
        with qtbot.waitSignal(s.running_changed, check_params_cb=lambda running: not running, timeout=180_000):
            assert s.generate() is not None
        after = rgb(doc.image)
        assert doc.size() == (96, 64) and doc.selection == box
        assert np.array_equal(outside(after, box), outside(before, box))
        assert (inside(after, box) != inside(before, box)).any()
    finally:
        window.close()


def test_a_staged_region_result_waits_pasted_in_place_and_accept_changes_only_the_selection(qtbot, make_window):
    fake = FakeBackend()
    window = make_window(fake, stage=True)
    s, doc = window.session, window.session.document
    s.show_image(picture())
    drag_selection(qtbot, window.canvas)
    s.set_mode("img2img")
    s.update_params(steps=2, seed=7, batch=2)
    before = rgb(doc.image)
    run(qtbot, s, fake)
    assert np.array_equal(rgb(doc.image), before)  # staged: the document waits for the artist
    staged = s.staging.candidates
    assert len(staged) == 2 and all(c.region is not None for c in staged)
    for c in staged:  # each candidate is the whole document with the region pasted back
        a = rgb(c.image)
        assert a.shape == before.shape and np.array_equal(outside(a), outside(before))
        assert not np.array_equal(inside(a), inside(before))
    chosen = rgb(staged[0].image)
    assert s.staging.accept()
    assert np.array_equal(rgb(doc.image), chosen)
    assert np.array_equal(outside(rgb(doc.image)), outside(before))
