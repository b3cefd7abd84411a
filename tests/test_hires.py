"""Hires fix (A1111's two-pass text to image): the engine's run against hand-built references, the request's
checks, the metadata both ways, the CLI flags."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from studio.core.errors import RequestError
from studio.core.metadata import parameters_for, request_fields
from studio.core.requests import GenerateRequest

SIZE = 48  # px, first pass


def hreq(model, **kw) -> GenerateRequest:
    fields = dict(prompt="a red lighthouse", negative_prompt="blurry", model=model, sampler="Euler a", steps=3,
                  cfg=6.0, seed=11, width=SIZE, height=SIZE, preview="x0", hires_fix=True, hires_scale=2.0,
                  hires_upscaler="Latent", hires_steps=2, hires_strength=0.6)  # fmt: skip
    fields.update(kw)
    return GenerateRequest.from_fields(**fields)


def reference(engine, r: GenerateRequest, upscale) -> list[np.ndarray]:
    """Hand-built: the first pass's pipeline call, `upscale`, the img2img pipeline call with the same seeds."""
    from studio.core.requests import hires_schedule_steps as schedule_steps
    from studio.engine.schedulers import build_scheduler

    model = engine.load(r.model)
    seeds = [r.seed + i for i in range(r.batch)]
    first = r.replace(hires=r.hires.replace(enabled=False))
    pipe, kwargs = engine.pipeline_call(model, first, seeds)
    pipe.scheduler = build_scheduler(model.scheduler_config, r.sampler, r.schedule, r.seed)
    with torch.inference_mode():
        latents = pipe(**kwargs).images
    w2, h2 = int(r.width * r.hires.scale) // 8 * 8, int(r.height * r.hires.scale) // 8 * 8
    start = upscale(model, latents, (w2, h2))
    steps = r.hires.steps or r.steps
    second = r.replace(mode="img2img", width=w2, height=h2, steps=schedule_steps(steps, r.hires.strength),
                       strength=r.hires.strength, init_image=np.zeros((8, 8, 3), np.uint8))  # fmt: skip
    pipe, kwargs = engine.pipeline_call(model, second, seeds)
    kwargs["image"] = start
    pipe.scheduler = build_scheduler(model.scheduler_config, r.sampler, r.schedule, r.seed)
    with torch.inference_mode():
        out = pipe(**kwargs).images
    return engine.decode(model, out)


def test_schedule_steps_run_exactly_the_hires_steps():
    from studio.core.requests import hires_schedule_steps as schedule_steps

    for steps in (1, 2, 7, 10, 20, 33):
        for strength in (0.05, 0.3, 0.5, 0.7, 0.75, 0.999, 1.0):
            n = schedule_steps(steps, strength)
            assert int(n * strength) == steps and (n == steps or int((n - 1) * strength) < steps)
    assert schedule_steps(20, 0.7) == 29 and schedule_steps(10, 1.0) == 10


@pytest.mark.parametrize("upscaler, mode", [("Latent", "bilinear"), ("Latent (bicubic)", "bicubic"),
                                            ("Latent (nearest-exact)", "nearest-exact")])  # fmt: skip
