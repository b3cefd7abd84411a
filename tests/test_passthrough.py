"""The latent upscaler's starting point: a decoder that interpolates, a UNet that copies its condition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studio.training.evaluate_upscaler import upscale_with_pipeline
from studio.training.models import VaeConfig, build_vae
from studio.training.passthrough import (
    BILINEAR_3X3,
    FITTED_KERNELS,
    fit_upsampling_kernels,
    init_decoder_passthrough,
    init_unet_copy,
    upsample_like_decoder,
)
from studio.training.upscaler_models import (
    PIPELINE_SCALING_FACTOR,
    UPSCALER_PRESETS,
    UpUnetConfig,
    build_upscaler_unet,
    decode_structured,
    new_upscaler_vae,
    upscale_pipeline,
)


def _reference_x4(lo: torch.Tensor) -> torch.Tensor:
    """Nearest x2 then the [1/4, 1/2, 1/4] kernel (zero padding), twice: what the decoder starts as."""
    k = BILINEAR_3X3[None, None].repeat(3, 1, 1, 1)
    x = lo
    for _ in range(2):
        x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), k, padding=1, groups=3)
    return x


def test_decoder_starts_as_interpolation_of_channels_0_to_2():
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(block_out_channels=(16, 32, 32), norm_num_groups=4))
    init_decoder_passthrough(vae)
    lo = torch.rand(2, 3, 16, 16) * 2 - 1
    detail = torch.randn(2, 1, 16, 16) * 3  # ignored at the start
    with torch.no_grad():
        y = vae.decode(torch.cat([lo, detail], 1)).sample
    assert y.shape == (2, 3, 64, 64)
    ref = _reference_x4(lo)
    assert (y - ref).abs().max().item() < 2e-3
    # and away from the border (zero padding) it is plain bilinear interpolation: a ramp stays a ramp
    ramp = torch.linspace(-0.9, 0.9, 16).repeat(16, 1)[None, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = vae.decode(torch.cat([ramp, torch.zeros(1, 1, 16, 16)], 1)).sample[0, 0, 8:-8, 8:-8]
    steps = out[:, 1:] - out[:, :-1]
    assert steps.std().item() < 1e-3 and steps.mean().item() == pytest.approx(1.8 / 15 / 4, rel=0.02)


def test_decoder_starts_as_the_fitted_upsampling_when_given_kernels():
    torch.manual_seed(0)
    vae = build_vae(VaeConfig(block_out_channels=(16, 32, 32), norm_num_groups=4))
    init_decoder_passthrough(vae, kernels=FITTED_KERNELS)
    lo = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        y = vae.decode(torch.cat([lo, torch.randn(2, 1, 16, 16)], 1)).sample
    assert (y - upsample_like_decoder(lo, FITTED_KERNELS)).abs().max().item() < 2e-3
    assert (y - _reference_x4(lo)).abs().max().item() > 0.05  # not bilinear
    flat = torch.full((1, 3, 16, 16), 0.6)
    with torch.no_grad():
        out = vae.decode(torch.cat([flat, torch.zeros(1, 1, 16, 16)], 1)).sample[..., 8:-8, 8:-8]
    assert (out - 0.6).abs().max().item() < 2e-3  # the kernels sum to 1: a flat colour stays itself
    with pytest.raises(ValueError, match="2 upsamplings"):
        init_decoder_passthrough(vae, kernels=FITTED_KERNELS[:2])


def test_upsampling_kernels_are_fitted_by_least_squares():
    """From bilinear, the fit finds kernels that map low to high as well as the ones that made high."""
    torch.manual_seed(0)
    truth = [FITTED_KERNELS[0], BILINEAR_3X3, torch.tensor([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])]
    low = torch.rand(4, 3, 12, 12) * 2 - 1
    with torch.no_grad():
        high = upsample_like_decoder(low, truth)
    fitted = fit_upsampling_kernels(low, high, iters=300, margin=4, lr=1e-2)
    assert all(k.sum().item() == pytest.approx(1.0, abs=1e-5) for k in fitted)

    def err(ks):
        with torch.no_grad():
            return (upsample_like_decoder(low, ks) - high)[..., 4:-4, 4:-4].pow(2).mean().item()

    start = torch.zeros(3, 3)
    start[1, 1] = 1.0
    assert err(fitted) < err([start, BILINEAR_3X3, BILINEAR_3X3]) / 20


def test_decoder_init_refuses_a_layout_it_cannot_pass_through():
    with pytest.raises(ValueError, match="groups of 4"):
        init_decoder_passthrough(build_vae(VaeConfig(block_out_channels=(16, 32, 32), norm_num_groups=8)))


def test_unet_starts_by_copying_its_condition():
    torch.manual_seed(0)
    unet = build_upscaler_unet(UpUnetConfig(block_out_channels=(16, 16, 32), norm_num_groups=4), 8)
    init_unet_copy(unet, [4, 5, 6], [0, 1, 2])
    x = torch.cat([torch.randn(3, 4, 16, 16), torch.rand(3, 3, 16, 16) * 2 - 1], 1)
    with torch.no_grad():
        out = unet(x, torch.tensor([999, 500, 0]), encoder_hidden_states=torch.randn(3, 77, 8),
                   class_labels=torch.tensor([0, 20, 350])).sample
    assert (out[:, :3] - x[:, 4:]).abs().max().item() < 1e-3
    assert out[:, 3].abs().max().item() == 0.0
    assert not any("CrossAttn" in b for b in unet.config.down_block_types + unet.config.up_block_types)


def test_untrained_pipeline_is_its_decoder_on_the_clean_condition():
    """Structured latent end to end through diffusers' pipeline: DDIM on clean-latent predictions lands on
    the UNet's output, level 0 adds next to no noise, and the decoder sees the low-res picture."""
    from studio.training.models import build_text_encoder, load_tokenizer
    from studio.training.sr_data import heldout_pairs, psnr, to_pm1
    from studio.training.train_vae import to_uint8

    torch.manual_seed(0)
    preset = UPSCALER_PRESETS["tiny"]
    vae = new_upscaler_vae(preset.vae).eval()
    unet = build_upscaler_unet(preset.unet, preset.text.hidden_size)
    init_unet_copy(unet, [4, 5, 6], [0, 1, 2])
    pipe = upscale_pipeline(vae, build_text_encoder(preset.text).eval(), load_tokenizer(), unet.eval())
    assert pipe.vae.config.scaling_factor == PIPELINE_SCALING_FACTOR
    hr, lr, _ = heldout_pairs(1)[0]
    out = upscale_with_pipeline(pipe, lr, "a red circle", steps=3, noise_level=0)
    with torch.no_grad():
        direct = to_uint8(decode_structured(vae, torch.cat([to_pm1([lr]), torch.zeros(1, 1, 64, 64)], 1)))[0]
    assert np.abs(out.astype(int) - direct.astype(int)).max() <= 1
    assert psnr(hr, out) > 28  # bilinear-like already
    noisy = upscale_with_pipeline(pipe, lr, steps=3, noise_level=150)
    assert psnr(out, noisy) < 40  # the level does reach the condition


