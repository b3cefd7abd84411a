"""The engine against plain diffusers on tiny random pipelines: same pixels, steps, previews, cancel, caching."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from studio.core import GenerateRequest, ModelError, RequestError
from studio.core.samplers import SAMPLER_NAMES
from studio.engine.preview import SD15_FACTORS, fit_factors, latent_to_rgb

SIZE = 32  # pixels: 16x16 latents on the tiny model, fast on a CPU


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=model, steps=3, seed=1234, width=SIZE, height=SIZE, cfg=5.0)
    base.update(kw)
    return GenerateRequest.from_fields(**base)


# The sampler table (names artists know -> diffusers schedulers, as A1111 maps them), written out independently of
# studio.core.samplers.
DIFFUSERS_TABLE = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 1234}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DDPM": ("DDPMScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}
# What the pipeline call needs besides the scheduler: TCD's gamma is the pipeline's `eta` (0.3, the TCD authors').
PLAIN_CALL = {"TCD": {"eta": 0.3}}


@pytest.fixture(scope="module")
def plain(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler_config = pipe.scheduler.config  # each test starts from the model's own config
    return pipe


def plain_image(pipe, sampler: str, schedule: str = "Normal", **kw) -> np.ndarray:
    import diffusers
    import torch

    cls, overrides = DIFFUSERS_TABLE[sampler]
    overrides = dict(overrides)
    if schedule == "Karras":
        overrides["use_karras_sigmas"] = True
    if schedule == "SGM Uniform":
        overrides["timestep_spacing"] = "trailing"
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.original_scheduler_config, **overrides)
    args = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=5.0, width=SIZE, height=SIZE)
    args.update(PLAIN_CALL.get(sampler, {}))
    args.update(kw)
    out = pipe(**args, generator=torch.Generator("cpu").manual_seed(1234), output_type="np").images[0]
    return (out * 255).round().astype(np.uint8)


def test_at_least_twelve_samplers():
    assert len(SAMPLER_NAMES) >= 12
    assert set(DIFFUSERS_TABLE) <= set(SAMPLER_NAMES)


@pytest.mark.parametrize("sampler", list(DIFFUSERS_TABLE))
def test_every_sampler_matches_plain_diffusers(engine, tiny_model, plain, sampler):
    ours = engine.generate(req(tiny_model, sampler=sampler))
    theirs = plain_image(plain, sampler)
    assert ours.images[0].shape == (SIZE, SIZE, 3)
    diff = np.abs(ours.images[0].astype(int) - theirs.astype(int)).max()
    assert diff <= 1, f"{sampler}: max abs difference {diff}/255"
    assert ours.images[0].std() > 1  # not a blank image


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ 2M SDE"])
def test_karras_schedule_matches_plain_diffusers(engine, tiny_model, plain, sampler):
    ours = engine.generate(req(tiny_model, sampler=sampler, schedule="Karras"))
    normal = engine.generate(req(tiny_model, sampler=sampler))
    theirs = plain_image(plain, sampler, "Karras")
    assert np.abs(ours.images[0].astype(int) - theirs.astype(int)).max() <= 1
    assert not np.array_equal(ours.images[0], normal.images[0])  # the schedule really changed


# Few-step models as their authors run them in diffusers: SD Turbo (Euler a, trailing, 1 step, CFG 0), Lightning
# (Euler, trailing, CFG 1), Hyper-SD (DDIM trailing or TCD, CFG 1), LCM (CFG 1.5: a real CFG pass on a U-Net
# without the guidance embedding).
@pytest.mark.parametrize(
    ("sampler", "schedule", "steps", "cfg"),
    [("Euler a", "SGM Uniform", 1, 0.0), ("Euler a", "SGM Uniform", 4, 1.0), ("Euler", "SGM Uniform", 4, 1.0),
     ("DDIM", "SGM Uniform", 2, 1.0), ("TCD", "Normal", 4, 1.0), ("TCD", "Normal", 1, 1.0), ("LCM", "Normal", 4, 1.5)],
)  # fmt: skip
def test_few_step_settings_match_plain_diffusers(engine, tiny_model, plain, sampler, schedule, steps, cfg):
    ours = engine.generate(req(tiny_model, sampler=sampler, schedule=schedule, steps=steps, cfg=cfg))
    theirs = plain_image(plain, sampler, schedule, num_inference_steps=steps, guidance_scale=cfg)
    diff = np.abs(ours.images[0].astype(int) - theirs.astype(int)).max()
    assert diff <= 1, f"{sampler} {schedule} {steps} steps: max abs difference {diff}/255"
    assert ours.images[0].std() > 1
    assert ours.steps_done == steps


def test_trailing_spacing_and_tcd_gamma_really_change_the_run(engine, tiny_model, plain):
    trailing = engine.generate(req(tiny_model, sampler="Euler", schedule="SGM Uniform", steps=2, cfg=1.0))
    leading = engine.generate(req(tiny_model, sampler="Euler", steps=2, cfg=1.0))
    assert not np.array_equal(trailing.images[0], leading.images[0])
    tcd = engine.generate(req(tiny_model, sampler="TCD", steps=3, cfg=1.0)).images[0]
    no_gamma = plain_image(plain, "TCD", num_inference_steps=3, guidance_scale=1.0, eta=0.0)
    assert np.abs(tcd.astype(int) - no_gamma.astype(int)).max() > 1  # the engine passed gamma 0.3, not 0


def test_negative_prompt_and_cfg_match_plain(engine, tiny_model, plain):
    ours = engine.generate(req(tiny_model, sampler="Euler", negative_prompt="blue", cfg=9.0))
    theirs = plain_image(plain, "Euler", negative_prompt="blue", guidance_scale=9.0)
    assert np.abs(ours.images[0].astype(int) - theirs.astype(int)).max() <= 1


def test_unknown_sampler_and_schedule_rejected(engine, tiny_model):
    with pytest.raises(RequestError, match="Unknown sampler 'Nope'"):
        engine.generate(req(tiny_model, sampler="Nope"))
    with pytest.raises(RequestError, match="no Karras schedule"):
        engine.generate(req(tiny_model, sampler="Euler a", schedule="Karras"))


def test_second_request_and_sampler_change_load_nothing(tiny_model):
    from studio.engine.engine import Engine

    e = Engine(device="cpu")
    e.generate(req(tiny_model, steps=1))
    e.generate(req(tiny_model, steps=1, sampler="DPM++ 2M", schedule="Karras", prompt="other"))
    e.generate(req(tiny_model, steps=2, mode="img2img", init_image=np.zeros((SIZE, SIZE, 3), np.uint8)))
    assert e.loads == 1


def test_random_seed_is_reported_and_reproduces(engine, tiny_model):
    a = engine.generate(req(tiny_model, seed=None, steps=2))
    seed = a.request.seed
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert a.seeds == [seed]
    b = engine.generate(req(tiny_model, seed=seed, steps=2))
    assert np.array_equal(a.images[0], b.images[0])
    c = engine.generate(req(tiny_model, seed=(seed + 1) % 2**32, steps=2))
    assert not np.array_equal(a.images[0], c.images[0])


def test_batch_image_i_uses_seed_plus_i(engine, tiny_model):
    batch = engine.generate(req(tiny_model, batch=2, sampler="Euler a"))
    assert batch.seeds == [1234, 1235] and len(batch.images) == 2
    alone = engine.generate(req(tiny_model, seed=1235, sampler="Euler a"))
    assert np.abs(batch.images[1].astype(int) - alone.images[0].astype(int)).max() <= 1


def test_default_size_is_the_models_native_size(engine, tiny_model):
    r = engine.generate(req(tiny_model, width=None, height=None, steps=1))
    assert r.images[0].shape == (64, 64, 3)
    assert (r.request.width, r.request.height) == (64, 64)


@pytest.mark.parametrize("w,h", [(65, 32), (32, 30), (4, 32)])
def test_sizes_must_be_multiples_of_8(engine, tiny_model, w, h):
    with pytest.raises(RequestError, match="multiple of 8|out of range"):
        engine.generate(req(tiny_model, width=w, height=h))


def test_missing_and_bad_models_are_clear_errors(engine, tmp_path):
    with pytest.raises(ModelError, match="Model not found"):
        engine.generate(req(str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model_index.json"):
        engine.generate(req(str(tmp_path / "empty")))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="model.safetensors is truncated"):
        engine.generate(req(str(f)))


def test_layouts_recognised(tiny_model, tiny_inpaint_model, tmp_path):
    from studio.engine.loader import read_layout

    assert read_layout(Path(tiny_model)).layout == "txt2img"
    lay = read_layout(Path(tiny_inpaint_model))
    assert lay.layout == "inpaint" and lay.unet_in_channels == 9
    up = tmp_path / "x4"
    (up / "unet").mkdir(parents=True)
    (up / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline"}))
    (up / "unet" / "config.json").write_text(json.dumps({"in_channels": 7}))
    lay = read_layout(up)
    assert (lay.family, lay.layout, lay.modes) == ("upscale", "upscale", ("upscale",))


def test_steps_previews_and_kept_latents(engine, tiny_model):
    seen = []
    r = engine.generate(req(tiny_model, steps=4, sampler="Euler"), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4]
    assert {s.total for s in seen} == {4}
    assert all(b.elapsed >= a.elapsed for a, b in zip(seen, seen[1:], strict=False))
    assert r.latents.shape == (4, 1, 4, SIZE // 2, SIZE // 2) and r.latents.dtype == np.float16
    assert r.x0.shape == r.latents.shape
    # The preview is the linear map of the x0 estimate, not of the noisy latent.
    factors, bias = np.asarray(SD15_FACTORS, np.float32), np.zeros(3, np.float32)
    for k, s in enumerate(seen):
        assert s.preview.shape == (SIZE // 2, SIZE // 2, 3) and s.preview.dtype == np.uint8
        assert np.array_equal(s.preview, latent_to_rgb(r.x0[k, 0], factors, bias))
    assert not np.allclose(r.x0[0], r.latents[0], atol=1e-2)
    # The last kept latent is what was decoded.
    dec = engine.decode_latent(tiny_model, r.latents[-1, 0])
    assert np.abs(dec.astype(int) - r.images[0].astype(int)).max() <= 2


@pytest.mark.parametrize("sampler", ["Heun", "DPM2 a", "PLMS", "DPM++ 2M", "UniPC", "DDIM", "LCM", "TCD"])
def test_steps_counted_as_the_artist_set_them(engine, tiny_model, sampler):
    seen = []
    r = engine.generate(req(tiny_model, steps=3, sampler=sampler), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3] and seen[-1].total == 3
    assert r.latents.shape[0] == 3
    # x0 estimate and noisy latent differ before the last step
    assert not np.allclose(r.x0[0], r.latents[0], atol=1e-2)


def test_noisy_latent_preview_option(engine, tiny_model):
    seen = []
    r = engine.generate(req(tiny_model, preview="latent"), on_step=seen.append)
    factors, bias = np.asarray(SD15_FACTORS, np.float32), np.zeros(3, np.float32)
    assert np.array_equal(seen[0].preview, latent_to_rgb(r.latents[0, 0], factors, bias))
    seen.clear()
    engine.generate(req(tiny_model, preview="none"), on_step=seen.append)
    assert len(seen) == 3 and seen[0].preview is None


def test_cancel_stops_within_one_step_and_decodes_nothing(engine, tiny_model, monkeypatch):
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info.step)
        if info.step == 2:
            cancel.set()

    def no_decode(*a, **k):
        raise AssertionError("a cancelled run must not decode")

    monkeypatch.setattr(engine, "decode", no_decode)
    r = engine.generate(req(tiny_model, steps=10), on_step=on_step, cancel=cancel)
    assert r.cancelled and r.images == []
    assert seen == [1, 2] and r.steps_done == 2
    pre = threading.Event()
    pre.set()
    r2 = engine.generate(req(tiny_model, steps=10), on_step=seen.append, cancel=pre)
    assert r2.cancelled and r2.images == [] and seen == [1, 2]


def test_img2img_matches_plain_and_runs_strength_steps(engine, tiny_model, plain):
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    rng = np.random.default_rng(0)
    init = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    seen = []
    r = engine.generate(
        req(tiny_model, mode="img2img", init_image=init, strength=0.5, steps=6, sampler="Euler"), on_step=seen.append
    )
    assert [s.step for s in seen] == [1, 2, 3] and seen[-1].total == 3
    pipe = StableDiffusionImg2ImgPipeline.from_pipe(plain)
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(plain.original_scheduler_config)
    theirs = pipe(
        prompt="a red circle",
        image=Image.fromarray(init),
        strength=0.5,
        num_inference_steps=6,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(1234),
        output_type="np",
    ).images[0]
    theirs = (theirs * 255).round().astype(np.uint8)
    assert np.abs(r.images[0].astype(int) - theirs.astype(int)).max() <= 1


def test_img2img_needs_an_image(engine, tiny_model):
    with pytest.raises(RequestError, match="needs an input image"):
        engine.generate(req(tiny_model, mode="img2img"))


def test_inpainting_unet_does_txt2img_like_the_inpaint_pipeline(engine, tiny_inpaint_model):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline
    from PIL import Image

    r = engine.generate(req(tiny_inpaint_model, sampler="Euler"))
    assert r.images[0].shape == (SIZE, SIZE, 3)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        tiny_inpaint_model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = pipe(
        prompt="a red circle",
        image=Image.new("RGB", (SIZE, SIZE)),
        mask_image=Image.new("L", (SIZE, SIZE), 255),
        num_inference_steps=3,
        guidance_scale=5.0,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(1234),
        output_type="np",
    ).images[0]
    assert np.abs(r.images[0].astype(int) - (theirs * 255).round().astype(int)).max() <= 1


@pytest.mark.parametrize("which", ["tiny_model", "tiny_inpaint_model"])
def test_inpaint_keeps_unmasked_pixels_exactly(engine, request, which):
    model = request.getfixturevalue(which)
    rng = np.random.default_rng(1)
    init = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    # mask_blur=0: the mask itself is the composite's mask (a blur feathers it outwards: tests/test_inpaint.py)
    r = engine.generate(req(model, mode="inpaint", init_image=init, mask=mask, strength=1.0, mask_blur=0))
    out = r.images[0]
    assert np.array_equal(out[mask == 0], init[mask == 0])
    assert not np.array_equal(out[mask == 255], init[mask == 255])


def test_request_copies_arrays_at_submit():
    img = np.zeros((8, 8, 3), np.uint8)
    r = GenerateRequest.from_fields(mode="img2img", init_image=img)
    img[:] = 255
    assert r.init_image.max() == 0
    with pytest.raises(ValueError):
        r.init_image[0, 0, 0] = 1


def test_fitted_preview_factors_are_used(tiny_model, tmp_path):
    import shutil

    from studio.engine.engine import Engine

    model = tmp_path / "with-factors"
    shutil.copytree(tiny_model, model)
    m = np.arange(12, dtype=np.float32).reshape(4, 3) / 20
    (model / "latent_rgb.json").write_text(json.dumps({"factors": m.tolist(), "bias": [0.1, 0.2, 0.3]}))
    e = Engine(device="cpu")
    seen = []
    r = e.generate(req(str(model), steps=1), on_step=seen.append)
    assert np.array_equal(seen[0].preview, latent_to_rgb(r.x0[0, 0], m, np.array([0.1, 0.2, 0.3], np.float32)))


def test_fit_factors_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 3)).astype(np.float32)
    b = np.array([0.1, -0.2, 0.05], np.float32)
    lat = rng.normal(size=(5, 4, 8, 8)).astype(np.float32)
    rgb = np.einsum("nchw,cr->nhwr", lat, m) + b
    fm, fb = fit_factors(lat, rgb)
    assert np.allclose(fm, m, atol=1e-4) and np.allclose(fb, b, atol=1e-4)


def test_tokenizer_known_ids():
    from transformers import CLIPTokenizer

    from studio.paths import TOKENIZER_DIR

    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77


def test_tokenizer_files_are_reproducible(tmp_path):
    """The shipped files equal what scripts/make_tokenizer.py writes from open-clip-torch's BPE file."""
    import importlib.util

    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch is not installed")
    root = Path(__file__).resolve().parent.parent
    script = root / "scripts" / "make_tokenizer.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (root / "resources" / "tokenizer" / name).read_bytes()


