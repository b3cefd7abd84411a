"""A1111's variation seeds on the tiny model: strength 0 and 1, the resized seed, batches, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core import GenerateRequest, RequestError
from studio.core.metadata import parameters_for, request_fields
from studio.core.variation import image_seeds

SIZE = 32  # px: 8x8 latents on the tiny model (its VAE scales 4x)


def req(model: str, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=model, steps=3, seed=1234, width=SIZE, height=SIZE, cfg=5.0,
                sampler="DDIM")  # fmt: skip
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def pixels(engine, r: GenerateRequest) -> list[np.ndarray]:
    return engine.generate(r).images


def a1111_noise(seed, subseed, strength, shape, resize=None):
    """A1111's ImageRNG.first with the CPU source, transcribed (modules/rng.py): the global torch generator."""

    def randn(s, sh):
        torch.manual_seed(s)
        return torch.randn(sh)

    def slerp(val, low, high):
        low_norm = low / torch.norm(low, dim=1, keepdim=True)
        high_norm = high / torch.norm(high, dim=1, keepdim=True)
        dot = (low_norm * high_norm).sum(1)
        if dot.mean() > 0.9995:
            return low * val + high * (1 - val)
        omega = torch.acos(dot)
        so = torch.sin(omega)
        return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high

    noise_shape = shape if resize is None else (shape[0], resize[1] // 8, resize[0] // 8)
    noise = randn(seed, noise_shape)
    if strength:
        noise = slerp(strength, noise, randn(subseed, noise_shape))
    if noise_shape != shape:
        x = randn(seed, shape)
        dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = (0 if dx < 0 else dx), (0 if dy < 0 else dy)
        dx, dy = max(-dx, 0), max(-dy, 0)
        x[:, ty : ty + h, tx : tx + w] = noise[:, dy : dy + h, dx : dx + w]
        noise = x
    return noise


@pytest.mark.parametrize("strength, resize", [(0.3, None), (1.0, None), (0.0, (384, 640)), (0.6, (768, 448))])
def test_first_noise_is_a1111s(strength, resize):
    from studio.engine.variation import first_noise

    shape = (4, 64, 64)  # 512x512 on SD
    r = GenerateRequest(seed=77, subseed=99, subseed_strength=strength, seed_resize_from_w=(resize or (0, 0))[0],
                        seed_resize_from_h=(resize or (0, 0))[1])  # fmt: skip
    ours = first_noise(r, [torch.Generator("cpu").manual_seed(77)], [77], [99], shape, torch.float32, 8)[0]
    assert torch.equal(ours, a1111_noise(77, 99, strength, shape, resize))


def test_strength_zero_is_the_plain_seed(engine, tiny_model):
    plain = pixels(engine, req(tiny_model, sampler="Euler a"))
    assert np.array_equal(pixels(engine, req(tiny_model, sampler="Euler a", subseed=5, subseed_strength=0.0))[0], plain[0])
    # A "resize" from the run's own size takes the variation path and must still draw what a plain run draws,
    # and leave the generator where a plain run leaves it (the ancestral sampler's later noise).
    same = req(tiny_model, sampler="Euler a", seed_resize_from_w=SIZE, seed_resize_from_h=SIZE)
    assert np.array_equal(pixels(engine, same)[0], plain[0])


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_strength_one_is_the_variation_seed(engine, tiny_model, sampler):
    varied = pixels(engine, req(tiny_model, sampler=sampler, subseed=4321, subseed_strength=1.0))[0]
    assert np.array_equal(varied, pixels(engine, req(tiny_model, sampler=sampler, seed=4321))[0])
    half = pixels(engine, req(tiny_model, sampler=sampler, subseed=4321, subseed_strength=0.5))[0]
    assert not np.array_equal(half, varied)
    assert not np.array_equal(half, pixels(engine, req(tiny_model, sampler=sampler))[0])


def test_resized_seed_keeps_the_centre(engine, tiny_model):
    """A seed resized from 32x32 into a 48x48 run: the centre 8x8 latent cells are the 32x32 run's noise."""
    from studio.engine.variation import first_noise

    r = GenerateRequest(seed=1234, width=48, height=48, seed_resize_from_w=32, seed_resize_from_h=32)
    noise = first_noise(r, [torch.Generator("cpu").manual_seed(1234)], [1234], [], (4, 12, 12), torch.float32, 4)[0]
    small = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(1234))[0]
    assert torch.equal(noise[:, 2:10, 2:10], small)
    out = engine.generate(req(tiny_model, width=48, height=48, seed_resize_from_w=32, seed_resize_from_h=32))
    assert out.images[0].shape == (48, 48, 3)
    assert not np.array_equal(out.images[0], pixels(engine, req(tiny_model, width=48, height=48))[0])


