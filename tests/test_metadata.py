"""Generation metadata: A1111 `parameters` text, PNG/JPEG/WebP round trips, atomic saves, names, hashes."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.core import metadata, output
from studio.core.errors import EngineError, ModelError, RequestError
from studio.core.metadata import (
    decode_user_comment,
    format_parameters,
    model_hash,
    parameters_for,
    parse_parameters,
    read_parameters,
    request_fields,
)
from studio.core.output import next_paths, save_image, save_result
from studio.core.requests import GenerateRequest, GenerateResult

IMG = (np.arange(16 * 24 * 3, dtype=np.uint32).reshape(16, 24, 3) % 251).astype(np.uint8)

BASE = {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Normal", "CFG scale": 7.0, "Seed": 42, "Size": "512x512"}


# ---------------------------------------------------------------- formatting


def test_known_sample_exact_text():
    req = GenerateRequest.from_fields(
        prompt="a castle on a hill, sunset",
        negative_prompt="blurry",
        sampler="DPM++ 2M",
        schedule="Karras",
        steps=20,
        cfg=7.0,
        width=512,
        height=512,
        mode="img2img",
        strength=0.5,
        init_image=np.zeros((8, 8, 3), np.uint8),
    )
    text = parameters_for(req, 1234, "v1-5-pruned-emaonly", "6ce0161689", "Latent Studio 0.1.0")
    assert text == (
        "a castle on a hill, sunset\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Version: Latent Studio 0.1.0"
    )


def test_txt2img_omits_strength_and_default_clip_skip_and_writes_clip_skip_2():
    req = GenerateRequest.from_fields(prompt="p", width=640, height=448, cfg=7.5, clip_skip=1)
    text = parameters_for(req, 7, "m", "0123456789", "v")
    assert "Denoising strength" not in text and "Clip skip" not in text
    assert text.endswith(
        "Steps: 20, Sampler: Euler a, Schedule type: Normal, CFG scale: 7.5, Seed: 7, Size: 640x448, Model hash: 0123456789, Model: m, Version: v"
    )
    assert "Negative prompt" not in text
    text2 = parameters_for(req.replace(clip_skip=2), 7, "m", "0123456789", "v")
    assert "Model: m, Clip skip: 2, Version: v" in text2


def test_key_order_extras_unknown_and_version_last():
    params = {
        "Version": "v1",
        "Lora hashes": "a: 1",
        "My key": "x",
        "Mask blur": 4,
        "Clip skip": 2,
        "Denoising strength": 0.75,
        "Model": "m",
        "Seed": 5,
        "Steps": 30,
        "Other": "y",
        "Hires upscale": 2.0,
        "VAE": "",
        "Variation seed": None,
    }
    line = format_parameters("p", "", params).split("\n")[-1]
    keys = [k for k, _ in metadata.RE_PARAM.findall(line)]
    assert keys == [
        "Steps",
        "Seed",
        "Model",
        "Denoising strength",
        "Clip skip",
        "Mask blur",
        "Hires upscale",
        "Lora hashes",
        "My key",
        "Other",
        "Version",
    ]
    assert "Hires upscale: 2," in line and 'Lora hashes: "a: 1"' in line


def test_number_and_quote_formatting():
    line = format_parameters(
        "",
        "",
        {
            "CFG scale": 7.0,
            "Steps": 20,
            "Denoising strength": 0.75,
            "Seed": np.int64(3),
            "Model": 'a, "b"',
            "VAE": "x\ny",
        },
    )
    assert line == 'Steps: 20, CFG scale: 7, Seed: 3, Model: "a, \\"b\\"", VAE: "x\\ny", Denoising strength: 0.75'
    assert format_parameters("", "", {"CFG scale": 7.5, "Steps": 1, "Seed": 0}).startswith(
        "Steps: 1, CFG scale: 7.5, Seed: 0"
    )
    assert metadata.format_value(np.float32(0.1)) == "0.1"
    # non-ASCII kept as is inside JSON quoting
    assert format_parameters("", "", {"Steps": 1, "Seed": 1, "Model": "café, 日本"}).endswith('Model: "café, 日本"')


def test_bad_key_rejected():
    with pytest.raises(ValueError):
        format_parameters("p", "", {"Bad:key": 1})


# ---------------------------------------------------------------- round trips through real files

PROMPTS = [
    ("a cat, sitting: on a mat (masterpiece:1.2)", "lowres, bad anatomy"),
    ('say "hello", world: yes', ""),  # empty negative
    ("first line\nsecond line, with comma\nthird: colon", "neg line 1\nneg line 2, more\nneg: 3"),
    ("café crème, 日本語のプロンプト, emoji 🎨🐱", "ぼやけ, 😡"),
    ("", "only a negative"),
    ("", ""),
    ("trailing spaces kept  \nand tabs\t", "x"),
]


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_png_round_trip(tmp_path, prompt, negative):
    req = GenerateRequest.from_fields(
        prompt=prompt,
        negative_prompt=negative,
        sampler="DPM++ 2M SDE",
        schedule="Exponential",
        steps=33,
        cfg=6.5,
        width=768,
        height=512,
        clip_skip=2,
        seed=4000000000,
        deep_cache=3,
    )
    text = parameters_for(req, 4000000000, "my model, v2: final", "abcdef0123", "Latent Studio 0.1.0")
    path = save_image(IMG, tmp_path / "out.png", text)
    assert read_parameters(path) == text
    with Image.open(path) as im:
        assert im.info["parameters"] == text
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), IMG)
    fields = request_fields(read_parameters(path))
    assert fields == {
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": 33,
        "sampler": "DPM++ 2M SDE",
        "schedule": "Exponential",
        "cfg": 6.5,
        "seed": 4000000000,
        "width": 768,
        "height": 512,
        "clip_skip": 2,
        "deep_cache": 3,
    }
    restored = GenerateRequest().with_fields(**fields)
    assert restored == req
    assert parse_parameters(text)["params"]["Model"] == "my model, v2: final"


def test_png_chunk_type_text_vs_itxt(tmp_path):
    latin = format_parameters("café", "", BASE)
    other = format_parameters("日本語", "", BASE)
    p1 = save_image(IMG, tmp_path / "a.png", latin)
    p2 = save_image(IMG, tmp_path / "b.png", other)
    assert b"tEXtparameters\x00" in p1.read_bytes()
    assert b"iTXtparameters\x00" in p2.read_bytes()
    assert read_parameters(p1) == latin and read_parameters(p2) == other


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_jpeg_webp_round_trip(tmp_path, ext):
    text = format_parameters("a, b: c\n日本語 🎨", 'neg, "q"', {**BASE, "Model": "m"})
    path = save_image(IMG, tmp_path / f"out{ext}", text)
    assert read_parameters(path) == text
    with Image.open(path) as im:
        raw = im.getexif().get_ifd(0x8769)[0x9286]
        assert im.format == ("JPEG" if ext != ".webp" else "WEBP")
    assert raw[:8] == b"UNICODE\x00"
    assert raw[8:] == text.encode("utf-16-be")


def test_user_comment_variants():
    t = "Steps: 20, Seed: 1, Sampler: Euler a — é"
    assert decode_user_comment(b"UNICODE\x00" + t.encode("utf-16-be")) == t
    assert decode_user_comment(b"UNICODE\x00" + t.encode("utf-16-le")) == t
    assert decode_user_comment(b"ASCII\x00\x00\x00" + b"Steps: 20, Seed: 1\x00") == "Steps: 20, Seed: 1"
    assert decode_user_comment(b"\x00" * 8 + "é".encode()) == "é"


def test_reads_a1111_png_written_by_pillow_add_text(tmp_path):
    text = "masterpiece\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    info = PngInfo()
    info.add_text("parameters", text)
    Image.fromarray(IMG).save(tmp_path / "a.png", pnginfo=info)
    assert read_parameters(tmp_path / "a.png") == text


def test_read_parameters_absent_and_unreadable(tmp_path):
    Image.fromarray(IMG).save(tmp_path / "plain.png")
    Image.fromarray(IMG).save(tmp_path / "plain.jpg")
    assert read_parameters(tmp_path / "plain.png") is None
    assert read_parameters(tmp_path / "plain.jpg") is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(RequestError, match=r"^Cannot read image .*bad\.png: "):
        read_parameters(bad)
    with pytest.raises(RequestError, match="Cannot read image"):
        read_parameters(tmp_path / "missing.png")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(
        (save_image(IMG, tmp_path / "full.png", "x\nSteps: 1, Seed: 2, CFG scale: 3")).read_bytes()[:20]
    )
    with pytest.raises(RequestError):
        read_parameters(truncated)


# ---------------------------------------------------------------- parsing texts from other tools

A1111_HIRES = (
    "masterpiece, 1girl\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3848593849, Size: 512x768, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, Version: v1.6.0"
)

A1111_SCHEDULE_TYPE = (
    "portrait of an old fisherman, (detailed skin:1.3), 35mm\n"
    "Negative prompt: cartoon, 3d,\n"
    "(worst quality:1.4)\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1234567, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, "
    'Lora hashes: "add_detail: 7c6bbf5c0b4c, film: 0a1b2c3d4e5f", Version: v1.10.1'
)

SDNEXT = (
    "a photo of an astronaut riding a horse on mars\n"
    "Negative prompt: blurry, watermark\n"
    "Steps: 20, Seed: 2469105773, Sampler: Euler a, CFG scale: 6, Size: 1024x1024, Parser: Full parser, "
    "Model: juggernautXL_v9, Model hash: c9e3e68f89, Backend: Diffusers, App: SD.Next, Version: 82973c4, "
    "Operations: txt2img, Pipeline: StableDiffusionXLPipeline"
)

FOOOCUS_A1111 = (
    "cinematic still of a fox in the snow, shallow depth of field\n"
    "Negative prompt: unrealistic, saturated, high contrast\n"
    "Steps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 917356352742, Size: 1152x896, CFG scale: 4, Sharpness: 2, "
    'ADM Guidance: "(1.5, 0.8, 0.3)", Refiner Switch: 0.8, Model: juggernautXL_v8Rundiffusion, '
    'Model hash: aeb7e9e689, Lora hashes: "add_detail: 7c6bbf5c0b4c", Version: Fooocus v2.3.1'
)


def test_parse_a1111_hires_combined_sampler():
    p = parse_parameters(A1111_HIRES)
    assert p["prompt"] == "masterpiece, 1girl"
    assert p["negative_prompt"] == "lowres, bad anatomy"
    assert p["params"]["Sampler"] == "DPM++ 2M" and p["params"]["Schedule type"] == "Karras"
    assert p["params"]["Hires upscaler"] == "Latent" and p["params"]["Version"] == "v1.6.0"
    assert request_fields(A1111_HIRES) == {
        "prompt": "masterpiece, 1girl",
        "negative_prompt": "lowres, bad anatomy",
        "steps": 28,
        "sampler": "DPM++ 2M",
        "schedule": "Karras",
        "cfg": 7.0,
        "seed": 3848593849,
        "width": 512,
        "height": 768,
        "clip_skip": 2,
        # the hires fix (issue 23): the Denoising strength is its second pass's, not img2img's
        "hires_fix": True,
        "hires_scale": 2.0,
        "hires_steps": 0,
        "hires_upscaler": "Latent",
        "hires_strength": 0.5,
        "deep_cache": 0,  # ours, absent from another tool's text: that image reused no features
    }


def test_parse_schedule_type_multiline_negative_and_quoted_lora():
    p = parse_parameters(A1111_SCHEDULE_TYPE)
    assert p["negative_prompt"] == "cartoon, 3d,\n(worst quality:1.4)"
    assert p["params"]["Lora hashes"] == "add_detail: 7c6bbf5c0b4c, film: 0a1b2c3d4e5f"
    assert p["params"]["VAE"] == "sdxl_vae.safetensors"
    f = request_fields(A1111_SCHEDULE_TYPE)
    assert (f["sampler"], f["schedule"], f["cfg"], f["width"], f["height"], f["clip_skip"]) == (
        "DPM++ 2M",
        "Karras",
        5.5,
        832,
        1216,
        1,
    )
    assert "strength" not in f


def test_parse_sdnext():
    p = parse_parameters(SDNEXT)
    assert p["params"]["App"] == "SD.Next" and p["params"]["Pipeline"] == "StableDiffusionXLPipeline"
    f = request_fields(SDNEXT)
    assert f["sampler"] == "Euler a" and f["schedule"] == "Normal" and f["seed"] == 2469105773
    assert (f["steps"], f["cfg"], f["width"], f["height"]) == (20, 6.0, 1024, 1024)


def test_parse_fooocus_a1111_mode():
    p = parse_parameters(FOOOCUS_A1111)
    assert p["params"]["Lora hashes"] == "add_detail: 7c6bbf5c0b4c"
    assert p["params"]["ADM Guidance"] == "(1.5, 0.8, 0.3)"
    assert p["params"]["Sampler"] == "DPM++ 2M SDE" and p["params"]["Schedule type"] == "Karras"
    f = request_fields(FOOOCUS_A1111)
    assert f["sampler"] == "DPM++ 2M SDE" and f["schedule"] == "Karras" and f["cfg"] == 4.0
    assert "seed" not in f  # 917356352742 does not fit our 32-bit seeds: kept out, not clamped


def test_last_line_needs_three_pairs():
    text = "a prompt\nwith a last line: that, looks: like params"
    p = parse_parameters(text)
    assert p["prompt"] == text and p["params"] == {}
    f = request_fields(text)
    assert f == {
        "prompt": text,
        "negative_prompt": "",
        "steps": 20,
        "sampler": "Euler a",
        "schedule": "Normal",
        "cfg": 7.0,
        "clip_skip": 1,
        "deep_cache": 0,
    }


def test_defaults_unknown_values_and_automatic():
    f = request_fields("p\nSteps: 12, Seed: 5, Size: 64x64, Sampler: Restart, Schedule type: Beta")
    assert "sampler" not in f and "schedule" not in f
    assert (f["steps"], f["cfg"], f["clip_skip"]) == (12, 7.0, 1)
    # "Automatic" is the sampler's own default: Karras for DPM++ 2M since A1111 1.9
    assert request_fields("p\nSteps: 1, Sampler: DPM++ 2M, Schedule type: Automatic, Seed: 1")["schedule"] == "Karras"
    assert request_fields("p\nSteps: 1, Sampler: Euler, Schedule type: Automatic, Seed: 1")["schedule"] == "Normal"
    # Windows line endings
    f = request_fields("a\r\nNegative prompt: b\r\nSteps: 9, Seed: 3, CFG scale: 2.5")
    assert (f["prompt"], f["negative_prompt"], f["steps"], f["cfg"]) == ("a", "b", 9, 2.5)


# ---------------------------------------------------------------- inpainting keys

INPAINT_BASE = dict(prompt="a cat", mode="inpaint", steps=20, cfg=7.0, width=512, height=512, strength=0.75,
                    init_image=np.zeros((8, 8, 3), np.uint8), mask=np.full((8, 8), 255, np.uint8))  # fmt: skip


def _tail(text: str) -> str:
    return text.split("Model: m, ")[1]


@pytest.mark.parametrize(
    ("options", "tail"),
    [
        ({}, "Denoising strength: 0.75, Mask blur: 4, Version: v"),
        ({"mask_blur": 0}, "Denoising strength: 0.75, Mask blur: 0, Version: v"),
        ({"inpaint_area": "masked", "inpaint_padding": 32},
         "Denoising strength: 0.75, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Version: v"),
        ({"masked_content": "fill"}, "Denoising strength: 0.75, Mask blur: 4, Masked content: fill, Version: v"),
        ({"masked_content": "noise", "mask_blur": 8, "inpaint_area": "masked", "inpaint_padding": 0},
         "Denoising strength: 0.75, Mask blur: 8, Inpaint area: Only masked, Masked area padding: 0, "
         "Masked content: latent noise, Version: v"),
        ({"inpaint_area": "whole", "inpaint_padding": 64, "masked_content": "original"},
         "Denoising strength: 0.75, Mask blur: 4, Version: v"),  # A1111 writes neither for these
    ],
)
def test_inpaint_keys_as_a1111_writes_them(options, tail):
    req = GenerateRequest.from_fields(**INPAINT_BASE, **options)
    assert _tail(parameters_for(req, 1, "m", "0123456789", "v")) == tail


def test_img2img_writes_no_inpaint_keys():
    req = GenerateRequest.from_fields(**{**INPAINT_BASE, "mode": "img2img", "mask": None}, mask_blur=9, inpaint_area="masked")
    text = parameters_for(req, 1, "m", "0123456789", "v")
    assert _tail(text) == "Denoising strength: 0.75, Version: v"
    assert "mode" not in request_fields(text)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mask_blur": 0},
        {"mask_blur": 12, "inpaint_area": "masked", "inpaint_padding": 48},
        {"masked_content": "fill", "inpaint_area": "masked", "inpaint_padding": 0},
        {"masked_content": "noise", "mask_blur": 2},
    ],
)
def test_inpaint_png_round_trip(tmp_path, options):
    req = GenerateRequest.from_fields(**INPAINT_BASE, **options)
    text = parameters_for(req, 99, "m", "0123456789", "v")
    path = save_image(IMG, tmp_path / "in.png", text)
    fields = request_fields(read_parameters(path))
    assert fields["mode"] == "inpaint"
    for name in ("mask_blur", "inpaint_area", "masked_content", "strength", "width", "height"):
        assert fields[name] == req.get_field(name), name
    if req.inpaint.area == "masked":
        assert fields["inpaint_padding"] == req.inpaint.padding
    else:
        assert "inpaint_padding" not in fields  # not written for the whole picture: the caller keeps its own
    restored = GenerateRequest.from_fields(init_image=req.init_image, mask=req.mask).with_fields(**fields)
    for name in ("mode", "mask_blur", "inpaint_area", "masked_content", "inpaint_padding"):
        assert restored.get_field(name) == req.get_field(name), name


def test_reads_a1111_inpaint_texts():
    base = "p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.6"
    f = request_fields(base + ", Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, "
                       "Masked content: latent noise")  # fmt: skip
    assert (f["mode"], f["mask_blur"], f["inpaint_area"], f["inpaint_padding"], f["masked_content"]) == (
        "inpaint", 4, "masked", 32, "noise")  # fmt: skip
    # A1111 leaves Mask blur out at 0 and Masked content out for "original"
    f = request_fields(base + ", Inpaint area: Only masked, Masked area padding: 8")
    assert (f["mode"], f["mask_blur"], f["masked_content"]) == ("inpaint", 0, "original")
    f = request_fields(base + ", Mask blur: 6")
    assert (f["mode"], f["mask_blur"], f["inpaint_area"], f["masked_content"]) == ("inpaint", 6, "whole", "original")
    assert "inpaint_padding" not in f
    # A1111's fourth masked content, which we do not have: left out (the caller keeps its own)
    f = request_fields(base + ", Mask blur: 4, Masked content: latent nothing")
    assert f["mode"] == "inpaint" and "masked_content" not in f
    # a plain img2img text: no inpaint fields at all
    f = request_fields(base)
    assert not {"mode", "mask_blur", "inpaint_area", "masked_content", "inpaint_padding"} & set(f)


# ---------------------------------------------------------------- upscale keys

UP_IMG = np.zeros((24, 32, 3), np.uint8)
UP_BASE = dict(mode="upscale", init_image=UP_IMG, prompt="a cat", negative_prompt="blur", steps=20, seed=5)
SAMPLED = "Steps: 20, Sampler: Euler a, Schedule type: Normal, CFG scale: 7, Seed: 5, Size: 32x24, "


@pytest.mark.parametrize(
    "options,text",
    [
        ({"upscale_mode": "diffusion", "strength": 0.3},
         "a cat\nNegative prompt: blur\n" + SAMPLED + "Model hash: 0123456789, Model: m, Denoising strength: 0.3, "
         "Hires upscale: 2, Hires upscaler: Lanczos, Upscale mode: diffusion, Version: v"),
        ({"upscale_mode": "diffusion", "strength": 0.25, "upscaler": "/models/ESRGAN/4x-UltraSharp.pth", "scale": 1.5,
          "tile": 768, "tile_overlap": 96},
         "a cat\nNegative prompt: blur\n" + SAMPLED + "Model hash: 0123456789, Model: m, Denoising strength: 0.25, "
         "Hires upscale: 1.5, Hires upscaler: 4x-UltraSharp, Upscale mode: diffusion, Upscale tile: 768, "
         "Upscale overlap: 96, Version: v"),
        ({"upscale_mode": "latent", "strength": 1.0, "scale": 4},
         "a cat\nNegative prompt: blur\n" + SAMPLED + "Model hash: 0123456789, Model: m, Denoising strength: 1, "
         "Hires upscale: 4, Hires upscaler: Latent, Upscale mode: latent, Version: v"),
        # no sampler, no prompt: only how it was enlarged
        ({"upscale_mode": "resize", "scale": 3},
         "Size: 32x24, Hires upscale: 3, Hires upscaler: Lanczos, Upscale mode: resize, Version: v"),
        ({"upscale_mode": "model", "upscaler": "C:\\up\\RealESRGAN_x4plus.safetensors", "scale": 4, "tile": 256},
         "Size: 32x24, Hires upscale: 4, Hires upscaler: RealESRGAN_x4plus, Upscale mode: model, Upscale tile: 256, "
         "Version: v"),  # a Windows path's file name, on any system
        # a target size that is not the input times the factor: A1111's Hires resize instead of Hires upscale
        ({"upscale_mode": "resize", "width": 100, "height": 60},
         "Size: 32x24, Hires resize: 100x60, Hires upscaler: Lanczos, Upscale mode: resize, Version: v"),
    ],
)  # fmt: skip
def test_upscale_keys(options, text):
    req = GenerateRequest.from_fields(**UP_BASE, **options)
    assert parameters_for(req, 5, "m", "0123456789", "v") == text
    # as save_result passes it: width x height filled from the image (the output), same text
    w, h = req.upscale_size()
    assert parameters_for(req.replace(width=w, height=h), 5, "m", "0123456789", "v") == text


@pytest.mark.parametrize(
    "options",
    [
        {"upscale_mode": "diffusion", "strength": 0.3},
        {"upscale_mode": "diffusion", "strength": 0.45, "upscaler": "/m/4x-UltraSharp.pth", "scale": 4, "tile": 512,
         "tile_overlap": 48},
        {"upscale_mode": "latent", "strength": 1.0, "scale": 4},
        {"upscale_mode": "resize", "scale": 1.5},
        {"upscale_mode": "model", "upscaler": "/m/RealESRGAN_x4plus.pth", "scale": 2},
        {"upscale_mode": "resize", "width": 96, "height": 40},
    ],
)  # fmt: skip
def test_upscale_png_round_trip(tmp_path, options):
    req = GenerateRequest.from_fields(**UP_BASE, **options)
    w, h = req.upscale_size()
    out = np.zeros((h, w, 3), np.uint8)
    res = GenerateResult(images=[out], request=req, seeds=[5], model_name="m", model_hash="0123456789")
    (path,) = save_result(res, tmp_path, "v")
    f = request_fields(read_parameters(path))
    assert (f["mode"], f["upscale_mode"]) == ("upscale", req.upscale.method)
    sampled = req.upscale.method in ("diffusion", "latent")
    if req.width:
        assert (f["width"], f["height"]) == (req.width, req.height) and "scale" not in f
    else:
        assert f["scale"] == req.upscale.scale and "width" not in f and "height" not in f  # Size is the input's
    expect_upscaler = None if req.upscale.method in ("resize", "latent") else Path(req.upscale.upscaler or "").stem or None
    assert f["upscaler"] == expect_upscaler  # a name, never a path
    assert (f["tile"], f["tile_overlap"]) == (req.upscale.tile, req.upscale.tile_overlap)
    if sampled:
        assert (f["prompt"], f["negative_prompt"], f["strength"], f["seed"]) == ("a cat", "blur", req.strength, 5)
    else:
        assert f["prompt"] == "" and "strength" not in f and "seed" not in f
    restored = GenerateRequest.from_fields(init_image=UP_IMG).with_fields(**f)
    restored.validate()
    assert restored.upscale_size() == (w, h)


def test_a1111_hires_text_is_no_upscale():
    """A1111's hires fix (a txt2img run) has Hires keys but no Upscale mode: nothing of an upscale is restored."""
    f = request_fields(A1111_HIRES)
    assert not {"mode", "upscale_mode", "scale", "upscaler", "tile"} & set(f)
    assert (f["width"], f["height"]) == (512, 768)


