"""The panel's few-step presets: one click sets sampler, schedule, steps and CFG; a few-step LoRA in the prompt or a
few-step model brings a one-line hint whose Apply sets its preset, and nothing changes until the artist clicks."""

from __future__ import annotations

import dataclasses

import numpy as np
from PySide6.QtCore import Qt
from safetensors.numpy import save_file

from studio.settings import Settings

# An LCM-LoRA's layer set (time-embedding projections, sampler convs, no text encoder) under a name that says nothing.
LCM_LORA = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight",
            "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"]  # fmt: skip


def _folder(tmp_path):
    root = tmp_path / "models"
    (root / "Lora").mkdir(parents=True)
    save_file({k: np.zeros((4, 768), np.float32) for k in LCM_LORA}, str(root / "Lora" / "mystery.safetensors"))
    return root


def _shown(panel) -> tuple[str, str, int, float]:
    return panel.sampler.currentText(), panel.schedule.currentText(), panel.steps.value(), panel.cfg.value()


def test_preset_menu_sets_the_fields(qtbot, window):
    panel = window.prompt_panel
    assert not panel.presets.hint.isVisibleTo(panel)
    actions = {a.text(): a for a in panel.presets.menu.actions()}
    assert "LCM: 4 steps, CFG 1.5" in actions and "SD Turbo: 1 step, CFG 1" in actions
    actions["Lightning 4-step: 4 steps, CFG 1"].trigger()
    p = window.session.params
    assert (p.sampler, p.schedule, p.steps, p.cfg) == ("Euler", "SGM Uniform", 4, 1.0)
    assert _shown(panel) == ("Euler", "SGM Uniform", 4, 1.0)
    actions["SD Turbo: 1 step, CFG 1"].trigger()
    assert _shown(panel) == ("Euler a", "SGM Uniform", 1, 1.0)


def test_a_few_step_lora_is_offered_never_applied_silently(qtbot, make_window, fake, tmp_path):
    settings = Settings.load()
    settings.model_folders = [str(_folder(tmp_path))]
    window = make_window(fake, settings=settings)
    panel, session = window.prompt_panel, window.session
    before = _shown(panel)
    panel.prompt.setPlainText("a lighthouse <lora:mystery:1>")
    assert panel.presets.hint.isVisibleTo(panel)
    text = panel.presets.hint_label.text()
    assert "mystery" in text and "LCM: 4 steps, CFG 1.5" in text
    assert "LCM-LoRA" in panel.presets.hint.toolTip()  # why: its layers
    assert _shown(panel) == before and session.params.sampler == before[0]  # nothing changed by itself

    qtbot.mouseClick(panel.presets.apply_button, Qt.MouseButton.LeftButton)
    assert _shown(panel) == ("LCM", "Normal", 4, 1.5)
    assert not panel.presets.hint.isVisibleTo(panel)  # applied: nothing more to offer
    fake.run_free()
    with qtbot.waitSignal(session.result_image):
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    r = fake.requests[-1]
    assert (r.sampler, r.schedule, r.steps, r.cfg) == ("LCM", "Normal", 4, 1.5)

    panel.steps.setValue(8)  # the artist's own change: the hint comes back, the steps stay theirs
    assert panel.presets.hint.isVisibleTo(panel) and session.params.steps == 8
    panel.prompt.setPlainText("a lighthouse")
    assert not panel.presets.hint.isVisibleTo(panel)


def test_a_few_step_model_is_offered(qtbot, window, tmp_path):
    model = tmp_path / "sdxl_lightning_8step.safetensors"
    save_file({"model.diffusion_model.out.2.weight": np.zeros((2, 2), np.float32)}, str(model))
    session, panel = window.session, window.prompt_panel
    session.set_params(dataclasses.replace(session.params, model=str(model)))
    assert panel.presets.hint.isVisibleTo(panel)
    assert "Lightning 8-step: 8 steps, CFG 1" in panel.presets.hint_label.text()
    qtbot.mouseClick(panel.presets.apply_button, Qt.MouseButton.LeftButton)
    assert _shown(panel) == ("Euler", "SGM Uniform", 8, 1.0)