def test_batch_varies_the_variation_seed(engine, tiny_model, tmp_path):
    from studio.core.metadata import read_parameters
    from studio.core.output import save_result

    result = engine.generate(req(tiny_model, batch=2, subseed=50, subseed_strength=0.4))
    assert result.seeds == [1234, 1234]  # A1111: every image of a variation batch uses the seed itself
    second = pixels(engine, req(tiny_model, subseed=51, subseed_strength=0.4))[0]
    assert np.array_equal(result.images[1], second)
    paths = save_result(result, tmp_path, "test")
    texts = [read_parameters(p) or "" for p in paths]
    assert "Seed: 1234, Size: 32x32" in texts[0] and "Variation seed: 50, Variation seed strength: 0.4" in texts[0]
    assert "Variation seed: 51, Variation seed strength: 0.4" in texts[1]


def test_random_variation_seed_is_reported(engine, tiny_model):
    result = engine.generate(req(tiny_model, subseed_strength=0.2))
    assert result.request.subseed is not None
    again = pixels(engine, result.request)
    assert np.array_equal(again[0], result.images[0])


def test_other_modes_say_so(engine, tiny_model):
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    result = engine.generate(req(tiny_model, mode="img2img", init_image=image, subseed=3, subseed_strength=0.5))
    assert result.request.subseed_strength == 0 and any("text to image only" in n for n in result.notes)


def test_metadata_round_trip():
    r = GenerateRequest(prompt="a cat", seed=7, subseed=123, subseed_strength=0.3, seed_resize_from_w=512,
                        seed_resize_from_h=768, width=512, height=512)  # fmt: skip
    text = parameters_for(r, 7, "m", "abc", "v1", index=2)
    assert ("Seed: 7, Size: 512x512, Model hash: abc, Model: m, Variation seed: 125, Variation seed strength: 0.3, "
            "Seed resize from: 512x768, Version: v1") in text  # fmt: skip
    back = request_fields(text)
    assert (back["subseed"], back["subseed_strength"], back["seed_resize_from_w"], back["seed_resize_from_h"]) == (
        125, 0.3, 512, 768)
    assert "Variation" not in parameters_for(r.replace(subseed_strength=0.0, seed_resize_from_w=0), 7, "m", "", "v")


def test_a1111_text():
    text = ("a house\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, "
            "Seed: 2971531853, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Variation seed: "
            "1191418138, Variation seed strength: 0.25, Seed resize from: 640x384, RNG: CPU, Version: v1.10.1")
    found = request_fields(text)
    assert found["subseed"] == 1191418138 and found["subseed_strength"] == 0.25
    assert (found["seed_resize_from_w"], found["seed_resize_from_h"]) == (640, 384)
    from studio.session.params import Params

    plain = request_fields("a house\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    assert "subseed_strength" not in plain
    panel = Params(subseed=5, subseed_strength=0.4, seed_resize_from_w=512, seed_resize_from_h=512)
    restored = panel.with_fields(plain)  # the image used no variation: the panel's is reset to reproduce it
    assert (restored.subseed_strength, restored.seed_resize_from_w) == (0.0, 0)
    assert panel.with_fields(found).subseed == 1191418138
    refused: list = []
    bad = request_fields("x\nSteps: 20, Seed: 1, Variation seed: 5, Variation seed strength: 3", refused)
    assert "subseed_strength" not in bad and bad["subseed"] == 5
    assert [r.key for r in refused] == ["Variation seed strength"]


def test_seeds_and_validation():
    assert image_seeds(10, 3, 20, 0.0) == ([10, 11, 12], [])
    assert image_seeds(10, 3, 20, 0.5) == ([10, 10, 10], [20, 21, 22])
    with pytest.raises(RequestError, match="Variation seed strength"):
        GenerateRequest(subseed_strength=1.5).validate()
    with pytest.raises(RequestError, match="Resize seed from width"):
        GenerateRequest(seed_resize_from_w=4).validate()


def test_cli_size_option_is_one_line(capsys):
    from studio.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "x", "--seed-resize-from", "512by512"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "WIDTHxHEIGHT" in err