def test_unknown_upscale_mode_restores_nothing_of_it():
    f = request_fields("p\nSteps: 20, Seed: 1, Size: 64x64, Hires upscale: 2, Upscale mode: sideways")
    assert not {"mode", "upscale_mode", "scale"} & set(f)


# ---------------------------------------------------------------- atomic writer


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, fp, *a, **k):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(EngineError, match="Cannot save image .*No space left on device"):
        save_image(IMG, tmp_path / "x.png", "text")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_existing_file_intact(tmp_path, monkeypatch):
    target = save_image(IMG, tmp_path / "x.png", "old\nSteps: 1, Seed: 1, CFG scale: 1")
    before = target.read_bytes()
    monkeypatch.setattr(
        Image.Image, "save", lambda self, fp, *a, **k: (_ for _ in ()).throw(ValueError("encoder error"))
    )
    with pytest.raises(EngineError):
        save_image(IMG, target, "new")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_save_uses_temp_then_rename(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst), Path(src).exists(), Path(dst).exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", spy)
    p = save_image(IMG, tmp_path / "y.png", "t")
    assert len(seen) == 1
    src, dst, src_existed, dst_existed = seen[0]
    assert src.parent == tmp_path and src.name.startswith(".y.png.") and src_existed and not dst_existed
    assert dst == p and not src.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["y.png"]


