"""Speed modes on tiny random pipelines: exact keeps plain diffusers' pixels, fast really runs the U-Net in bf16 and
stays close, turbo's call site (a stand-in studio.engine.turbo) reports its preparation, cancels, swaps back and
falls back with one line; the GPU's fp16 path runs on the CPU."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest
import torch

from studio.core import GenerateRequest, RequestError
from studio.core.metadata import parameters_for, request_fields
from studio.engine import speed
from studio.engine.engine import Engine
from studio.engine.steps import Cancelled

SIZE = 32
BF16 = pytest.mark.skipif(not speed.native_bf16(), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=model, steps=4, seed=1234, width=SIZE, height=SIZE, cfg=5.0,
                sampler="Euler")  # fmt: skip
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def exact_image(engine, tiny_model):
    return engine.generate(req(tiny_model)).images[0]


def test_exact_equals_plain_diffusers_and_the_cpu_unet_stays_contiguous(engine, tiny_model, exact_image):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = pipe(prompt="a red circle", num_inference_steps=4, guidance_scale=5.0, width=SIZE, height=SIZE,
                  generator=torch.Generator("cpu").manual_seed(1234), output_type="np").images[0]  # fmt: skip
    theirs = (theirs * 255).round().astype(np.uint8)
    assert np.abs(exact_image.astype(int) - theirs.astype(int)).max() <= 1
    unet = engine.load(tiny_model).base.unet
    # channels_last measured 0.95-1.01x for fp32 on a quiet CPU: exact keeps plain diffusers' own layout there
    assert unet.conv_in.weight.is_contiguous() and not unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert engine.load(tiny_model).base.vae.decoder.conv_in.weight.is_contiguous()  # the VAE stays contiguous


@BF16
def test_fast_runs_the_unet_in_bf16_close_to_exact(engine, tiny_model, exact_image):
    unet = engine.load(tiny_model).base.unet
    r = engine.generate(req(tiny_model, speed="fast"))
    assert r.request.speed == "fast" and r.extra_params["Speed"] == "fast" and r.notice == ""
    assert 35 <= psnr(r.images[0], exact_image) < float("inf")  # close, and really another arithmetic
    assert engine.load(tiny_model).base.unet is unet and unet.conv_in.weight.dtype == torch.float32  # swapped back
    half = speed.half_copy(unet, torch.bfloat16, "")  # kept: the copy the run used, made once
    assert half is not unet and half.conv_in.weight.dtype == torch.bfloat16
    assert half.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[torch.dtype] = []
    hook = half.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        again = engine.generate(req(tiny_model, speed="fast"))
    finally:
        hook.remove()
    assert seen == [torch.bfloat16] * 4  # the U-Net ran in bf16 at every step
    assert np.array_equal(again.images[0], r.images[0])
    text = parameters_for(r.request, 1234, "tiny", "", "1", r.extra_params)
    assert "Speed: fast, Version: 1" in text and request_fields(text)["speed"] == "fast"


def test_fast_without_native_bf16_runs_exact_and_says_why(engine, tiny_model, exact_image, monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda: False)
    r = engine.generate(req(tiny_model, speed="fast"))
    assert r.notice == "This CPU has no native bf16: fast runs as exact"
    assert r.request.speed == "exact" and r.extra_params["Speed"] == "exact"
    assert np.array_equal(r.images[0], exact_image)


def test_an_unknown_speed_is_one_line():
    with pytest.raises(RequestError, match="Unknown speed mode 'warp'; use exact, fast, turbo"):
        GenerateRequest(speed="warp").validate()  # type: ignore[arg-type]


# -- turbo's call site ---------------------------------------------------------------------------------------------


class _Unavailable(Exception):
    pass


class _CountingUNet(torch.nn.Module):
    """A stand-in for the OpenVINO U-Net: the torch one, counted (what turbo_unet returns is a drop-in)."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet
        self.calls = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture
def fake_turbo(monkeypatch):
    """studio.engine.turbo replaced by a module whose turbo_unet reports progress, honours cancel and records."""
    mod = types.ModuleType("studio.engine.turbo")
    state: dict = {"calls": [], "fail": None, "hold": None}

    def turbo_unet(unet, *, cache_key, precision, on_progress=None, cancel=None):
        state["calls"].append((cache_key, precision))
        if state["fail"]:
            raise _Unavailable(state["fail"])
        for f in (0.0, 0.4, 0.4, 1.0):
            if on_progress is not None:
                on_progress(f, "Converting the U-Net")
            if state["hold"] is not None and f == 0.4:
                state["hold"].wait(10)
            if cancel is not None and cancel.is_set():
                raise Cancelled
        state["unet"] = _CountingUNet(unet)
        return state["unet"]

    mod.TurboUnavailable = _Unavailable  # type: ignore[attr-defined]
    mod.turbo_unet = turbo_unet  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "studio.engine.turbo", mod)
    return state


def test_turbo_prepares_with_progress_runs_the_converted_unet_and_swaps_back(engine, tiny_model, fake_turbo,
                                                                             exact_image):  # fmt: skip
    seen = []
    r = engine.generate(req(tiny_model, speed="turbo"), on_step=seen.append)
    phases = [s.label() for s in seen if s.step == 0]
    assert phases == [f"Preparing turbo for {engine.load(tiny_model).name}: {p}%" for p in (0, 40, 100)]
    assert [s.step for s in seen if s.step] == [1, 2, 3, 4]
    assert fake_turbo["unet"].calls == 4  # one call a step (CFG is one batch of 2): the converted U-Net ran them all
    key, precision = fake_turbo["calls"][0]
    assert precision == ("bf16" if speed.native_bf16() else "f32") and key.endswith("|")  # no LoRA, any precision
    assert r.request.speed == "turbo" and r.extra_params["Speed"] == "turbo" and r.notice == ""
    assert engine.load(tiny_model).base.unet is fake_turbo["unet"].inner  # the torch U-Net is back
    assert psnr(r.images[0], exact_image) >= 35


def test_turbo_unavailable_falls_back_with_one_line(engine, tiny_model, fake_turbo):
    fake_turbo["fail"] = "OpenVINO failed to convert the U-Net: boom"
    r = engine.generate(req(tiny_model, speed="turbo"))
    mode = "fast" if speed.native_bf16() else "exact"
    assert r.notice == f"Turbo is unavailable: OpenVINO failed to convert the U-Net: boom; this run used {mode} mode"
    assert r.request.speed == mode and r.extra_params["Speed"] == mode and len(r.images) == 1


def test_turbo_without_the_package_falls_back(engine, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "studio.engine.turbo", None)  # import raises ImportError
    r = engine.generate(req(tiny_model, speed="turbo"))
    assert r.notice.startswith("Turbo is unavailable: OpenVINO support is not installed")
    assert r.extra_params["Speed"] in ("fast", "exact") and len(r.images) == 1


def test_cancel_while_turbo_prepares_cancels_the_run(engine, tiny_model, fake_turbo):
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info)
        if "40%" in info.stage:
            cancel.set()

    r = engine.generate(req(tiny_model, speed="turbo"), on_step=on_step, cancel=cancel)
    assert r.cancelled and not r.images and r.steps_done == 0
    assert not [s for s in seen if s.step]  # no step ran
    assert type(engine.load(tiny_model).base.unet).__name__ == "UNet2DConditionModel"


def test_the_turbo_cache_key_follows_the_loras(engine, tiny_model, tmp_path):
    from studio.engine import addons

    model = engine.load(tiny_model)
    plain = speed.turbo_cache_key(model, model.base)
    lora = tmp_path / "style.safetensors"
    _tiny_lora(model.base.unet, lora)
    loras = addons.lora_set(model.base)
    try:
        loras.apply([(lora, 0.8)])
        a = speed.turbo_cache_key(model, model.base)
        loras.apply([(lora, 0.5)])
        b = speed.turbo_cache_key(model, model.base)
    finally:
        loras.clear()
    assert plain.endswith("|") and len({plain, a, b}) == 3 and "@0.8" in a
    assert speed.turbo_cache_key(model, model.base) == plain  # LoRAs off: the plain model's entry again