def test_engine_import_loads_no_qt():
    code = (
        "import sys; import studio.engine; assert 'torch' not in sys.modules, 'torch'; "
        "import studio.engine.engine, studio.core.metadata, studio.core.output; "
        "bad = [m for m in sys.modules if m.startswith('PySide6')]; assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_incomplete_model_folder_fails_clearly_without_network(engine, tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelError, match="no-tokenizer is incomplete: missing tokenizer"):
        engine.generate(req(str(broken), steps=1))


def test_corrupt_weights_are_a_clear_model_error(engine, tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_model, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0garbage" * 100)
    with pytest.raises(ModelError, match="Cannot load model corrupt"):
        engine.generate(req(str(broken), steps=1))


@pytest.mark.parametrize("kind", ["cuda", "memory", "other"])
def test_a_failing_run_is_one_engine_error_line(tiny_model, monkeypatch, kind):
    """Out of memory (torch's or Python's) is the project's one message; anything else says what failed."""
    import torch

    from studio.core import EngineError
    from studio.core.errors import OUT_OF_MEMORY
    from studio.engine.engine import Engine

    raised = {
        "cuda": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n(GPU 0)"),
        "memory": MemoryError(),
        "other": RuntimeError("shapes do not match\nmore detail"),
    }[kind]

    def pipe(**kwargs):
        raise raised

    e = Engine(device="cpu")
    monkeypatch.setattr(e, "pipeline_call", lambda model, r, seeds, plan=None: (pipe, {}))
    with pytest.raises(EngineError) as info:
        e.generate(req(tiny_model, steps=1))
    expected = OUT_OF_MEMORY if kind != "other" else "Generation failed: shapes do not match"
    assert str(info.value) == expected
    assert info.value.__cause__ is raised


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_an_x4_upscaler_model_is_refused_outside_upscale_without_loading(tiny_x4_model, mode):
    from studio.engine.engine import Engine

    e = Engine(device="cpu")
    extra = {}
    if mode != "txt2img":
        extra["init_image"] = np.zeros((SIZE, SIZE, 3), np.uint8)
    if mode == "inpaint":
        extra["mask"] = np.full((SIZE, SIZE), 255, np.uint8)
    with pytest.raises(RequestError, match=f"tiny-x4 is an x4 upscaler model: it only upscales.*for {mode}"):
        e.generate(req(tiny_x4_model, mode=mode, **extra))
    assert e.loads == 0  # told from its json files alone