def test_save_no_overwrite(tmp_path):
    p = save_image(IMG, tmp_path / "z.png", "a")
    with pytest.raises(FileExistsError):
        save_image(IMG, p, "b", overwrite=False)
    assert read_parameters(p) == "a"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["z.png"]


def test_save_rejects_unknown_format_and_bad_arrays(tmp_path):
    with pytest.raises(RequestError):
        save_image(IMG, tmp_path / "x.bmp", "t")
    with pytest.raises(RequestError):
        save_image(IMG.astype(np.float32), tmp_path / "x.png", "t")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- file names


def test_next_paths_continue_numbering_and_never_overwrite(tmp_path):
    out = tmp_path / "new" / "folder"
    first = next_paths(out, 2, 100)
    assert out.is_dir()
    assert [p.name for p in first] == ["00000-100.png", "00001-101.png"]
    for name in ("00007-5.png", "00003-1.jpg", "notes.txt", "0012x.png"):
        (out / name).write_bytes(b"x")
    got = next_paths(out, 3, 9, stem_hint="a cat: <red>/blue?")
    assert [p.name for p in got] == [
        "00008-9-a cat_ _red__blue.png",
        "00009-10-a cat_ _red__blue.png",
        "00010-11-a cat_ _red__blue.png",
    ]
    assert not any(p.exists() for p in got)
    assert next_paths(out, 1, 1, ext="webp")[0].name == "00008-1.webp"


