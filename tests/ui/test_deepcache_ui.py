"""The panel's "Reuse deep features every N steps" control: it sets the request's deep_cache, the saved PNG says
it, an image's metadata restores it, and its tooltip states the speed and the quality cost."""

from PySide6.QtCore import Qt

from studio.core.metadata import read_parameters
from studio.session import Params


def test_the_toggle_sets_the_run_and_its_metadata(qtbot, window, fake, out_dir):
    panel = window.prompt_panel
    assert not panel.deep_cache.isChecked() and not panel.deep_interval.isEnabled()
    assert "dB" in panel.deep_cache.toolTip() and "faster" in panel.deep_cache.toolTip()
    panel.deep_cache.setChecked(True)
    assert panel.deep_interval.isEnabled() and window.session.params.deep_cache == 3
    panel.deep_interval.setValue(4)
    assert window.session.params.to_request().deep_cache == 4
    panel.prompt.setPlainText("a red circle")
    panel.steps.setValue(20)
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    assert "Deep cache: 4" in read_parameters(sorted(out_dir.glob("*.png"))[0])
    panel.deep_cache.setChecked(False)
    assert window.session.params.deep_cache == 0 and panel.deep_interval.value() == 4  # the interval is kept


def test_an_image_restores_it(window):
    panel = window.prompt_panel
    window.session.set_params(Params().with_fields({"deep_cache": 5, "prompt": "x"}))
    assert panel.deep_cache.isChecked() and panel.deep_interval.value() == 5
    window.session.set_params(Params().with_fields({"deep_cache": 0, "prompt": "x"}))
    assert not panel.deep_cache.isChecked() and window.session.params.deep_cache == 0
