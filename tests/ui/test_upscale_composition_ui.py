"""The upscale options' "Keep composition" checkbox: on by default, it sets the request's field, only the diffusion
method uses it (elsewhere disabled, the tooltip says why), and it is remembered with the other upscale options."""

import numpy as np

from studio.settings import Settings


def test_the_checkbox_sets_the_request_and_is_only_for_diffusion(qtbot, window):
    s, opts = window.session, window.prompt_panel.upscale_options
    s.set_mode("upscale")
    opts.method.setCurrentIndex(opts.method.findData("diffusion"))
    box = opts.keep_composition
    assert box.isChecked() and box.isEnabled() and s.params.keep_composition
    assert "Off:" in box.toolTip() and "On (default)" in box.toolTip() and "not used by" not in box.toolTip()
    box.setChecked(False)
    assert s.params.keep_composition is False
    r = s.params.to_request().replace(init_image=np.zeros((16, 16, 3), np.uint8))
    assert r.upscale.method == "diffusion" and r.upscale.keep_composition is False
    box.setChecked(True)
    assert s.params.to_request().upscale.keep_composition is True
    for method in ("model", "resize", "latent"):
        if opts.method.findData(method) < 0:
            continue
        opts.method.setCurrentIndex(opts.method.findData(method))
        assert not box.isEnabled() and "Disabled: not used by" in box.toolTip(), method


def test_off_is_remembered(qtbot, make_window):
    window = make_window()
    window.session.set_mode("upscale")
    window.prompt_panel.upscale_options.keep_composition.setChecked(False)
    window.close()
    assert Settings.load().params["keep_composition"] is False
    again = make_window()
    again.session.set_mode("upscale")
    assert again.session.params.keep_composition is False
    assert not again.prompt_panel.upscale_options.keep_composition.isChecked()