def _tiny_lora(unet, path) -> None:
    """A kohya-style LoRA on the self-attention queries of the tiny U-Net, strong enough to change the image."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, lin in unet.named_modules():
        name = name.removesuffix(".base_layer")  # a U-Net that had a LoRA: peft wraps the Linear
        if isinstance(lin, torch.nn.Linear) and name.endswith("attn1.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, lin.in_features, generator=g)
            tensors[f"{key}.lora_up.weight"] = torch.randn(lin.out_features, 4, generator=g)
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))


# -- the GPU's path, and torch.compile -------------------------------------------------------------------------------


def test_the_gpu_fp16_path_runs_on_the_cpu(tiny_model, exact_image):
    """CUDA's code path (fp16 weights, channels_last U-Net, fast = the fp16 it already is) on the CPU in fp16."""
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 1, 1, dtype=torch.float16))
    except RuntimeError as e:
        pytest.skip(f"this torch has no fp16 convolution on the CPU: {e}")
    e = Engine(device="cpu")
    e.dtype = torch.float16  # what pick_device gives CUDA and MPS
    for mode in ("exact", "fast"):
        r = e.generate(req(tiny_model, speed=mode))
        unet = e.load(tiny_model).base.unet
        assert unet.dtype == torch.float16 and unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert r.request.speed == mode and r.notice == ""
        assert psnr(r.images[0], exact_image) >= 30  # fp16 weights, near the fp32 image


def test_torch_compile_is_for_cuda_only(monkeypatch):
    monkeypatch.setenv("STUDIO_COMPILE", "1")
    assert speed.compile_setting("cuda") == (True, "")
    compile_it, line = speed.compile_setting("cpu")
    assert not compile_it and line.startswith("STUDIO_COMPILE is for CUDA GPUs: on cpu it stays off")
    assert Engine(device="cpu").notice == line
    monkeypatch.delenv("STUDIO_COMPILE")
    assert speed.compile_setting("cuda") == (False, "") and Engine(device="cpu").notice == ""


def test_default_speed_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(speed, "native_bf16", lambda: True)
    assert speed.default_speed(torch.device("cpu")) == "fast"
    monkeypatch.setattr(speed, "native_bf16", lambda: False)
    assert speed.default_speed(torch.device("cpu")) == "exact"
    assert speed.default_speed(torch.device("cuda")) == "exact"  # fp16 already: fast is the same arithmetic


# -- the CLI ----------------------------------------------------------------------------------------------------------


def test_cli_speed_is_written_and_a_fallback_is_said(capsys, tiny_model, tmp_path, monkeypatch):
    from pathlib import Path

    from studio.cli import main
    from studio.core.metadata import read_parameters

    monkeypatch.setattr(speed, "native_bf16", lambda: False)
    code = main(["generate", "--model", tiny_model, "--prompt", "x", "--steps", "2", "--width", "32", "--height", "32",
                 "--seed", "3", "--speed", "fast", "--out", str(tmp_path), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "studio: This CPU has no native bf16: fast runs as exact" in err.splitlines()
    assert "Speed: exact" in read_parameters(Path(out.splitlines()[0]))


def test_cli_refuses_an_unknown_speed_with_one_line(capsys):
    from studio.cli import main

    with pytest.raises(SystemExit) as done:
        main(["generate", "--prompt", "x", "--speed", "warp"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'warp'" in err and "Traceback" not in err


@BF16
def test_fast_with_a_lora_copies_the_lora_too(engine, tiny_model, tmp_path):
    lora = tmp_path / "style.safetensors"
    _tiny_lora(engine.load(tiny_model).base.unet, lora)
    exact = engine.generate(req(tiny_model, loras=((str(lora), 1.0),))).images[0]
    fast = engine.generate(req(tiny_model, loras=((str(lora), 1.0),), speed="fast")).images[0]
    plain = engine.generate(req(tiny_model)).images[0]
    assert psnr(fast, exact) >= 35 and psnr(plain, exact) < psnr(fast, exact) - 3  # the bf16 copy has the LoRA
