"""Hostile `parameters` texts (issue 24): absurd numbers are refused with one line, fuzzed texts never raise
anything but RequestError and never hang, and the limits are GenerateRequest.validate's own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.core import metadata
from studio.core.errors import RequestError
from studio.core.metadata import FIELD_LIMITS, request_fields
from studio.core.requests import MAX_SEED, GenerateRequest
from studio.session.params import Params, fits

IMAGE = np.zeros((64, 64, 3), np.uint8)
MASK = np.full((64, 64), 255, np.uint8)
MODE_OF = {"mask_blur": "inpaint", "inpaint_padding": "inpaint", "scale": "upscale", "tile": "upscale",
           "tile_overlap": "upscale", "strength": "img2img"}  # fmt: skip


def _request(name: str, value) -> GenerateRequest:
    mode = MODE_OF.get(name, "txt2img")
    fields = {name: value} if name not in ("width", "height") else {"width": value, "height": value}
    if name.startswith("hires_"):
        fields["hires_fix"] = True  # the hires options are checked when the fix is on
    req = GenerateRequest.from_fields(mode=mode, **fields)
    return req.replace(init_image=IMAGE, mask=MASK) if mode != "txt2img" else req


# field -> (values validate accepts, values it refuses): FIELD_LIMITS must say the same.
EDGES = {
    "steps": ((1, 1000), (0, 1001)), "cfg": ((0.0, 100.0), (-0.5, 100.5)), "seed": ((0, MAX_SEED), (-1, MAX_SEED + 1)),
    "width": ((8, 4096), (4, 12, 4104)), "height": ((8, 4096), (4, 12, 4104)), "batch": ((1, 64), (0, 65)),
    "strength": ((0.01, 1.0), (0.0, 1.01)), "clip_skip": ((1, 12), (0, 13)), "mask_blur": ((0, 256), (-1, 257)),
    "inpaint_padding": ((0, 1024), (-1, 1025)), "scale": ((1.0, 8.0), (0.5, 8.5)), "tile": ((0, 64, 4096), (63, 4097)),
    "tile_overlap": ((0, 512), (-1, 513)),
    "hires_scale": ((1.0, 4.0), (0.5, 4.5)), "hires_steps": ((0, 1000), (-1, 1001)),
    "hires_strength": ((0.01, 1.0), (0.0, 1.01)),
    "deep_cache": ((0, 1, 5), (-1, 6)),
    "subseed": ((0, MAX_SEED), (-1, MAX_SEED + 1)), "subseed_strength": ((0.0, 1.0), (-0.1, 1.01)),
    "seed_resize_from_w": ((0, 8, 4096), (4, 4104)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FIELD_LIMITS))
def test_the_limits_are_validates(name):
    inside, outside = EDGES[name]
    for v in inside:
        assert FIELD_LIMITS[name].allows(v), v
        _request(name, v).validate()
    for v in outside:
        assert not FIELD_LIMITS[name].allows(v), v
        with pytest.raises(RequestError):
            _request(name, v).validate()


BASE = {"Steps": "12", "Sampler": "Euler a", "CFG scale": "6", "Seed": "5", "Size": "64x64", "Model": "m"}
MODE_KEYS = {"Mask blur": "Inpaint area: Only masked", "Masked area padding": "Inpaint area: Only masked",
             "Hires upscale": "Upscale mode: diffusion", "Upscale tile": "Upscale mode: diffusion",
             "Upscale overlap": "Upscale mode: diffusion", "Hires resize": "Upscale mode: diffusion"}  # fmt: skip
NUMERIC_KEYS = ["Steps", "CFG scale", "Seed", "Size", "Denoising strength", "Clip skip", "Deep cache", *MODE_KEYS]
ABSURD = ["1e100", "-5", "NaN", "inf", "9" * 100, "9" * 5000, "2.5e", "0x10"]


def _text(key: str, value: str) -> str:
    pairs = dict(BASE)
    pairs[key] = f"{value}x64" if key in ("Size", "Hires resize") else value
    line = ", ".join(f"{k}: {v}" for k, v in pairs.items())
    return f"a cat\n{line}" + (f", {MODE_KEYS[key]}" if key in MODE_KEYS else "")


@pytest.mark.parametrize("key", NUMERIC_KEYS)
@pytest.mark.parametrize("value", ABSURD)
def test_an_absurd_number_is_refused_with_one_line(key, value):
    refused: list[metadata.Refused] = []
    fields = request_fields(_text(key, value), refused)
    assert [r.key for r in refused] == [key]
    line = refused[0].line(20)
    assert line.startswith(f"{key} ") and line.endswith(": kept 20") and len(line) < 120, line
    assert "9" * 20 not in line
    req = GenerateRequest.from_fields(**fields)
    if req.mode != "txt2img":
        req = req.replace(init_image=IMAGE, mask=MASK)
    req.validate()  # what was restored is valid
    restored = Params().with_fields(fields)
    assert all(fits(f, getattr(restored, f)) for f in FIELD_LIMITS if hasattr(restored, f))


def test_refused_line_names_the_kept_value():
    refused: list[metadata.Refused] = []
    request_fields(_text("Steps", "1e100"), refused)
    assert Params(steps=20).refused_lines(refused) == [
        "Steps 1e100 in the image is out of range (1-1000): kept 20"
    ]
    refused.clear()
    request_fields(_text("Size", "5000"), refused)
    assert Params(width=512, height=768).refused_lines(refused) == [
        "Size 5000x64 in the image is out of range (8-4096, a multiple of 8): kept 512x768"
    ]
    refused.clear()
    request_fields(_text("Clip skip", "99"), refused)
    assert Params().refused_lines(refused) == ["Clip skip 99 in the image is out of range (1-12): ignored"]


def test_params_never_take_a_number_out_of_range():
    huge = 10**100
    found = {"steps": huge, "cfg": float("nan"), "seed": -7, "width": huge, "mask_blur": float("inf"),
             "inpaint_padding": -1, "scale": 1e9, "batch": huge}  # fmt: skip
    p = Params(steps=9).with_fields(found)
    assert (p.steps, p.cfg, p.seed, p.width, p.mask_blur, p.inpaint_padding, p.scale, p.batch) == (
        9, 7.0, -1, 0, 4, 32, 2.0, 1)
    settings_file = {"steps": "1e100", "cfg": "inf", "tile": 10**100, "upscale_strength": 5, "seed": 2**40,
                     "width": 512, "prompt": "kept"}  # fmt: skip
    p = Params.from_dict(settings_file)
    assert (p.steps, p.cfg, p.tile, p.upscale_strength, p.seed, p.width, p.prompt) == (
        20, 7.0, 0, 0.3, -1, 512, "kept")


# ---------------------------------------------------------------- fuzzing

KEYS = st.sampled_from([*NUMERIC_KEYS, "Sampler", "Schedule type", "Model", "VAE", "Model hash", "Inpaint area",
                        "Masked content", "Upscale mode", "Hires upscaler", "Version", "Lora hashes"])
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(ABSURD + ["", " ", "Only masked", "fill", "latent noise", "diffusion", "latent", "resize",
                              "model", "Karras", "DPM++ 2M Karras", "Automatic", '"a, b: c"', '"\\ud800"', '"']),
)
VALUES = st.one_of(NUMBERS, st.text(max_size=30))
A1111_LINE = st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=14).map(
    lambda pairs: ", ".join(f"{k}: {v}" + (f"x{v}" if k in ("Size", "Hires resize") else "") for k, v in pairs))
PARAMETERS = st.one_of(
    st.text(max_size=400),  # anything at all
    st.tuples(st.text(max_size=80), A1111_LINE).map(lambda t: f"{t[0]}\n{t[1]}"),
    st.tuples(st.text(max_size=60), st.text(max_size=60), A1111_LINE).map(
        lambda t: f"{t[0]}\nNegative prompt: {t[1]}\n{t[2]}"),
    st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=20)), max_size=10).map(
        lambda pairs: "p\n" + ", ".join(f"{k}: {v}" for k, v in pairs)),  # random key: value lines
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(PARAMETERS)
def test_fuzzed_parameters_never_raise_anything_but_a_request_error(text):
    refused: list[metadata.Refused] = []
    fields = request_fields(text, refused)
    for r in refused:
        assert "\n" not in r.line(1) and len(r.line(1)) < 200
    params = Params().with_fields(fields)
    params.refused_lines(refused)
    req = GenerateRequest.from_fields(**fields)
    if req.mode != "txt2img":
        req = req.replace(init_image=IMAGE, mask=MASK)
    try:
        req.validate()
    except RequestError:
        pass
    params.to_request().validate() if params.mode == "txt2img" else None


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list('ab -/:,"\\\t é日') + ["\n"]), max_size=80))
def test_param_pairs_matches_a1111s_regex_on_fuzzed_lines(line):
    assert metadata.param_pairs(line) == metadata.RE_PARAM.findall(line)
