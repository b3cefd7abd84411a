"""DeepCache (reuse of the U-Net's deep features every N steps) on a tiny model: off equals the plain run
exactly, on runs the deep blocks on fewer steps and stays close, it is off below 15 steps and says so, it skips a
U-Net that is not a torch one, and the shared U-Net is as it was after every run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core.errors import RequestError
from studio.core.metadata import parameters_for, request_fields
from studio.core.requests import GenerateRequest
from studio.engine.deepcache import DeepCache, counting_calls, deep_cache_plan


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def runs(engine, tiny_model):
    """A plain 20-step run, a cached one (interval 3) with its block call counts, then a plain one again."""
    base = GenerateRequest(prompt="a cat", model=tiny_model, steps=20, seed=3, width=64, height=64)
    first = engine.generate(base)
    unet = engine.load(tiny_model).base.unet
    with counting_calls(unet.mid_block.resnets[0]) as deep, counting_calls(unet.up_blocks[-1].resnets[-1]) as shallow:
        cached = engine.generate(base.replace(deep_cache=3))
    again = engine.generate(base)
    return base, first, cached, again, deep[0], shallow[0], unet


def _untouched(unet: torch.nn.Module) -> bool:
    """No instance `forward` left on any module and no hook of ours on the U-Net."""
    return not any("forward" in m.__dict__ for m in unet.modules()) and not unet._forward_pre_hooks


def test_the_deep_blocks_run_on_fewer_steps_and_the_image_stays_close(runs):
    _base, first, cached, _again, deep, shallow, _unet = runs
    assert shallow == 20  # the shallow branch runs on every step
    assert deep == 7  # the full U-Net on steps 0, 3, 6, ..., 18 only
    assert cached.notes == []
    a, b = first.images[0], cached.images[0]
    assert not np.array_equal(a, b)  # approximate: the reused features change the picture
    assert psnr(a, b) > 30.0  # measured 38.7 dB on this tiny random model


def test_the_shared_unet_is_restored_after_the_run(runs):
    _base, first, _cached, again, _deep, _shallow, unet = runs
    assert _untouched(unet)
    assert np.array_equal(first.images[0], again.images[0])
    assert np.array_equal(first.latents, again.latents)


def test_metadata_says_deep_cache_and_reads_it_back(runs):
    _base, first, cached, _again, *_ = runs
    assert cached.request.deep_cache == 3
    text = parameters_for(cached.request, cached.seeds[0], cached.model_name, cached.model_hash, "t")
    assert "Deep cache: 3" in text
    assert request_fields(text)["deep_cache"] == 3
    plain = parameters_for(first.request, first.seeds[0], first.model_name, first.model_hash, "t")
    assert "Deep cache" not in plain and request_fields(plain)["deep_cache"] == 0


def test_interval_one_equals_the_plain_run_exactly(engine, tiny_model, runs):
    base, first, *_ = runs
    one = engine.generate(base.replace(deep_cache=1))
    assert np.array_equal(one.images[0], first.images[0]) and np.array_equal(one.latents, first.latents)
    assert one.notes == [] and "Deep cache" not in parameters_for(one.request, 3, "m", "h", "t")


def test_below_fifteen_steps_it_is_off_and_says_so(engine, tiny_model):
    base = GenerateRequest(prompt="a cat", model=tiny_model, steps=10, seed=5, width=64, height=64)
    plain = engine.generate(base)
    unet = engine.load(tiny_model).base.unet
    with counting_calls(unet.mid_block.resnets[0]) as deep:
        asked = engine.generate(base.replace(deep_cache=3))
    assert deep[0] == 10
    assert np.array_equal(asked.images[0], plain.images[0])
    assert len(asked.notes) == 1 and asked.notes[0].startswith("Deep cache off: 10 steps is below 15")
    assert asked.request.deep_cache == 0  # the metadata says what ran
    # img2img counts the steps that run: 30 steps at strength 0.4 run 12
    img = np.full((64, 64, 3), 128, np.uint8)
    i2i = engine.generate(base.replace(mode="img2img", init_image=img, strength=0.4, steps=30, deep_cache=2))
    assert i2i.notes and "12 steps" in i2i.notes[0]


class NotAUNet(torch.nn.Module):
    """A stand-in for a swapped-in U-Net (an OpenVINO-backed module): calls through, but is no UNet2DConditionModel."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config, self.dtype, self.device = inner.config, inner.dtype, inner.device

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_a_swapped_in_unet_is_skipped_with_a_note(engine, tiny_model, runs):
    base, first, *_ = runs
    pipe = engine.load(tiny_model).pipe("txt2img")
    real = pipe.unet
    pipe.unet = NotAUNet(real)
    try:
        res = engine.generate(base.replace(deep_cache=3))
    finally:
        pipe.unet = real
    assert res.notes == ["Deep cache skipped: the U-Net is a NotAUNet, not a PyTorch UNet2DConditionModel"]
    assert np.array_equal(res.images[0], first.images[0]) and res.request.deep_cache == 0
    assert _untouched(real)


def test_a_cancelled_or_failed_run_restores_the_unet(engine, tiny_model):
    unet = engine.load(tiny_model).base.unet
    cache, note = deep_cache_plan(unet, 2, 20)
    assert isinstance(cache, DeepCache) and note == ""
    with pytest.raises(RuntimeError), cache:
        assert not _untouched(unet)
        raise RuntimeError("a step failed")
    assert _untouched(unet)


@pytest.mark.parametrize("bad", [-1, 6, 100])
def test_an_interval_out_of_range_is_refused_with_one_line(bad):
    with pytest.raises(RequestError, match=r"^Deep cache must be an interval of 2 to 5 steps \(0 = off\), got"):
        GenerateRequest(deep_cache=bad).validate()
    for ok in (0, 1, 2, 5):
        GenerateRequest(deep_cache=ok).validate()
