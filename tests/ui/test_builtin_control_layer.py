"""A scribble control layer on the built-in model starts with the built-in scribble ControlNet (no setup)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.paths import BUILTIN_CONTROLNET
from studio.qimage import array_to_qimage


def test_new_scribble_layer_on_the_builtin_model_uses_the_builtin_controlnet(make_window, monkeypatch):
    if not (BUILTIN_CONTROLNET / "config.json").is_file():
        pytest.skip("models/builtin-scribble has not been exported yet")
    from studio.session import library

    real = library.addon_choices
    other = ("control_v11p_sd15_scribble  ·  SD 1.x  ·  scribble", "/models/ControlNet/control_v11p_sd15_scribble.pth")

    def choices(folders, kind):  # an SD 1.5 scribble ControlNet listed first, as a folder scan sorts by name
        return [other, *real(folders, kind)] if kind == "controlnet" else real(folders, kind)

    monkeypatch.setattr(library, "addon_choices", choices)
    window = make_window()
    s, doc, panel = window.session, window.session.document, window.layers_panel
    assert not s.params.model  # the built-in model
    s.show_image(array_to_qimage(np.full((64, 64, 3), 255, np.uint8)))
    panel.control_button.click()
    layer = doc.layers[doc.active]
    assert layer.control is not None and layer.control.module == "scribble"
    assert Path(layer.control.model).resolve() == BUILTIN_CONTROLNET.resolve()
    assert panel.control_props.model_box.currentText().startswith("Built-in scribble")
    s.update_params(model="/models/v1-5-pruned.safetensors")  # another model: the built-in one is not offered
    assert [fid for _label, fid in s.addon_choices("controlnet")] == [other[1]]
