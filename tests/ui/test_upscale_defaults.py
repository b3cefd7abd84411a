"""Safe defaults for upscaling (issue 23, item 7): a method that keeps the picture, a model preselected, options
that do nothing disabled, the options in view at 1440x900 under a heading that says what they are."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QRect
from PySide6.QtWidgets import QScrollArea

from studio.backends.fake import FakeBackend
from studio.cli import main
from studio.paths import BUILTIN_UPSCALERS_DIR
from studio.session import Params
from studio.settings import Settings

BUILTIN_SWINIR = str(BUILTIN_UPSCALERS_DIR / "swinir-x4.safetensors")
MODELS = (("/m/4x-tiny.safetensors", "4x-tiny (ESRGAN x4)"), ("/m/2x-other.pth", "2x-other (SwinIR x2)"))


class WithUpscalers(FakeBackend):
    """A backend that lists upscaler models once started (as the local engine does)."""

    def info(self):
        return dataclasses.replace(super().info(), upscalers=MODELS if self.started else ())


def test_the_default_method_is_an_upscaler_model_with_the_built_in_swinir():
    p = Params(mode="upscale")
    assert p.upscale_mode == "model"
    r = p.to_request().replace(init_image=np.zeros((16, 16, 3), np.uint8))
    assert r.upscale.method == "model" and r.upscale.upscaler == BUILTIN_SWINIR
    r.validate()  # not "The model upscale needs an upscaler model"


def test_the_panel_starts_at_upscaler_model(qtbot, window):
    window.session.set_mode("upscale")
    assert window.prompt_panel.upscale_options.method.currentData() == "model"


def test_a_remembered_method_is_kept(qtbot, make_window, config_dir):
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "settings.json").write_text(json.dumps({"params": {"upscale_mode": "diffusion"}}))
    window = make_window(settings=Settings.load())
    assert window.session.params.upscale_mode == "diffusion"
    assert window.prompt_panel.upscale_options.method.currentData() == "diffusion"


def test_upscaler_model_preselects_the_first_model(qtbot, make_window):
    window = make_window(WithUpscalers())
    opts, s = window.prompt_panel.upscale_options, window.session
    with qtbot.waitSignal(s.capabilities_changed):
        window.start_engine()
    assert opts.upscaler.currentData() == "/m/4x-tiny.safetensors" and s.params.upscaler == "/m/4x-tiny.safetensors"
    # Lanczos is no upscaler model: a diffusion upscale's Lanczos resize gives way to a model on switching.
    opts.method.setCurrentIndex(opts.method.findData("diffusion"))
    opts.upscaler.setCurrentIndex(opts.upscaler.findData(""))
    assert s.params.upscaler == ""
    opts.method.setCurrentIndex(opts.method.findData("model"))
    assert s.params.upscaler == "/m/4x-tiny.safetensors"


def test_a_chosen_upscaler_is_kept(qtbot, make_window):
    window = make_window(WithUpscalers())
    s = window.session
    s.update_params(upscaler="/m/2x-other.pth")
    with qtbot.waitSignal(s.capabilities_changed):
        window.start_engine()
    assert s.params.upscaler == "/m/2x-other.pth"


@pytest.mark.parametrize(
    "method,strength,upscaler,tiles",
    [("model", False, True, True), ("diffusion", True, True, True), ("latent", False, False, True),
     ("resize", False, False, False)],
)  # fmt: skip
def test_options_that_do_nothing_are_disabled_and_say_why(qtbot, window, method, strength, upscaler, tiles):
    s, opts = window.session, window.prompt_panel.upscale_options
    s.set_mode("upscale")
    opts.method.setCurrentIndex(opts.method.findData(method))
    assert s.params.upscale_mode == method
    for widget, enabled in ((opts.strength, strength), (opts.upscaler, upscaler), (opts.tile, tiles),
                            (opts.overlap, tiles)):  # fmt: skip
        assert widget.isEnabled() == enabled, (method, widget.toolTip())
        assert ("not used by" in widget.toolTip()) != enabled, widget.toolTip()


def test_the_upscale_options_are_in_view_at_1440x900_under_their_heading(qtbot, window):
    window.resize(1440, 900)
    window.session.set_mode("upscale")
    qtbot.wait(50)  # the layout settles
    opts = window.prompt_panel.upscale_options
    assert opts.heading.text() == "UPSCALE OPTIONS" and opts.heading.isVisible()
    scroll = window.prompt_panel.findChild(QScrollArea)
    view = scroll.viewport().rect()
    for w in (opts.heading, opts.method, opts.scale, opts.upscaler, opts.strength, opts.tile, opts.overlap):
        top_left = w.mapTo(scroll.viewport(), QPoint(0, 0))
        assert view.contains(QRect(top_left, w.size())), (w, top_left, view)


# -- the CLI ------------------------------------------------------------------------------------------------


def _png(tmp_path, size=(24, 16)):
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([40 + 160 * xx / (w - 1), 40 + 160 * yy / (h - 1), 100 + 0 * xx], -1).round().astype(np.uint8)
    Image.fromarray(a).save(p := tmp_path / "low.png")
    return p


@pytest.mark.parametrize("mode", [[], ["--mode", "model"]])
def test_cli_upscale_defaults_to_the_built_in_swinir(capsys, tmp_path, mode):
    code = main(["upscale", "--image", str(_png(tmp_path)), *mode, "--out", str(tmp_path / "o"), "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "built-in SwinIR" in err and len(err.strip().splitlines()) == 1, err
    assert Image.open(out.strip()).size == (48, 32)
    from studio.core.metadata import read_parameters, request_fields

    f = request_fields(read_parameters(out.strip()))
    assert f["upscale_mode"] == "model"


def test_a_disabled_strength_box_looks_disabled():
    # The stylesheet's text colour wins over the palette: a rule without QDoubleSpinBox kept it bright.
    from studio.paths import RESOURCES

    qss = (RESOURCES / "styles" / "dark.qss").read_text(encoding="utf-8")
    disabled = next(line for line in qss.splitlines() if "QSpinBox:disabled" in line)
    assert "QDoubleSpinBox:disabled" in disabled
