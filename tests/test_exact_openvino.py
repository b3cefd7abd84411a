"""Exact mode on OpenVINO f32 (studio.engine.speed): used only where turbo's conversion of the model is already
cached (exact never converts), within 1/255 of plain diffusers over 20 steps, counted, and back on torch with one
log line when OpenVINO fails or DeepCache needs the torch U-Net."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from studio.core import GenerateRequest  # noqa: E402
from studio.engine import speed, turbo  # noqa: E402
from studio.engine.engine import Engine  # noqa: E402
from studio.engine.turbo import cache, runtime  # noqa: E402

SIZE = 32
STEPS = 20


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=model, steps=STEPS, seed=77, width=SIZE, height=SIZE, cfg=7.0,
                sampler="Euler a")  # fmt: skip
    base.update(kw)
    return GenerateRequest.from_fields(**base)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """A turbo cache of its own, the plain diffusers image, and the engine's exact image before any conversion."""
    mp = pytest.MonkeyPatch()
    mp.setenv(cache.CACHE_ENV, str(tmp_path_factory.mktemp("exact-ov-cache")))
    mp.setenv("STUDIO_EXACT_OPENVINO", "1")  # (tests/conftest.py keeps exact on torch for every other test)
    runtime.forget_stores()
    engine = Engine(device="cpu")
    yield engine, _plain_diffusers(tiny_model)
    runtime.forget_stores()
    mp.undo()


def _plain_diffusers(path: str) -> np.ndarray:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    img = pipe(prompt="a red circle", num_inference_steps=STEPS, guidance_scale=7.0, width=SIZE, height=SIZE,
               generator=torch.Generator("cpu").manual_seed(77), output_type="np").images[0]  # fmt: skip
    return (img * 255).round().astype(np.uint8)


def worst(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_exact_uses_openvino_f32_only_once_turbo_has_converted_the_model(setup, tiny_model):
    engine, plain = setup
    before, conversions = speed.exact_openvino_runs, turbo.conversions
    r = engine.generate(req(tiny_model))  # nothing cached: torch, and no conversion started
    assert speed.exact_openvino_runs == before and turbo.conversions == conversions
    assert r.request.speed == "exact" and worst(r.images[0], plain) <= 1
    torch_image = r.images[0]

    t = engine.generate(req(tiny_model, speed="turbo", steps=2))  # converts, once (bf16 or f32: the same IR)
    assert t.request.speed == "turbo" and turbo.conversions == conversions + 1

    seen = []
    r = engine.generate(req(tiny_model), on_step=seen.append)
    assert speed.exact_openvino_runs == before + 1  # the OpenVINO path ran this one
    assert turbo.conversions == conversions + 1  # from the cache
    assert r.request.speed == "exact" and r.extra_params["Speed"] == "exact" and r.notice == ""
    assert worst(r.images[0], plain) <= 1 and worst(r.images[0], torch_image) <= 1
    stages = [s.stage for s in seen if s.step == 0]
    assert [s for s in stages if s.startswith("Exact (OpenVINO f32): Compiling for ")], stages  # a size seen first
    assert type(engine.load(tiny_model).base.unet).__name__ == "UNet2DConditionModel"  # swapped back


def test_exact_falls_back_to_torch_with_one_log_line(setup, tiny_model, monkeypatch, caplog):
    engine, plain = setup
    assert turbo.is_cached(speed.turbo_cache_key(engine.load(tiny_model), engine.load(tiny_model).base))

    def broken(*a, **k):
        raise turbo.TurboUnavailable("OpenVINO failed to compile the U-Net for 32x32: boom")

    monkeypatch.setattr(turbo, "turbo_unet", broken)
    before = speed.exact_openvino_runs
    with caplog.at_level(logging.WARNING, logger="studio.engine.speed"):
        r = engine.generate(req(tiny_model))
    assert speed.exact_openvino_runs == before and r.notice == "" and r.request.speed == "exact"
    assert worst(r.images[0], plain) <= 1
    lines = [m for m in caplog.messages if "exact mode runs on torch" in m]
    assert lines == ["exact mode runs on torch: OpenVINO failed to compile the U-Net for 32x32: boom"]


def test_deep_cache_and_the_opt_out_keep_exact_on_torch(setup, tiny_model, monkeypatch):
    engine, _plain = setup
    before = speed.exact_openvino_runs
    r = engine.generate(req(tiny_model, deep_cache=3))
    assert r.request.deep_cache == 3 and speed.exact_openvino_runs == before  # DeepCache wrapped the torch U-Net
    monkeypatch.setenv("STUDIO_EXACT_OPENVINO", "0")
    engine.generate(req(tiny_model, steps=2))
    assert speed.exact_openvino_runs == before
    monkeypatch.delenv("STUDIO_EXACT_OPENVINO")
    engine.generate(req(tiny_model, steps=2))
    assert speed.exact_openvino_runs == before + 1


def test_a_lora_set_that_was_not_converted_runs_exact_on_torch(setup, tiny_model, tmp_path):
    from test_speed import _tiny_lora  # tests/ is on sys.path (pytest's default rootdir-less import mode)

    from studio.engine import addons

    engine, _plain = setup
    model = engine.load(tiny_model)
    lora = tmp_path / "style.safetensors"
    _tiny_lora(model.base.unet, lora)
    loras = addons.lora_set(model.base)
    try:
        loras.apply([(lora, 0.8)])
        assert not turbo.is_cached(speed.turbo_cache_key(model, model.base))
        plan = speed.plan_speed("exact", engine.device, torch.float32)
        plan.apply(model.base, model, engine.device)
        assert plan.backend == "torch" and not plan._swapped
    finally:
        loras.clear()
    plan = speed.plan_speed("exact", engine.device, torch.float32)
    plan.apply(model.base, model, engine.device)
    try:
        assert plan.backend == "openvino f32" and type(model.base.unet).__name__ == "TurboUNet"
    finally:
        plan.restore()
    assert type(model.base.unet).__name__ == "UNet2DConditionModel"
