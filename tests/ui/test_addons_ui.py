"""The panel's add-on pickers: VAE files in a combo, LoRAs and embeddings inserted into the prompt, memory
settings carried by the next request."""

from __future__ import annotations

import torch
from PySide6.QtCore import Qt
from safetensors.torch import save_file

from studio.settings import Settings


def _folder(tmp_path):
    root = tmp_path / "webui" / "models"
    (root / "Lora").mkdir(parents=True)
    (root / "VAE").mkdir()
    (root / "embeddings").mkdir()
    save_file({"lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768)}, str(root / "Lora" / "ink.safetensors"))
    save_file({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_in.weight": torch.zeros(1)},
              str(root / "VAE" / "ft-mse.safetensors"))  # fmt: skip
    save_file({"emb_params": torch.zeros(2, 768)}, str(root / "embeddings" / "easyneg.safetensors"))
    return root


def test_vae_picker_and_extras_menu(qtbot, make_window, fake, tmp_path):
    settings = Settings.load()
    settings.model_folders = [str(_folder(tmp_path))]
    window = make_window(fake, settings=settings)
    panel = window.prompt_panel
    labels = [panel.vae.itemText(i) for i in range(panel.vae.count())]
    assert labels[0] == "VAE: Automatic" and any("ft-mse" in t for t in labels)
    panel.vae.setCurrentIndex(next(i for i, t in enumerate(labels) if "ft-mse" in t))
    assert window.session.params.vae.endswith("ft-mse.safetensors")

    panel.prompt.setPlainText("a castle")
    cursor = panel.prompt.textCursor()
    cursor.movePosition(cursor.MoveOperation.End)
    panel.prompt.setTextCursor(cursor)
    panel._fill_extras()
    actions = {a.text(): a for a in panel.extras_menu.actions() if a.text()}
    assert [a.text() for a in panel.extras_menu.actions() if not a.isEnabled()] == ["LORAS", "EMBEDDINGS"]
    assert "ink  ·  SD 1.x" in actions and "easyneg  ·  SD 1.x" in actions
    actions["ink  ·  SD 1.x"].trigger()
    assert panel.prompt.toPlainText() == "a castle <lora:ink:1>"
    actions["easyneg  ·  SD 1.x"].trigger()
    assert window.session.params.prompt == "a castle <lora:ink:1> easyneg"

    # The request carries the VAE; the memory settings go to the backend before the run.
    window.session.settings.vae_tiling = True
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    r = fake.requests[-1]
    assert r.vae.endswith("ft-mse.safetensors")
    assert fake.memory.vae_tiling and not fake.memory.attention_slicing
    assert r.prompt == "a castle <lora:ink:1> easyneg"


def test_a_vae_named_in_an_image_is_matched_by_name(make_window, fake, tmp_path):
    settings = Settings.load()
    settings.model_folders = [str(_folder(tmp_path))]
    window = make_window(fake, settings=settings)
    window.session.apply_fields({"prompt": "x", "vae": "ft-mse"})
    assert window.prompt_panel.vae.currentText() == "VAE: ft-mse"
    assert window.session.params.vae.endswith("ft-mse.safetensors")
    window.session.apply_fields({"prompt": "x", "vae": "elsewhere"})
    assert window.prompt_panel.vae.currentText() == "VAE: elsewhere"


def test_a_checkpoint_that_fails_to_load_leaves_the_model_it_had(qtbot, make_window, fake, tmp_path):
    from studio.core.errors import ModelError

    bad = tmp_path / "models" / "broken.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 32)
    loads = []

    def load(model):
        if model and model.endswith("broken.safetensors"):
            raise ModelError("broken.safetensors is not a safetensors file, or it is truncated")
        loads.append(model)

    fake.load = load
    settings = Settings.load()
    settings.model_folders = [str(bad.parent)]
    window = make_window(fake, settings=settings)
    window.session.enable_warm_up()
    qtbot.waitUntil(lambda: loads == [None])
    panel = window.prompt_panel
    idx = panel.model.findData(str(bad))
    assert idx > 0  # listed (the library cannot read it either, but it is a .safetensors in a model folder)
    panel.model.setCurrentIndex(idx)
    qtbot.waitUntil(lambda: window.banner.isVisible())
    assert window.banner.label.text() == (
        "broken.safetensors is not a safetensors file, or it is truncated. Still using the built-in model"
    )
    assert window.session.params.model == "" and panel.model.currentIndex() == 0
    fake.run_free()
    with qtbot.waitSignal(window.session.result_image):
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    assert fake.requests[-1].model is None


def test_a_warm_up_that_ends_after_a_run_leaves_the_runs_message(qtbot, make_window, fake):
    window = make_window(fake)
    session = window.session
    session.update_params(prompt="a fox", steps=2)
    with qtbot.waitSignal(session.progress, timeout=5000):
        session.generate()  # the artist pressed Ctrl+Enter before the engine's delayed start
    session.enable_warm_up()  # the load job queues behind the run
    fake.run_free()
    with qtbot.waitSignal(session._worker.model_loaded, timeout=5000):
        pass
    qtbot.waitUntil(lambda: window.status_label.text().startswith("Done in"))
    qtbot.wait(50)
    assert window.status_label.text().startswith("Done in")
