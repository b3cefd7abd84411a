"""The built-in scribble ControlNet: its training command resumes, the shipped weights load offline and make the
built-in model fill a drawn outline (through the engine, as the app runs it), and a scribble control layer on the
built-in model picks it by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.paths import BUILTIN_CONTROLNET, BUILTIN_MODEL


def _shipped_or_skip() -> Path:
    if not (BUILTIN_CONTROLNET / "config.json").is_file():
        pytest.skip("models/builtin-scribble has not been exported yet (run `python -m studio.training export-controlnet`)")
    return BUILTIN_CONTROLNET


# -- the data --------------------------------------------------------------------------------------------------


def test_scribble_samples_are_deterministic_and_the_target_fills_the_outline():
    from studio.training.control_data import HELD_OUT_STREAM, TRAIN_STREAM, ScribbleDataset
    from studio.training.evaluate_control import filled_region, iou

    ds = ScribbleDataset(TRAIN_STREAM)
    a, b = ds.sample(7), ds.sample(7)
    assert a.caption == b.caption and np.array_equal(a.target, b.target) and np.array_equal(a.control, b.control)
    for i in range(40):
        s = ds.sample(i)
        assert s.control.max() >= 200 and np.median(s.control) == 0  # white strokes on black
        if len(s.figures) == 1:  # the picture's filled region is the outline's interior
            assert iou(filled_region(s.target), s.interior) > 0.85
    held = ScribbleDataset(HELD_OUT_STREAM, held_out=True)
    assert all(len(held.sample(i).figures) == 1 for i in range(20))


# -- training --------------------------------------------------------------------------------------------------


def test_tiny_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, capsys):
    from studio.training.train_controlnet import CONTROL_PRESETS, train_controlnet

    straight = train_controlnet(tmp_path / "a", CONTROL_PRESETS["tiny"], BUILTIN_MODEL, steps=4, progress=False)
    train_controlnet(tmp_path / "b", CONTROL_PRESETS["tiny"], BUILTIN_MODEL, steps=2, progress=False)
    capsys.readouterr()
    resumed = train_controlnet(tmp_path / "b", CONTROL_PRESETS["tiny"], BUILTIN_MODEL, steps=4, progress=False)
    assert "resumed ControlNet training at step 2" in capsys.readouterr().out
    assert straight["steps"] == resumed["steps"] == 4
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    moved = 0.0
    for k, v in a["controlnet"].items():
        assert torch.equal(v, b["controlnet"][k]), k
        if "zero_conv" in k or "controlnet_mid_block" in k:
            moved = max(moved, float(v.abs().max()))
    assert moved > 0  # the zero convolutions left zero: it trained
    rows = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


# -- the shipped weights ---------------------------------------------------------------------------------------


def outline(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(control image: a white 2 px outline on black, its interior) of a square or circle, off the picture's centre
    and of a size the data set never draws (the model alone does not put it there)."""
    from PIL import Image, ImageDraw

    ctl, inside = Image.new("RGB", (64, 64)), Image.new("L", (64, 64))
    box = [8, 8, 44, 44] if kind == "square" else [22, 18, 58, 54]
    draw = ImageDraw.Draw(ctl).rectangle if kind == "square" else ImageDraw.Draw(ctl).ellipse
    draw(box, outline=(255, 255, 255), width=2)
    (ImageDraw.Draw(inside).rectangle if kind == "square" else ImageDraw.Draw(inside).ellipse)(box, fill=255)
    return np.asarray(ctl), np.asarray(inside) > 127


@pytest.fixture(scope="module")
def engine():
    from studio.engine import Engine

    return Engine(device="cpu")


@pytest.mark.parametrize("kind, color", [("square", "blue"), ("circle", "red")])
def test_a_scribble_on_the_builtin_model_is_filled_with_the_prompts_colour(engine, kind, color):
    from studio.core import GenerateRequest
    from studio.core.control import ControlSpec
    from studio.training.evaluate_control import filled_region, iou, region_color

    _shipped_or_skip()
    image, inside = outline(kind)
    base = dict(prompt=f"a {color} {kind} on a white background", steps=20, seed=3, width=64, height=64, cfg=6.0,
                sampler="Euler")  # fmt: skip
    plain = engine.generate(GenerateRequest(**base)).images[0]
    spec = ControlSpec(model=str(BUILTIN_CONTROLNET), image=image, module="scribble")
    ruled = engine.generate(GenerateRequest(**base, controls=(spec,))).images[0]
    with_control, without = iou(filled_region(ruled), inside), iou(filled_region(plain), inside)
    assert with_control >= 0.6 and with_control > without + 0.25, (with_control, without)
    assert region_color(ruled, filled_region(ruled)) == color


def test_shipped_folder_loads_offline_small_and_float32_by_default():
    from diffusers import ControlNetModel

    folder = _shipped_or_skip()
    net = ControlNetModel.from_pretrained(str(folder), local_files_only=True)
    assert net.dtype == torch.float32 and net.config.in_channels == 4
    assert list(net.config.block_out_channels) == [64, 128, 128] and net.config.cross_attention_dim == 64
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 8 * 1024 * 1024
    assert (folder / "README.md").read_text().count("IoU") >= 2  # the model card carries its measurements


# -- the app ---------------------------------------------------------------------------------------------------


def test_a_scribble_layer_on_the_builtin_model_defaults_to_the_builtin_controlnet(tmp_path):
    from studio.core.modelfiles import classify
    from studio.session import library
    from studio.ui.control_props import pick_model

    _shipped_or_skip()
    found = classify(BUILTIN_CONTROLNET)
    assert found.kind == "controlnet" and found.control == "scribble"
    other_scribble = ("control_v11p_sd15_scribble  ·  SD 1.x  ·  scribble", "/m/control_v11p_sd15_scribble.safetensors")
    listed = [other_scribble, *library.addon_choices([str(tmp_path)], "controlnet")]
    on_builtin = library.controlnets_for(listed, "")
    assert Path(on_builtin[0][1]).resolve() == BUILTIN_CONTROLNET.resolve()
    assert Path(pick_model(on_builtin, "scribble")).resolve() == BUILTIN_CONTROLNET.resolve()
    assert library.controlnets_for(listed, str(BUILTIN_MODEL)) == on_builtin
    # another model: the built-in ControlNet does not fit its U-Net, so it is not offered
    on_sd = library.controlnets_for(listed, "/m/v1-5-pruned.safetensors")
    assert on_sd == [other_scribble] and pick_model(on_sd, "scribble") == other_scribble[1]
