"""End to end with the real engine and a tiny random-weight pipeline: click -> PNG -> gallery."""

import numpy as np
from PySide6.QtCore import Qt

from studio.app import build_window
from studio.backends.local import LocalBackend
from studio.engine.metadata import read_parameters, request_fields
from studio.qimage import qimage_to_array
from studio.settings import Settings


def test_generate_with_the_real_engine(qtbot, tiny_model, out_dir):
    """tiny_model: the session-wide tiny random pipeline of tests/conftest.py."""
    window = build_window(Settings(), LocalBackend(device="cpu"), model=str(tiny_model), output_dir=str(out_dir))
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
        with qtbot.waitSignal(window.session.image_saved, timeout=180_000) as blocker:
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
