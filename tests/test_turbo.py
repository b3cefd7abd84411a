"""Turbo (studio.engine.turbo): the OpenVINO U-Net equals the torch one, inside the pipelines with every sampler
tested; the converted-model cache (a hit converts nothing, a new key converts again, usage and clear); failures as
one line; cancel during preparation."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from studio.engine import turbo  # noqa: E402
from studio.engine.steps import Cancelled  # noqa: E402
from studio.engine.turbo import TurboUnavailable, cache, convert, runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    # One cache for the module (conversions are the slow part), never the user's.
    root = tmp_path_factory.getbasetemp() / "turbo-cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    return root / "turbo"


def _load(path, kind: str = "txt2img", family: str = "sd1"):
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    cls = {("sd1", "txt2img"): StableDiffusionPipeline, ("sd1", "inpaint"): StableDiffusionInpaintPipeline,
           ("sdxl", "txt2img"): StableDiffusionXLPipeline, ("sdxl", "inpaint"): StableDiffusionXLInpaintPipeline}
    pipe = cls[(family, kind)].from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from studio.testing.tiny import build_tiny_pipeline

    path = build_tiny_pipeline(tmp_path_factory.mktemp("turbo") / "sd1")
    p = _load(path)
    p.test_folder = path
    return p


@pytest.fixture(scope="module")
def f32(pipe, tmp_path_factory):
    import os

    os.environ[cache.CACHE_ENV] = str(tmp_path_factory.getbasetemp() / "turbo-cache")
    return turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|f32", precision="f32")


def _inputs(unet, batch: int = 2, side: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, side, side, generator=g)
    e = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    kw = {}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    return x, e, kw


@torch.no_grad()
def test_turbo_unet_output_equals_the_torch_unet_f32(pipe, f32):
    x, e, kw = _inputs(pipe.unet)
    for t in (torch.tensor(999), 501.5, torch.tensor([10.0, 10.0])):
        want = pipe.unet(x, t, e, **kw).sample
        got = f32(x, t, e, **kw).sample
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    # return_dict=False: a tuple, as the pipelines ask for
    assert torch.allclose(f32(x, 5, e, return_dict=False)[0], pipe.unet(x, 5, e).sample, atol=1e-4)
    assert f32.dtype == torch.float32 and f32.device.type == "cpu" and f32.config is pipe.unet.config
    assert list(f32.parameters()) == []  # the torch U-Net's weights are not counted twice (pipe.to(...))
    assert f32.fallbacks == 0


@torch.no_grad()
def test_turbo_unet_bf16_is_close(pipe):
    bf16 = turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|bf16", precision="bf16")
    x, e, kw = _inputs(pipe.unet)
    want = pipe.unet(x, 700, e).sample
    got = bf16(x, 700, e).sample
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.05, err  # bf16 keeps 8 bits of mantissa
    assert not torch.equal(got, want)


@torch.no_grad()
@pytest.mark.parametrize("family,kind", [("sdxl", "txt2img"), ("sd1", "inpaint"), ("sdxl", "inpaint")])
def test_sdxl_and_inpainting_unets(tmp_path, family, kind):
    from studio.testing.tiny import build_tiny_pipeline

    unet = _load(build_tiny_pipeline(tmp_path / "m", kind=kind, family=family), kind, family).unet
    fast = turbo.turbo_unet(unet, cache_key=f"tiny-{family}-{kind}|f32", precision="f32")
    x, e, kw = _inputs(unet, seed=3)
    assert x.shape[1] == (9 if kind == "inpaint" else 4)
    want = unet(x, 321, e, **kw).sample
    assert torch.allclose(fast(x, 321, e, **kw).sample, want, atol=1e-4)


def _run(pipe, sampler: str, steps: int = 6, on_step=None):
    from studio.engine.schedulers import build_scheduler

    name, schedule = (sampler[:-7], "Karras") if sampler.endswith(" Karras") else (sampler, "Normal")
    pipe.scheduler = build_scheduler(pipe.scheduler.config, name, schedule, 1)

    def cb(p, i, t, kw):
        if on_step is not None:
            on_step(p, i)
        return kw

    with torch.inference_mode():
        return pipe("a red circle", num_inference_steps=steps, guidance_scale=7.0, width=64, height=64,
                    generator=torch.Generator().manual_seed(1), output_type="np", callback_on_step_end=cb).images[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "DDIM"])
def test_whole_pipeline_with_turbo_equals_torch(pipe, f32, sampler):
    torch_unet = pipe.unet
    want = _run(pipe, sampler)
    steps = []
    pipe.unet = f32
    try:
        got = _run(pipe, sampler, on_step=lambda p, i: steps.append(i))
    finally:
        pipe.unet = torch_unet
    assert steps == list(range(6))  # the step callbacks arrive every step
    assert np.abs(got - want).max() < 1e-3  # under a quarter of 1/255
    assert got.std() > 0.01  # a picture, not a constant


def test_cancel_inside_a_turbo_run(pipe, f32):
    torch_unet = pipe.unet
    pipe.unet = f32
    seen = []

    def stop(p, i):
        seen.append(i)
        if i == 1:
            p._interrupt = True  # as the engine's step callback does on cancel

    try:
        _run(pipe, "Euler a", steps=8, on_step=stop)
    finally:
        pipe.unet = torch_unet
    assert seen == [0, 1]


@torch.no_grad()
def test_a_latent_size_the_graph_cannot_take_runs_on_torch(pipe, f32):
    x, e, _ = _inputs(pipe.unet, side=15)  # not divisible by the U-Net's upsampling
    before = f32.fallbacks
    assert torch.equal(f32(x, 10, e).sample, pipe.unet(x, 10, e).sample)
    assert f32.fallbacks == before + 1


@torch.no_grad()
def test_a_new_shape_compiles_once_and_says_so(pipe, f32):
    said = []
    fast = turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|f32", precision="f32",
                            on_progress=lambda f, m: said.append(m))
    before = runtime.compiles
    x, e, _ = _inputs(pipe.unet, batch=1, side=24)
    fast(x, 10, e)
    fast(x, 20, e)
    assert runtime.compiles == before + 1
    assert said == ["Compiling for 192x192", "Compiled for 192x192"]


def test_a_cache_hit_converts_nothing_and_a_lora_change_converts_again(pipe, f32, cache_dir):
    before = turbo.conversions
    turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|f32", precision="f32")
    assert turbo.conversions == before
    # A LoRA change is a new key (the caller puts the LoRA set in it): a new entry beside the old one.
    said: list[tuple[float, str]] = []
    turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|style.safetensors:0.8|f32", precision="f32",
                     on_progress=lambda f, m: said.append((f, m)))
    assert turbo.conversions == before + 1
    fractions = [f for f, _ in said]
    assert fractions == sorted(fractions) and said[-1] == (1.0, "Converting the U-Net: done")
    assert any("tracing" in m for _, m in said) and any("saving" in m for _, m in said)
    assert turbo.entry_folder("tiny-sd1|style.safetensors:0.8|f32") != turbo.entry_folder("tiny-sd1|none|f32")
    assert cache.is_complete(turbo.entry_folder("tiny-sd1|none|f32"))


def test_a_converted_model_is_reused_by_the_next_process(pipe, f32, cache_dir):
    # The next process finds the entry on disk: it converts nothing (its counter stays 0).
    code = ("import sys, torch; from studio.engine import turbo; from diffusers import UNet2DConditionModel;"
            "u = UNet2DConditionModel.from_pretrained(sys.argv[1]);"
            "turbo.turbo_unet(u, cache_key='tiny-sd1|none|f32', precision='f32'); print(turbo.conversions)")
    unet_dir = pipe.test_folder / "unet"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(unet_dir)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"


def test_cache_usage_and_clear(pipe, f32, cache_dir):
    used = turbo.turbo_cache_usage()
    on_disk = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    assert used == on_disk > 0
    assert turbo.turbo_cache_dir() == cache_dir
    assert turbo.clear_turbo_cache() == used
    assert turbo.turbo_cache_usage() == 0 and not cache_dir.exists()
    before = turbo.conversions
    turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|f32", precision="f32")  # converts again after a clear
    assert turbo.conversions == before + 1


def test_missing_openvino_is_one_line(pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(TurboUnavailable) as e:
        turbo.turbo_unet(pipe.unet, cache_key="x|f32", precision="f32")
    assert str(e.value) == "OpenVINO is not installed"


def test_broken_openvino_is_one_line(pipe, monkeypatch):
    import builtins

    real = builtins.__import__

    def broken(name, *a, **k):
        if name == "openvino":
            raise OSError("libopenvino.so.2026: cannot open shared object file\nmore detail")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(TurboUnavailable) as e:
        turbo.turbo_unet(pipe.unet, cache_key="x|f32", precision="f32")
    assert str(e.value) == "OpenVINO cannot be loaded: libopenvino.so.2026: cannot open shared object file"


def test_a_failed_conversion_is_one_line_and_leaves_no_entry(pipe, monkeypatch, cache_dir):
    import openvino

    def boom(*a, **k):
        raise RuntimeError("Check 'rank' failed at frontend\nstack trace...")

    monkeypatch.setattr(openvino, "convert_model", boom)
    with pytest.raises(TurboUnavailable) as e:
        turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|broken|f32", precision="f32")
    assert str(e.value) == "OpenVINO failed to convert the U-Net: Check 'rank' failed at frontend"
    assert not turbo.entry_folder("tiny-sd1|broken|f32").exists()
    assert not [p for p in (cache_dir / "models").glob(".tmp-*")]


def test_an_unsupported_unet_is_refused_in_one_line(tmp_path):
    from diffusers import UNet2DConditionModel

    from studio.testing.tiny import build_tiny_upscaler

    unet = UNet2DConditionModel.from_pretrained(build_tiny_upscaler(tmp_path / "x4") / "unet")
    with pytest.raises(TurboUnavailable, match="class labels"):
        turbo.turbo_unet(unet, cache_key="x4|f32", precision="f32")


def _wait_jobs():
    for job in list(convert._jobs.values()):
        job.done.wait(600)


def test_cancel_while_tracing_raises_cancelled_and_leaves_no_entry(pipe, cache_dir):
    cancel = threading.Event()
    said = []

    def progress(f, msg):
        said.append(msg)
        if "tracing" in msg:
            cancel.set()

    key = "tiny-sd1|cancel-trace|f32"
    with pytest.raises(Cancelled):
        turbo.turbo_unet(pipe.unet, cache_key=key, precision="f32", on_progress=progress, cancel=cancel)
    _wait_jobs()
    assert not turbo.entry_folder(key).exists()
    assert not [p for p in (cache_dir / "models").glob(".tmp-*")]
    assert not any(m._forward_pre_hooks for m in pipe.unet.modules())  # the hooks are gone from the live U-Net
    x, e, _ = _inputs(pipe.unet)
    with torch.no_grad():
        pipe.unet(x, 1, e)  # and it still runs


def test_cancel_during_openvinos_native_conversion_returns_without_waiting(pipe, monkeypatch, cache_dir):
    # OpenVINO's conversion cannot be interrupted: the caller stops waiting, the worker discards its result.
    import openvino

    real = openvino.convert_model
    entered, release = threading.Event(), threading.Event()

    def slow(*a, **k):
        model = real(*a, **k)
        entered.set()
        release.wait(60)  # stands for the minutes of a full U-Net's native conversion
        return model

    monkeypatch.setattr(openvino, "convert_model", slow)
    cancel = threading.Event()
    threading.Thread(target=lambda: (entered.wait(120), cancel.set()), daemon=True).start()
    key = "tiny-sd1|cancel-native|f32"
    with pytest.raises(Cancelled):
        turbo.turbo_unet(pipe.unet, cache_key=key, precision="f32", cancel=cancel)
    assert not release.is_set()  # returned while the native call was still running
    release.set()
    _wait_jobs()
    assert not turbo.entry_folder(key).exists()
    assert not [p for p in (cache_dir / "models").glob(".tmp-*")]


def test_cancel_while_compiling_a_shape(pipe, f32, monkeypatch):
    block = threading.Event()
    real = runtime.Store._compile

    def slow(self, shapes):
        block.wait(60)
        real(self, shapes)

    monkeypatch.setattr(runtime.Store, "_compile", slow)
    cancel = threading.Event()
    fast = turbo.turbo_unet(pipe.unet, cache_key="tiny-sd1|none|f32", precision="f32",
                            on_progress=lambda f, m: cancel.set(), cancel=cancel)
    x, e, _ = _inputs(pipe.unet, batch=3, side=8)
    with pytest.raises(Cancelled):
        fast(x, 1, e)
    block.set()


def test_importing_turbo_does_not_import_openvino():
    code = "import sys; import studio.engine.turbo; print('openvino' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