def test_save_result_writes_each_seed(tmp_path):
    (tmp_path / "00041-9.png").write_bytes(b"existing")
    req = GenerateRequest.from_fields(prompt="fox", seed=77, batch=2, sampler="DDIM", steps=10)  # width/height None
    imgs = [IMG, IMG[::-1].copy()]
    res = GenerateResult(images=imgs, request=req, seeds=[77, 78], model_name="tiny", model_hash="0011223344")
    paths = save_result(res, tmp_path, "LS 0.1")
    assert [p.name for p in paths] == ["00042-77.png", "00043-78.png"]
    assert (tmp_path / "00041-9.png").read_bytes() == b"existing"
    for p, seed, img in zip(paths, (77, 78), imgs, strict=True):
        f = request_fields(read_parameters(p))
        assert (f["seed"], f["width"], f["height"], f["sampler"], f["steps"]) == (seed, 24, 16, "DDIM", 10)
        assert parse_parameters(read_parameters(p))["params"]["Model hash"] == "0011223344"
        with Image.open(p) as im:
            np.testing.assert_array_equal(np.asarray(im), img)


# ---------------------------------------------------------------- model hash


def test_model_hash_matches_hashlib_and_is_cached(tmp_path, monkeypatch):
    metadata.clear_hash_cache()
    f = tmp_path / "model.safetensors"
    data = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB chunks plus a tail
    f.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()[:10]

    opened = []
    real_open = builtins.open

    def counting_open(file, *a, **k):
        opened.append(Path(file).name)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert model_hash(f) == expected
    assert opened == ["model.safetensors"]
    assert model_hash(str(f)) == expected
    assert opened == ["model.safetensors"]  # cached: not read again

    data2 = data[:-1] + bytes([data[-1] ^ 1])
    f.write_bytes(data2)
    os.utime(f, ns=(1, 1_000_000_000))  # a different mtime: the cache must not answer
    assert model_hash(f) == hashlib.sha256(data2).hexdigest()[:10]
    assert opened == ["model.safetensors", "model.safetensors"]