def test_x4_settings_file(tmp_path):
    from studio.engine.upscale import X4_NOISE_LEVEL, reads_text, x4_noise_level

    assert x4_noise_level(tmp_path) == X4_NOISE_LEVEL
    (tmp_path / "studio.json").write_text(json.dumps({"noise_level": 0}))
    assert x4_noise_level(tmp_path) == 0
    for bad in ("{", json.dumps({"noise_level": 900}), json.dumps({"noise_level": "low"}), "[]"):
        (tmp_path / "studio.json").write_text(bad)
        assert x4_noise_level(tmp_path) == X4_NOISE_LEVEL
    unet = build_upscaler_unet(UpUnetConfig(block_out_channels=(16, 16, 32), norm_num_groups=4), 8)
    assert not reads_text(unet.config)
    text = build_upscaler_unet(UpUnetConfig(block_out_channels=(16, 16, 32), norm_num_groups=4,
                                            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                                            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                                            mid_block_type="UNetMidBlock2DCrossAttn"), 8)
    assert reads_text(text.config)


def test_encoder_starts_as_a_box_average_and_round_trips():
    torch.manual_seed(0)
    vae = new_upscaler_vae(UPSCALER_PRESETS["tiny"].vae).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        m = vae.encode(x).latent_dist.mean * PIPELINE_SCALING_FACTOR
        back = vae.decode(vae.encode(x).latent_dist.mode()).sample
    assert (m[:, :3] - F.avg_pool2d(x, 4)).abs().max().item() < 2e-3
    assert (back - _reference_x4(F.avg_pool2d(x, 4))).abs().max().item() < 5e-3