def test_latent_hires_equals_the_hand_built_two_passes(engine, tiny_model, upscaler, mode):
    r = hreq(tiny_model, hires_upscaler=upscaler, batch=2)
    seen = []
    res = engine.generate(r, seen.append)

    def interpolate(model, latents, size):
        f = model.vae_scale_factor
        return torch.nn.functional.interpolate(latents, size=(size[1] // f, size[0] // f), mode=mode)

    ref = reference(engine, r, interpolate)
    assert [im.shape for im in res.images] == [(96, 96, 3)] * 2
    for a, b in zip(res.images, ref, strict=True):
        assert np.array_equal(a, b)
    # one count over both passes: 3 first-pass steps, then the 2 hires steps (stretched schedule, 2 run)
    assert [(s.stage, s.step, s.total) for s in seen] == [("first pass", 1, 5), ("first pass", 2, 5),
                                                          ("first pass", 3, 5), ("hires", 4, 5), ("hires", 5, 5)]
    assert seen[-1].label() == "hires, step 5/5"
    assert res.steps_done == 5 and res.seeds == [11, 12]
    # the timeline: every step's preview, the second pass's larger; no latents of two sizes to decode
    shapes = [p.shape[:2] for p in res.step_previews["x0"]]
    assert len(shapes) == 5 and shapes[0] != shapes[-1] and res.latents is None
    # the result says what ran: the first pass's size (A1111's Size), the hires options
    assert (res.request.width, res.request.height, res.request.hires.scale) == (SIZE, SIZE, 2.0)


def test_lanczos_hires_equals_txt2img_then_resize_then_img2img(engine, tiny_model):
    """The pixel path through the engine's public modes: text to image, Lanczos, image to image, same seed."""
    from studio.core.requests import hires_schedule_steps as schedule_steps
    from studio.engine.upscale import lanczos

    r = hreq(tiny_model, hires_upscaler="Lanczos", hires_steps=0, hires_strength=0.5, hires_scale=1.5)
    res = engine.generate(r)
    first = engine.generate(r.with_fields(hires_fix=False)).images[0]
    big = lanczos(first, (72, 72))
    second = engine.generate(r.replace(mode="img2img", init_image=big, width=72, height=72, strength=0.5,
                                       steps=schedule_steps(3, 0.5)))  # fmt: skip
    assert res.images[0].shape == (72, 72, 3)
    assert np.array_equal(res.images[0], second.images[0])
    assert second.steps_done == 3  # hires steps 0: the first pass's 3


def test_model_hires_runs_the_upscaler_model_first(engine, tiny_model, tiny_sr_file):
    from studio.engine.upscale import lanczos
    from studio.engine.upscalers import load_upscaler

    r = hreq(tiny_model, hires_upscaler=tiny_sr_file, hires_scale=2.0)
    seen = []
    res = engine.generate(r, seen.append)
    up = load_upscaler(tiny_sr_file)

    def by_model(model, latents, size):
        from PIL import Image

        return [Image.fromarray(lanczos(up.upscale(img), size)) for img in engine.decode(model, latents)]

    assert np.array_equal(res.images[0], reference(engine, r, by_model)[0])
    assert "upscaler" in {s.stage for s in seen}


def test_hires_cancel_in_the_second_pass_returns_nothing(engine, tiny_model):
    cancel = threading.Event()

    def on_step(info):
        if info.stage == "hires":
            cancel.set()

    res = engine.generate(hreq(tiny_model), on_step, cancel)
    assert res.cancelled and res.images == [] and res.steps_done == 4


def test_hires_checks_give_one_line(engine, tiny_model):
    with pytest.raises(RequestError, match="between 1 and 4, got 10"):
        hreq(tiny_model, hires_scale=10).validate()
    with pytest.raises(RequestError, match=r"2048x2048 x4 = 8192x8192 is too large: at most 4096"):
        hreq(tiny_model, width=2048, height=2048, hires_scale=4).validate()
    with pytest.raises(RequestError, match="strength must be in"):
        hreq(tiny_model, hires_strength=0).validate()
    with pytest.raises(RequestError, match="Hires steps"):
        hreq(tiny_model, hires_steps=-1).validate()
    hreq(tiny_model, mode="img2img", hires_scale=10, init_image=np.zeros((8, 8, 3), np.uint8)).validate()  # ignored
    with pytest.raises(Exception, match="Hires upscaler not found: nowhere.pth"):
        engine.generate(hreq(tiny_model, hires_upscaler="nowhere.pth"))


# -- metadata -------------------------------------------------------------------------------------------------


def test_hires_parameters_are_written_as_a1111_writes_them():
    r = GenerateRequest.from_fields(prompt="a cat", steps=20, width=512, height=512, hires_fix=True, hires_scale=2.0,
                                    hires_upscaler="Latent", hires_steps=10, hires_strength=0.7)  # fmt: skip
    text = parameters_for(r, 5, "m", "abcdef0123", "v1")
    assert text.splitlines()[-1] == ("Steps: 20, Sampler: Euler a, Schedule type: Normal, CFG scale: 7, Seed: 5, "
                                     "Size: 512x512, Model hash: abcdef0123, Model: m, Denoising strength: 0.7, "
                                     "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version: v1")
    # steps 0 (the same as the first pass) is left out, as A1111 does; a model file is written by its name
    r0 = r.with_fields(hires_steps=0, hires_upscaler="/models/4x-UltraSharp.pth", hires_scale=1.5)
    line = parameters_for(r0, 5, "m", "", "v1").splitlines()[-1]
    assert "Hires steps" not in line and "Hires upscale: 1.5, Hires upscaler: 4x-UltraSharp," in line
    assert "Hires" not in parameters_for(r.with_fields(hires_fix=False), 5, "m", "", "v1")


A1111_TEXT = """masterpiece, a castle on a hill
Negative prompt: lowres
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Hires upscale: 1.75, \
Hires steps: 12, Hires upscaler: Latent (bicubic antialiased), Version: v1.10.1"""


def test_an_a1111_hires_text_restores_the_hires_fix():
    f = request_fields(A1111_TEXT)
    assert (f["width"], f["height"], f["steps"]) == (512, 768, 25)
    assert {k: f[k] for k in f if k.startswith("hires")} == {
        "hires_fix": True, "hires_scale": 1.75, "hires_steps": 12, "hires_upscaler": "Latent (bicubic antialiased)",
        "hires_strength": 0.45}  # fmt: skip
    assert "mode" not in f and "strength" not in f  # the img2img strength is not the hires one
    r = GenerateRequest().with_fields(**f)
    assert r.hires.enabled and r.hires.size(512, 768) == (896, 1344)
    # and back: our text of it reads the same
    again = request_fields(parameters_for(r, 1234, "v1-5-pruned-emaonly", "6ce0161689", "x"))
    assert {k: again[k] for k in again if k.startswith("hires")} == {k: f[k] for k in f if k.startswith("hires")}


def test_hires_text_variants():
    base = "p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512"
    # a hires resize instead of a factor (A1111's "Hires resize: 1024x1024")
    f = request_fields(base + ", Denoising strength: 0.7, Hires resize: 1024x1024, Hires upscaler: Latent")
    assert f["hires_fix"] and f["hires_scale"] == 2.0 and f["hires_steps"] == 0
    # no Denoising strength: A1111 does not switch the hires fix on
    assert "hires_fix" not in request_fields(base + ", Hires upscale: 2, Hires upscaler: Latent")
    # a factor out of range is refused with a line, the rest restored
    refused: list = []
    f = request_fields(base + ", Denoising strength: 0.7, Hires upscale: 9, Hires upscaler: Latent", refused)
    assert f["hires_fix"] and "hires_scale" not in f and [r.key for r in refused] == ["Hires upscale"]
    # an upscale's text (Upscale mode) stays an upscale
    up = request_fields(base + ", Hires upscale: 2, Hires upscaler: Lanczos, Upscale mode: resize")
    assert up["mode"] == "upscale" and "hires_fix" not in up


# -- the ComfyUI graph ------------------------------------------------------------------------------------------


def comfy_info(upscalers=("4x-UltraSharp.pth",)):
    import copy
    import json
    from pathlib import Path

    from studio.backends.comfyui.graphs import ObjectInfo

    data = json.loads((Path(__file__).parent / "data" / "comfyui" / "object_info-0.27.json").read_text("utf-8"))
    data = copy.deepcopy(data)
    data["UpscaleModelLoader"]["input"]["required"]["model_name"][0] = list(upscalers)
    return ObjectInfo(data)


def graph_chain(g: dict) -> list[str]:
    return [n["class_type"] for n in g.values()]


def test_comfy_latent_hires_graph():
    from studio.backends.comfyui.graphs import build_graph, validate

    info = comfy_info()
    r = GenerateRequest.from_fields(prompt="a cat", seed=3, steps=20, width=512, height=384, hires_fix=True,
                                    hires_scale=1.5, hires_upscaler="Latent (bicubic)", hires_steps=10,
                                    hires_strength=0.7)  # fmt: skip
    g = build_graph(r, info, checkpoint="tiny-sd15.safetensors")
    validate(g, info)
    assert graph_chain(g)[3:] == ["EmptyLatentImage", "KSampler", "LatentUpscale", "KSamplerAdvanced", "VAEDecode",
                                  "SaveImageWebsocket"]  # fmt: skip
    up = next(n for n in g.values() if n["class_type"] == "LatentUpscale")["inputs"]
    assert (up["width"], up["height"], up["upscale_method"]) == (768, 576, "bicubic")
    adv = next(n for n in g.values() if n["class_type"] == "KSamplerAdvanced")["inputs"]
    # 10 hires steps run: the last 10 of a 15-step schedule (int(15 * 0.7) = 10)
    assert (adv["steps"], adv["start_at_step"], adv["noise_seed"]) == (15, 5, 3)


def test_comfy_model_hires_graph():
    from studio.backends.comfyui.graphs import build_graph, validate

    info = comfy_info()
    r = GenerateRequest.from_fields(prompt="a cat", seed=3, width=512, height=512, hires_fix=True,
                                    hires_upscaler="4x-UltraSharp", hires_strength=0.5)  # fmt: skip
    g = build_graph(r, info, checkpoint="tiny-sd15.safetensors")
    validate(g, info)
    assert graph_chain(g)[3:] == ["EmptyLatentImage", "KSampler", "VAEDecode", "UpscaleModelLoader",
                                  "ImageUpscaleWithModel", "ImageScale", "VAEEncode", "KSamplerAdvanced", "VAEDecode",
                                  "SaveImageWebsocket"]  # fmt: skip
    scale = next(n for n in g.values() if n["class_type"] == "ImageScale")["inputs"]
    assert (scale["width"], scale["height"]) == (1024, 1024)


# -- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_hires_flags_make_the_two_pass_image(capsys, tiny_model, tmp_path):
    from PIL import Image

    from studio.cli import main
    from studio.core.metadata import read_parameters

    code = main(["generate", "--model", tiny_model, "--prompt", "x", "--steps", "2", "--seed", "4", "--width", "32",
                 "--height", "40", "--hires-scale", "2", "--hires-upscaler", "Latent (nearest-exact)",
                 "--hires-steps", "1", "--hires-strength", "0.5", "--out", str(tmp_path), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    path = out.strip()
    assert Image.open(path).size == (64, 80)
    text = read_parameters(path)
    assert "Size: 32x40" in text and "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 1, " \
        "Hires upscaler: Latent (nearest-exact)," in text
    f = request_fields(text)
    assert (f["hires_fix"], f["hires_scale"], f["hires_steps"], f["hires_strength"]) == (True, 2.0, 1, 0.5)


@pytest.mark.parametrize("argv, line", [
    (["--hires-scale", "10"], "The hires upscale factor must be between 1 and 4, got 10"),
    (["--hires-scale", "4", "--width", "2048", "--height", "2048"], "8192x8192 is too large: at most 4096 px a side"),
    (["--hires-scale", "2", "--hires-strength", "1.5"], "The hires denoising strength must be in (0, 1], got 1.5"),
])  # fmt: skip
def test_cli_bad_hires_values_give_one_line(capsys, argv, line):
    from studio.cli import main

    assert main(["generate", "--prompt", "x", *argv]) == 2
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1


def test_cli_help_names_the_hires_options(capsys):
    from studio.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--hires-scale", "--hires-upscaler", "--hires-steps", "--hires-strength", "Latent (bicubic)"):
        assert flag in out


def test_the_local_backend_keeps_both_passes_for_the_timeline(tiny_model):
    from studio.backends.local import LocalBackend

    backend = LocalBackend(device="cpu")
    try:
        res = backend.generate(hreq(tiny_model, steps=2, hires_steps=1))
    finally:
        backend.close()
    sizes = [p.shape[:2] for p in res.step_previews["x0"]]
    assert len(sizes) == 3 and sizes[0] != sizes[2] and len(res.step_previews["latent"]) == 3


def test_a_factor_of_1_runs_no_second_pass_as_in_a1111(engine, tiny_model):
    r = hreq(tiny_model, hires_scale=1.0)
    res = engine.generate(r)
    assert res.images[0].shape == (SIZE, SIZE, 3) and res.steps_done == 3
    assert np.array_equal(res.images[0], engine.generate(r.with_fields(hires_fix=False)).images[0])
    assert "Hires" not in parameters_for(r, 1, "m", "", "v") and "Denoising" not in parameters_for(r, 1, "m", "", "v")


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_with_an_inpainting_model(engine, tiny_inpaint_model, upscaler):
    """A 9-channel U-Net's second pass takes pictures: a latent upscale is decoded first."""
    res = engine.generate(hreq(tiny_inpaint_model, hires_upscaler=upscaler, hires_steps=1))
    assert res.images[0].shape == (96, 96, 3) and res.steps_done == 4 and res.images[0].std() > 0


def test_a_hires_run_honours_the_speed_mode_in_both_passes(engine, tiny_model, monkeypatch):
    """fast on a CPU with native bf16: both passes run the bf16 U-Net copy, and the PNG says so."""
    from studio.engine import speed as speed_mod

    monkeypatch.setattr(speed_mod, "native_bf16", lambda: True)
    req = hreq(tiny_model, speed="fast")
    model = engine.load(req.model)
    seen: list[torch.dtype] = []  # the bf16 copy is made from the loaded U-Net, so it carries this hook too
    hook = model.base.unet.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    try:
        res = engine.generate(req)
    finally:
        hook.remove()
    assert res.extra_params.get("Speed") == "fast" and res.request.speed == "fast"
    assert seen == [torch.bfloat16] * (3 + 2)  # every step of both passes ran the U-Net in bf16
    assert res.images[0].shape == (2 * SIZE, 2 * SIZE, 3)
    exact = engine.generate(hreq(tiny_model, speed="exact"))
    assert exact.extra_params.get("Speed") == "exact"
    diff = np.abs(exact.images[0].astype(int) - res.images[0].astype(int))
    assert 0 < diff.max()  # bf16 really ran: not the same pixels


def test_a_hires_run_says_deep_cache_was_not_applied(engine, tiny_model):
    res = engine.generate(hreq(tiny_model, steps=16, deep_cache=3))
    assert res.request.deep_cache == 0
    assert "Deep cache" not in parameters_for(res.request, res.seeds[0], "m", "", "v", res.extra_params)
    assert res.notes == ["Deep cache is not applied to a hires fix run"]