def test_model_hash_diffusers_folder_uses_unet(tmp_path):
    metadata.clear_hash_cache()
    root = tmp_path / "model"
    (root / "unet").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet-weights")
    (root / "unet" / "config.json").write_text("{}")
    (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"vae-weights")
    assert model_hash(root) == hashlib.sha256(b"unet-weights").hexdigest()[:10]
    # sharded U-Net: shards hashed in name order as one stream
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "unet" / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"B")
    (root / "unet" / "diffusion_pytorch_model-00001-of-00002.safetensors").write_bytes(b"A")
    assert model_hash(root) == hashlib.sha256(b"AB").hexdigest()[:10]


def test_model_hash_of_a_folder_is_cached_with_the_file_hashes(tmp_path, monkeypatch):
    from studio.core import filehash

    metadata.clear_hash_cache()
    root = tmp_path / "model"
    (root / "unet").mkdir(parents=True)
    shard = root / "unet" / "diffusion_pytorch_model.safetensors"
    shard.write_bytes(b"unet-weights")
    expected = hashlib.sha256(b"unet-weights").hexdigest()[:10]
    assert model_hash(root) == expected
    stored = json.loads(filehash.cache_file().read_text(encoding="utf-8"))[str(root.resolve())]
    assert stored["sha256"][:10] == expected and stored["files"][0][0] == str(shard.resolve())
    metadata.clear_hash_cache()  # only the in-memory copy: the disk cache answers
    monkeypatch.setattr(filehash, "_digest", lambda *a, **k: pytest.fail("hashed again"))
    assert model_hash(root) == expected
    monkeypatch.undo()
    shard.write_bytes(b"other-weights")
    os.utime(shard, ns=(1, 1_000_000_000))  # a new version of a shard: hashed again
    assert model_hash(root) == hashlib.sha256(b"other-weights").hexdigest()[:10]


