"""Upscaling from the window on the fake backend: the whole image or a selected region, tiles forming, undo."""

import dataclasses

import numpy as np
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QImage

from studio.backends.fake import FakeBackend
from studio.qimage import array_to_qimage, qimage_to_array


def picture(w=96, h=80) -> QImage:
    rng = np.random.default_rng(1)
    return array_to_qimage(rng.integers(0, 250, (h, w, 3), np.uint8))


def rgb(image: QImage) -> np.ndarray:
    return qimage_to_array(image)


def widget_point(canvas, x, y) -> QPoint:
    p = canvas.from_image(x, y)
    return QPoint(round(p.x()), round(p.y()))


def test_the_upscale_mode_shows_its_options_and_target(qtbot, window):
    panel = window.prompt_panel
    window.session.show_image(picture())
    qtbot.mouseClick(panel.mode_switch.buttons["upscale"], Qt.MouseButton.LeftButton)
    opts = panel.upscale_options
    assert window.session.params.mode == "upscale" and opts.isVisibleTo(panel)
    assert not panel.canvas_options.isVisibleTo(panel)
    assert opts.target.text() == "Upscales the image 96×80 to 192×160"
    opts.scale.setValue(4.0)
    assert opts.target.text() == "Upscales the image 96×80 to 384×320" and window.session.params.scale == 4.0
    assert panel.generate_button.text().strip() == "Upscale"
    assert opts.strength.value() == 0.3  # a diffusion upscale keeps the composition


def test_a_selected_region_is_upscaled_into_the_canvas_undoably(qtbot, make_window):
    fake = FakeBackend()
    window = make_window(fake)
    s, doc, canvas = window.session, window.session.document, window.canvas
    s.show_image(picture())
    before = rgb(doc.image)
    canvas.set_tool("select")
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 10, 20))
    qtbot.mouseMove(canvas, widget_point(canvas, 40, 40))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 50, 60))
    assert doc.selection == (10, 20, 40, 40)
    s.update_params(region_in_place=False)  # paste back off (test_region_refine: on): the region is the new canvas
    s.set_mode("upscale")
    assert window.prompt_panel.upscale_options.target.text() == "Upscales the selection 40×40 to 80×80"
    frames = []
    s.live_canvas.connect(lambda image: frames.append(QImage(image)))
    s.update_params(steps=2, seed=1, upscale_mode="diffusion")  # not the default (model): tiles of steps
    job = s.generate()
    assert job is not None
    fake.allow(3)  # tile 1 (2 steps) and the first step of tile 2 (previews may coalesce)
    qtbot.waitUntil(lambda: bool(frames) and frames[-1].pixelColor(60, 10).red() == 102)
    live = frames[-1]
    assert (live.width(), live.height()) == (80, 80)  # tile 2 (top right) has its preview in place
    assert live.pixelColor(10, 10).red() == 101  # and tile 1 keeps its own
    assert window.canvas.image().size() == live.size()  # the canvas shows the upscale forming
    fake.run_free()
    qtbot.waitUntil(lambda: not s.is_running())
    r = fake.requests[-1]
    assert r.mode == "upscale" and np.array_equal(r.init_image, before[20:60, 10:50])
    assert r.upscale.scale == 2.0 and r.strength == 0.3 and r.upscale.method == "diffusion"
    assert doc.size() == (80, 80) and doc.selection is None
    result = rgb(doc.image)
    assert result[0, 0, 0] == min(255, int(before[20, 10, 0]) + 1)  # the fake's mark: the region, enlarged
    s.undo()
    assert np.array_equal(rgb(doc.image), before)


def test_a_click_with_the_select_tool_clears_the_selection(qtbot, window):
    doc, canvas = window.session.document, window.canvas
    window.session.show_image(picture())
    doc.set_selection((5, 5, 20, 20))
    canvas.set_tool("select")
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=widget_point(canvas, 30, 30))
    assert doc.selection is None
    doc.set_selection((-10, 70, 50, 50))  # clipped to the image
    assert doc.selection == (0, 70, 40, 10)


def test_an_upscale_too_large_is_refused_before_any_work(qtbot, window, fake):
    window.session.show_image(picture(2000, 1500))
    window.session.set_mode("upscale")
    window.session.update_params(scale=8.0)
    assert window.session.generate() is None
    assert "too large" in window.banner.label.text()
    assert fake.requests == []


def test_the_upscaler_list_comes_from_the_backend(qtbot, make_window):
    class WithUpscalers(FakeBackend):
        def info(self):
            info = super().info()
            return dataclasses.replace(info, upscalers=(("/m/4x-tiny.safetensors", "4x-tiny (ESRGAN x4)"),)
                                       if self.started else ())  # fmt: skip

    window = make_window(WithUpscalers())
    combo = window.prompt_panel.upscale_options.upscaler
    assert [combo.itemText(i) for i in range(combo.count())] == ["Built-in SwinIR x4"]  # the model method's default
    with qtbot.waitSignal(window.session.capabilities_changed):
        window.start_engine()
    assert combo.itemText(1) == "4x-tiny (ESRGAN x4)"
    combo.setCurrentIndex(1)
    assert window.session.params.upscaler == "/m/4x-tiny.safetensors"
    window.session.show_image(QImage(QImage(16, 16, QImage.Format.Format_RGB888)))
    window.session.document.image.fill(QColor("white"))
    window.session.set_mode("upscale")
    assert window.session.params.to_request().upscale.upscaler == "/m/4x-tiny.safetensors"
