"""End to end with the real engine and a tiny random-weight pipeline: click -> PNG -> gallery."""

import numpy as np
from PySide6.QtCore import Qt

from studio.app import build_window
from studio.backends.local import LocalBackend
from studio.core.metadata import read_parameters, request_fields
from studio.qimage import array_to_qimage, qimage_to_array
from studio.settings import Settings


def test_generate_with_the_real_engine(qtbot, tiny_model, out_dir):
    """tiny_model: the session-wide tiny random pipeline of tests/conftest.py."""
    window = build_window(Settings(stage_results=False), LocalBackend(device="cpu"), model=str(tiny_model), output_dir=str(out_dir))
    qtbot.addWidget(window)
    window.show()
    try:
        panel = window.prompt_panel
        panel.prompt.setPlainText("a tiny red circle")
        panel.steps.setValue(3)
        panel.seed.setText("11")
        panel.sampler.setCurrentText("Euler")
        previews = []
        window.session.preview_changed.connect(lambda img: previews.append(img))
        with qtbot.waitSignal(window.session.result_image, timeout=180_000) as blocker:
            qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
        path, image = blocker.args
        files = list(out_dir.glob("*.png"))
        assert [str(f) for f in files] == [path]
        fields = request_fields(read_parameters(files[0]))
        assert (fields["prompt"], fields["steps"], fields["seed"], fields["sampler"]) == (
            "a tiny red circle",
            3,
            11,
            "Euler",
        )
        # the gallery and the canvas show exactly the pixels written to disk
        assert window.gallery.paths()[0] == path
        from PIL import Image

        on_disk = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(qimage_to_array(window.canvas.image()), on_disk)
        assert previews, "no live preview arrived"
        timeline = window.preview_panel.timeline
        qtbot.waitUntil(timeline.isEnabled)
        assert timeline.maximum() == 3
        timeline.setValue(1)
        with qtbot.waitSignal(window.session.decoded, timeout=60_000) as dec:
            qtbot.mouseClick(window.preview_panel.decode_button, Qt.MouseButton.LeftButton)
        assert dec.args[0] == 1 and dec.args[1].size() == window.canvas.image().size()
    finally:
        window.close()
    import threading

    assert "studio-engine" not in [t.name for t in threading.enumerate()]


def test_inpaint_only_masked_from_the_window_with_the_real_engine(qtbot, tiny_inpaint_model, out_dir):
    """The crop drawn before the run is the one the engine worked on; unmasked pixels stay exact."""
    from PySide6.QtGui import QImage

    window = build_window(Settings(stage_results=False), LocalBackend(device="cpu"), model=str(tiny_inpaint_model),
                          output_dir=str(out_dir))  # fmt: skip
    qtbot.addWidget(window)
    window.show()
    try:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 255, (96, 128, 3), np.uint8)
        s = window.session
        s.show_image(QImage(array_to_qimage(pixels)))
        mask = np.zeros((96, 128), np.uint8)
        mask[40:52, 70:84] = 255
        s.document.set_mask(mask, "Brush stroke")
        s.update_params(prompt="a red dot", steps=2, seed=5, mode="inpaint", inpaint_area="masked",
                        inpaint_padding=8, mask_blur=2)  # fmt: skip
        drawn = window.canvas.crop_rect()
        assert drawn is not None and drawn == s.inpaint_crop()
        finished = []
        s._worker.finished.connect(lambda job_id, out: finished.append(out))
        with qtbot.waitSignal(s.result_image, timeout=180_000):
            s.generate()
        qtbot.waitUntil(lambda: len(finished) == 1)
        x0, y0, x1, y1 = finished[0].result.crop
        assert (x0, y0, x1 - x0, y1 - y0) == drawn
        result = qimage_to_array(s.document.image)
        assert result.shape == pixels.shape
        from studio.core.inpaint import blend_mask

        outside = blend_mask(mask, 2) == 0
        assert outside.sum() > 0.8 * mask.size
        assert np.array_equal(result[outside], pixels[outside])
    finally:
        window.close()