def test_model_hash_missing(tmp_path):
    with pytest.raises(ModelError, match="Cannot hash model"):
        model_hash(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no weight files"):
        model_hash(tmp_path / "empty")


def test_no_torch_or_qt_imported():
    import subprocess
    import sys

    code = (
        "import sys, studio.core.metadata, studio.core.output\n"
        "bad = [m for m in ('torch', 'diffusers', 'PySide6') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_every_sampler_and_schedule_name_is_restored():
    from studio.core.samplers import SAMPLER_NAMES, SCHEDULE_NAMES

    for name in SAMPLER_NAMES:
        text = f"x\nSteps: 20, Sampler: {name}, Schedule type: Normal, CFG scale: 7"
        assert metadata.request_fields(text)["sampler"] == name
    for sched in SCHEDULE_NAMES:
        text = f"x\nSteps: 20, Sampler: Euler, Schedule type: {sched}, CFG scale: 7"
        assert metadata.request_fields(text)["schedule"] == sched
    assert "sampler" not in metadata.request_fields("x\nSteps: 20, Sampler: Restart, CFG scale: 7")
    assert metadata.request_fields("x\nSteps: 20, Sampler: k_dpmpp_2m, CFG scale: 7")["sampler"] == "DPM++ 2M"


# ---------------------------------------------------------------- hostile texts (issue 24)


def _within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread: a hang fails the test after `seconds` instead of freezing the run."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} took over {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("word", ["a" * 1_000_000, "ab cd-" * 170_000, 'k: "\\", ' * 120_000])
def test_a_one_megabyte_prompt_line_parses_in_linear_time(word):
    # Each was quadratic: the key pattern was retried from every position of a run without a colon
    # (200k characters: 14 s; 1 MB: 335 s).
    fields = _within(60, request_fields, word)
    assert fields["prompt"] == word or "prompt" in fields


def test_param_pairs_is_a1111s_regex():
    lines = [
        "Steps: 20, Sampler: Euler a, CFG scale: 7",
        '  Model: "my model, v2: final", Size: 512x512, x: , Lora hashes: "a: 1, b: 2"',
        "-a: 1, - b: 2,  \tc d: 3, e:4,f/g-h: 5, :x, a:, ab:, \"q\": 1, ab:\"x\"y, ab:\"x\\\"\",",
        "word word word, a-b c: d: e, é ü: ñ, 日本: 語, _x: 1,, ,: ,",
        'k: "\\", k: "\\", k: v',
        "",
        "no pairs at all here",
    ]
    for line in lines:
        assert metadata.param_pairs(line) == metadata.RE_PARAM.findall(line), line


@pytest.mark.parametrize(
    "prompt",
    [
        "x" * 10_000,
        "e\u0301\u0301\u0301 combining " * 50,
        "\u05e9\u05dc\u05d5\u05dd \u202e right to left \u202c and \u0627\u0644\u0633\u0644\u0627\u0645",
        "a\x00b\x00c",
        "emoji \U0001f600 \ufeff zero\u200bwidth",
    ],
)
def test_long_and_odd_unicode_prompts_restore(tmp_path, prompt):
    text = f"{prompt}\nNegative prompt: {prompt[:50]}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
    info = PngInfo()
    info.add_itxt("parameters", text)
    path = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    fields = request_fields(read_parameters(path))
    assert fields["prompt"] == prompt
    assert fields["steps"] == 20
    GenerateRequest.from_fields(**fields).validate()


def test_a_lone_surrogate_in_a_json_value_is_kept_as_text():
    fields = request_fields('x\nSteps: 20, Sampler: Euler a, CFG scale: 7, VAE: "\\ud800 vae, odd"')
    assert fields["vae"] == "\ud800 vae, odd"
    GenerateRequest.from_fields(**fields).validate()
