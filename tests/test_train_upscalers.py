"""The built-in upscalers' training code: a few steps of each on tiny configs, resume, export, load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from studio.training.sr_data import SRPairs, bicubic, heldout_pairs, psnr, ssim


def test_pairs_are_pure_functions_of_the_index():
    a, b = SRPairs(3), SRPairs(3)
    hr, lr, cap = a.pair(5)
    hr2, lr2, cap2 = b.pair(5)
    assert hr.shape == (256, 256, 3) and lr.shape == (64, 64, 3) and hr.dtype == np.uint8
    assert np.array_equal(hr, hr2) and np.array_equal(lr, lr2) and cap == cap2
    assert np.array_equal(lr, bicubic(hr, 64))


def test_metrics():
    hr, lr, _ = heldout_pairs(1)[0]
    assert psnr(hr, hr) > 90 and ssim(hr, hr) == pytest.approx(1.0)
    up = bicubic(lr, 256)
    assert 20 < psnr(hr, up) < 60 and 0.5 < ssim(hr, up) < 1.0
    noisy = np.clip(hr.astype(int) + np.random.default_rng(0).integers(-40, 40, hr.shape), 0, 255).astype(np.uint8)
    assert ssim(hr, noisy) < ssim(hr, up)


def test_swinir_trains_resumes_and_exports_for_spandrel(tmp_path):
    from studio.training.train_swinir import (
        SWINIR_PRESETS,
        build_swinir,
        export_swinir,
        load_swinir_file,
        train_swinir,
        upscale_uint8,
    )

    preset = SWINIR_PRESETS["tiny"]
    run = tmp_path / "swinir"
    r = train_swinir(run, preset, eval_images=1, progress=False)
    assert r["steps"] == 4 and np.isfinite(r["psnr"])
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and ck["done"]
    # resume: more steps continue from the checkpoint
    preset.steps = 6
    ck["done"] = False
    torch.save(ck, run / "checkpoint.pt")
    r2 = train_swinir(run, preset, eval_images=0, progress=False)
    assert r2["steps"] == 6
    out = export_swinir(run, tmp_path / "x4.safetensors", fp32=True)
    desc = load_swinir_file(out)
    assert desc.architecture.id == "SwinIR" and desc.scale == 4
    half = load_swinir_file(export_swinir(run, tmp_path / "x4-fp16.safetensors"))  # the shipped default
    assert half.architecture.id == "SwinIR" and half.scale == 4
    assert (tmp_path / "x4-fp16.safetensors").stat().st_size < 0.7 * out.stat().st_size
    # spandrel's model computes what ours does
    ours = build_swinir(torch.load(run / "checkpoint.pt", weights_only=True)["preset"]["model"])
    ours.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["ema"]["shadow"]["model"])
    ours.eval()
    lr = heldout_pairs(1)[0][1][:24, :24]
    x = torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert torch.allclose(desc.model.eval()(x), ours(x), atol=1e-5)
        assert torch.allclose(half.model.eval()(x), ours(x), atol=2e-2)
    assert upscale_uint8(ours, lr).shape == (96, 96, 3)


def test_shipped_swinir_is_spandrel_swinir_x4():
    from pathlib import Path

    from studio.training.train_swinir import load_swinir_file

    path = Path("models/swinir-x4/swinir-x4.safetensors")
    if not path.exists():
        pytest.skip("no shipped SwinIR yet")
    desc = load_swinir_file(path)
    assert desc.architecture.id == "SwinIR" and desc.scale == 4


def test_latent_upscaler_trains_resumes_exports_and_loads_offline(tmp_path):
    from studio.training.evaluate_upscaler import upscale_with_pipeline
    from studio.training.export_upscaler import export_upscaler, load_upscale_pipeline
    from studio.training.train_upscaler import train_upscaler_unet, train_upscaler_vae
    from studio.training.upscaler_models import PIPELINE_SCALING_FACTOR, UPSCALER_PRESETS

    preset = copy.deepcopy(UPSCALER_PRESETS["tiny"])
    run = tmp_path / "up"
    rv = train_upscaler_vae(run, preset, eval_images=1, progress=False)
    assert rv["steps"] == 3
    ru = train_upscaler_unet(run, preset, eval_images=1, progress=False)
    assert ru["steps"] == 3 and np.isfinite(ru["heldout"]["kept"]["psnr"])
    ck = torch.load(run / "unet" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and ck["done"]
    preset.unet_steps = 5
    ck["done"] = False
    torch.save(ck, run / "unet" / "checkpoint.pt")
    assert train_upscaler_unet(run, preset, eval_images=0, progress=False)["steps"] == 5

    folder = export_upscaler(run, tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionUpscalePipeline" and index["max_noise_level"] == 350
    pipe = load_upscale_pipeline(folder)
    assert pipe.unet.config.in_channels == 7 and pipe.unet.config.num_class_embeds == 1000
    assert pipe.vae.config.scaling_factor == PIPELINE_SCALING_FACTOR
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    lr = heldout_pairs(1)[0][1][:16, :16]
    out = upscale_with_pipeline(pipe, lr, "a red circle", steps=1, noise_level=20)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_shipped_latent_upscaler_loads_offline():
    from pathlib import Path

    from studio.training.evaluate_upscaler import upscale_with_pipeline
    from studio.training.export_upscaler import load_upscale_pipeline

    folder = Path("models/latent-upscaler-x4")
    if not (folder / "model_index.json").exists():
        pytest.skip("no shipped latent upscaler yet")
    pipe = load_upscale_pipeline(folder)
    out = upscale_with_pipeline(pipe, heldout_pairs(1)[0][1][:16, :16], steps=1)
    assert out.shape == (64, 64, 3)


def test_cli_has_the_upscaler_commands():
    import argparse

    from studio.training.cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    for cmd in ("train-swinir", "export-swinir", "train-latent-upscaler", "export-latent-upscaler"):
        args = parser.parse_args([cmd])
        assert callable(args.func)