@pytest.mark.parametrize(("sampler", "floor"), [("Euler a", 33), ("DDIM", 33), ("PLMS", 25)])
def test_shipped_latent_upscaler_runs_in_the_studio_with_any_sampler(sampler, floor):
    """It predicts the clean latent, which Euler a and PLMS refuse: the engine hands them the implied noise."""
    from pathlib import Path

    from studio.core import GenerateRequest
    from studio.engine.engine import Engine
    from studio.training.sr_data import heldout_pairs, psnr

    folder = Path("models/latent-upscaler-x4")
    if not (folder / "studio.json").exists():
        pytest.skip("no shipped structured-latent upscaler")
    hr, lr, cap = heldout_pairs(1)[0]
    out = Engine().generate(GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(folder), init_image=lr,
                                            scale=4.0, prompt=cap, steps=6, sampler=sampler, seed=1)).images[0]
    assert out.shape == hr.shape
    assert psnr(hr, out) > floor  # PLMS's multistep lands less exactly on the prediction (28.6 dB here)


def test_the_engine_mirrors_a_margin_so_the_decoders_zero_padding_spares_the_border(tmp_path, monkeypatch):
    """The untrained built-in layout interpolates; its decoder pads with zeros, which greys the outermost
    output pixels. The engine's mirrored margin spares them and leaves the rest as it was."""
    from studio.core import GenerateRequest
    from studio.engine import upscale as up
    from studio.engine.engine import Engine
    from studio.training.models import build_text_encoder, load_tokenizer
    from studio.training.sr_data import bicubic, psnr

    torch.manual_seed(0)
    preset = UPSCALER_PRESETS["tiny"]
    unet = build_upscaler_unet(preset.unet, preset.text.hidden_size)
    init_unet_copy(unet, [4, 5, 6], [0, 1, 2])
    pipe = upscale_pipeline(new_upscaler_vae(preset.vae).eval(), build_text_encoder(preset.text).eval(), load_tokenizer(),
                     unet.eval())
    folder = tmp_path / "x4"
    pipe.save_pretrained(folder)
    (folder / "studio.json").write_text(json.dumps({"noise_level": 0}))
    # a bright, smooth picture (the domain's grey background would hide the greying: grey is what zeros are)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    hr = np.stack([220 - 60 * xx, 60 + 150 * yy, 40 + 40 * xx * yy], -1).round().astype(np.uint8)
    lr = bicubic(hr, 64)

    def run() -> np.ndarray:
        req = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(folder), init_image=lr, scale=4.0,
                              steps=2, sampler="DDIM", seed=1)
        return Engine().generate(req).images[0]

    with_margin = run()
    monkeypatch.setattr(up, "EDGE_MARGIN", 0)
    without = run()
    assert with_margin.shape == without.shape == hr.shape
    border = np.ones(hr.shape[:2], bool)
    border[4:-4, 4:-4] = False
    inner = (slice(16, -16), slice(16, -16))
    # measured: the outer 4 px 49.4 dB against 23.6, the whole picture 49.5 against 35.5, the inside the same
    assert psnr(hr[border], with_margin[border]) > psnr(hr[border], without[border]) + 10
    assert psnr(hr, with_margin) > psnr(hr, without) + 5
    assert psnr(hr[inner], with_margin[inner]) > psnr(hr[inner], without[inner]) - 0.2


def test_shipped_latent_upscaler_beats_bicubic_in_the_studio():
    """The issue's bar, on the benchmark's 16 held-out scenes (4 alone are too few: SSIM differs by scene)."""
    from pathlib import Path

    from studio.core import GenerateRequest
    from studio.engine.engine import Engine
    from studio.training.sr_data import bicubic, heldout_pairs, psnr, ssim

    folder = Path("models/latent-upscaler-x4")
    if not (folder / "studio.json").exists():
        pytest.skip("no shipped structured-latent upscaler")
    engine = Engine()
    ours, bic = [], []
    for i, (hr, lr, cap) in enumerate(heldout_pairs(16)):
        out = engine.generate(GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(folder), init_image=lr,
                                              scale=4.0, prompt=cap, steps=10, sampler="DPM++ 2M", seed=i)).images[0]
        ours.append((psnr(hr, out), ssim(hr, out)))
        b = bicubic(lr, hr.shape[0])
        bic.append((psnr(hr, b), ssim(hr, b)))
    (p_ours, s_ours), (p_bic, s_bic) = np.mean(ours, axis=0), np.mean(bic, axis=0)
    assert p_ours > p_bic and s_ours > s_bic, (p_ours, s_ours, p_bic, s_bic)
