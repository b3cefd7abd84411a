"""Tiny decoders (TAESD and the built-in models' own): the original key layout loads into diffusers'
AutoencoderTiny, the live preview uses one when present (the linear factors when not), the final decode option."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core import GenerateRequest
from studio.engine import steps as steps_mod
from studio.engine import tinydecoder
from studio.engine.preview import latent_to_rgb

SIZE = 32  # the tiny test pipeline's VAE downsamples 2x: 16x16 latents


# -- madebyollin's original TAESD decoder, written here from its published definition (taesd.py), so the key
# mapping is checked against the real layout, not against the studio's own idea of it


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def original_decoder(latent_channels=4, width=64, stages=(3, 3, 3, 1), seed=0) -> nn.Sequential:
    """TAESD's Decoder (stages (3, 3, 3, 1), width 64 is the published one), random weights; output in [0, 1]."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Clamp(), conv(latent_channels, width), nn.ReLU()]
    for i, n in enumerate(stages):
        layers += [Block(width, width) for _ in range(n)]
        if i < len(stages) - 1:
            layers += [nn.Upsample(scale_factor=2), conv(width, width, bias=False)]
    layers.append(conv(width, 3))
    dec = nn.Sequential(*layers).eval()
    with torch.no_grad():  # larger random weights than the default init, so a wrong mapping shows
        for p in dec.parameters():
            p.mul_(1.5)
    return dec


def save_original(dec: nn.Module, path: Path) -> Path:
    sd = {k: v.contiguous() for k, v in dec.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_original_taesd_layout_loads_into_autoencoder_tiny(tmp_path, suffix):
    from diffusers import AutoencoderTiny

    ref = original_decoder()
    f = save_original(ref, tmp_path / f"taesd_decoder{suffix}")
    assert "1.weight" in ref.state_dict() and "3.conv.0.weight" in ref.state_dict() and "7.bias" not in ref.state_dict()
    module = tinydecoder.load_module(f)
    assert isinstance(module, AutoencoderTiny)
    # the published TAESD architecture, read from the keys alone
    default = AutoencoderTiny()
    assert tuple(module.config.num_decoder_blocks) == tuple(default.config.num_decoder_blocks) == (3, 3, 3, 1)
    assert tuple(module.config.decoder_block_out_channels) == (64, 64, 64, 64)
    # a stock AutoencoderTiny given the same weights by diffusers' own names decodes identically
    default.decoder.load_state_dict(module.decoder.state_dict())
    x = torch.randn(2, 4, 8, 8) * 2
    with torch.no_grad():
        want = ref(x) * 2 - 1  # the original decodes to [0, 1]; diffusers to [-1, 1]
        got = module.decoder(x)
        assert got.shape == (2, 3, 64, 64)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(default.decoder(x), got)


def test_other_layouts_and_bad_files(tmp_path):
    from studio.core.errors import ModelError

    # a whole TAESD file (encoder + decoder), 16 latent channels as taesd3 / taef1
    ref = original_decoder(latent_channels=16, width=8, stages=(1, 1, 1, 1))
    sd = {f"decoder.{k}": v for k, v in ref.state_dict().items()}
    sd["encoder.1.weight"] = torch.zeros(8, 3, 3, 3)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "taesd3.safetensors"))
    m = tinydecoder.load_module(tmp_path / "taesd3.safetensors")
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        assert torch.allclose(m.decoder(x), ref(x) * 2 - 1, atol=1e-5)
    # A1111's older approximation network, a U-Net's weights, an empty file: one line each, never a crash
    save_file({"conv1.weight": torch.zeros(8, 4, 3, 3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="not a TAESD decoder"):
        tinydecoder.load_module(tmp_path / "model.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        tinydecoder.load_module(tmp_path / "empty.safetensors")


def test_found_in_comfyui_and_a1111_folders_by_family(tmp_path):
    models = tmp_path / "models"
    ckpt = models / "checkpoints" / "sd15.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert tinydecoder.find(ckpt, "sd") is None
    save_original(original_decoder(width=8, stages=(1, 1)), models / "vae_approx" / "taesdxl_decoder.safetensors")
    assert tinydecoder.find(ckpt, "sd") is None  # an SDXL decoder is not an SD 1.x one
    assert tinydecoder.find(ckpt, "sdxl") == models / "vae_approx" / "taesdxl_decoder.safetensors"
    a1111 = tmp_path / "webui" / "models"
    (a1111 / "Stable-diffusion").mkdir(parents=True)
    save_original(original_decoder(width=8, stages=(1, 1)), a1111 / "VAE-approx" / "taesd_decoder.pth")
    assert tinydecoder.find(a1111 / "Stable-diffusion" / "x.ckpt", "sd") == a1111 / "VAE-approx" / "taesd_decoder.pth"
    # the model's own decoder comes first
    own = tmp_path / "mine"
    save_original(original_decoder(width=8, stages=(1, 1)), own / tinydecoder.OWN_FILE)
    assert tinydecoder.find(own, "sd") == own / tinydecoder.OWN_FILE
    # a library folder given by the settings
    lib = tmp_path / "lib"
    save_original(original_decoder(width=8, stages=(1, 1)), lib / "taesd_decoder.safetensors")
    assert tinydecoder.find(ckpt, "sd", (lib,)) == lib / "taesd_decoder.safetensors"


def test_a_pickle_with_code_or_an_unfitting_decoder_is_not_used(tmp_path, caplog):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    approx = tmp_path / "models" / "vae_approx"
    approx.mkdir(parents=True)
    torch.save({"1.weight": Evil()}, approx / "taesd_decoder.pth")
    with caplog.at_level(logging.WARNING):
        assert tinydecoder.for_model(tmp_path / "models" / "checkpoints" / "m.safetensors", "sd", 8, 4) is None
    assert "program code" in caplog.text
    (approx / "taesd_decoder.pth").unlink()
    save_original(original_decoder(width=8, stages=(1, 1)), approx / "taesd_decoder.safetensors")  # 2x, not 8x
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert tinydecoder.for_model(tmp_path / "models" / "checkpoints" / "m.safetensors", "sd", 8, 4) is None
    assert "2x" in caplog.text


# -- the engine


@pytest.fixture(scope="module")
def comfy_tree(tiny_model, tmp_path_factory):
    """A ComfyUI-style models folder: the tiny SD model under checkpoints/, a 2x TAESD-layout decoder (the tiny
    VAE downsamples 2x) in vae_approx/; and the same model in a folder without one."""
    root = tmp_path_factory.mktemp("comfy") / "models"
    with_tiny = root / "checkpoints" / "tiny-sd"
    shutil.copytree(tiny_model, with_tiny)
    save_original(original_decoder(width=8, stages=(1, 1), seed=3), root / "vae_approx" / "taesd_decoder.safetensors")
    without = tmp_path_factory.mktemp("plain") / "tiny-sd"
    shutil.copytree(tiny_model, without)
    return with_tiny, without


def req(model, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=str(model), steps=3, cfg=5.0, seed=1234, width=SIZE, height=SIZE,
                sampler="Euler")
    base.update(kw)
    return GenerateRequest(**base)


class Spy:
    """Counts which preview path ran."""

    def __init__(self, monkeypatch):
        self.tiny: list[tuple] = []
        self.linear: list[tuple] = []
        orig_tiny, orig_lin = tinydecoder.TinyDecoder.preview, steps_mod.latent_to_rgb

        def tiny(this, latent):
            self.tiny.append(np.shape(latent))
            return orig_tiny(this, latent)

        def lin(latent, *a):
            self.linear.append(np.shape(latent))
            return orig_lin(latent, *a)

        monkeypatch.setattr(tinydecoder.TinyDecoder, "preview", tiny)
        monkeypatch.setattr(steps_mod, "latent_to_rgb", lin)


def test_preview_uses_the_tiny_decoder_when_present(comfy_tree, monkeypatch):
    from studio.engine.engine import Engine

    monkeypatch.setattr(steps_mod, "TINY_PREVIEW_SHARE", 1e9)  # every step, whatever this busy machine's timing
    with_tiny, _ = comfy_tree
    e = Engine(device="cpu")
    spy = Spy(monkeypatch)
    seen = []
    r = e.generate(req(with_tiny, steps=4), on_step=seen.append)
    tiny = e.load(str(with_tiny)).tiny
    assert tiny is not None and tiny.name == "taesd_decoder"
    assert len(spy.tiny) == 4 and spy.linear == []
    for k, s in enumerate(seen):  # full-size, true-colour previews of each step's x0 estimate
        assert s.preview.shape == (SIZE, SIZE, 3)
        assert np.array_equal(s.preview, tiny.preview(r.x0[k, 0]))
    # the step timeline of a small picture uses it too
    assert np.array_equal(e.latent_preview(str(with_tiny), r.x0[1, 0]), tiny.preview(r.x0[1, 0]))


def test_preview_uses_the_factors_without_one(comfy_tree, monkeypatch):
    from studio.engine.engine import Engine

    _, without = comfy_tree
    e = Engine(device="cpu")
    spy = Spy(monkeypatch)
    seen = []
    r = e.generate(req(without), on_step=seen.append)
    assert e.load(str(without)).tiny is None
    assert spy.tiny == [] and len(spy.linear) == 3
    m, b = e.load(str(without)).latent_rgb
    assert np.array_equal(seen[0].preview, latent_to_rgb(r.x0[0, 0], m, b))
    assert seen[0].preview.shape == (SIZE // 2, SIZE // 2, 3)


def test_a_slow_tiny_decoder_previews_every_few_steps(comfy_tree, monkeypatch):
    from studio.engine.engine import Engine

    monkeypatch.setattr(steps_mod, "TINY_PREVIEW_SHARE", 0.0)  # any cost is over budget: the interval doubles
    with_tiny, _ = comfy_tree
    e = Engine(device="cpu")
    seen = []
    e.generate(req(with_tiny, steps=6), on_step=seen.append)
    big = [s.step for s in seen if s.preview.shape[0] == SIZE]
    assert big == [1, 3, 5, 6]  # 1, then every 2nd, then every 4th; the last step always
    assert all(s.preview.shape[0] == SIZE // 2 for s in seen if s.step not in big)


def test_tiny_decode_as_the_final_decode(comfy_tree, tmp_path, caplog):
    from studio.core.metadata import parameters_for
    from studio.engine.engine import Engine

    with_tiny, without = comfy_tree
    e = Engine(device="cpu")
    full = e.generate(req(with_tiny))
    fast = e.generate(req(with_tiny, tiny_decode=True))
    tiny = e.load(str(with_tiny)).tiny
    # the kept latents are float16 copies of what was decoded: nearly all pixels equal
    near = np.abs(fast.images[0].astype(int) - tiny.preview(fast.latents[-1, 0]).astype(int)) <= 2
    assert near.mean() > 0.99
    far = np.abs(fast.images[0].astype(int) - full.images[0].astype(int)) > 2
    assert far.mean() > 0.5  # random weights: a different decoder, other pixels
    assert fast.extra_params["Tiny decode"] == "taesd_decoder" and "Tiny decode" not in full.extra_params
    text = parameters_for(fast.request, fast.seeds[0], fast.model_name, fast.model_hash, "t", fast.extra_params)
    assert "Tiny decode: taesd_decoder" in text
    with caplog.at_level(logging.WARNING):
        plain = e.generate(req(without, tiny_decode=True))
    assert "no tiny decoder: full decode used" in caplog.text and "Tiny decode" not in plain.extra_params
    assert np.array_equal(plain.images[0], e.generate(req(without)).images[0])


def test_cli_tiny_decode_flag(capsys, comfy_tree, tmp_path):
    from studio.cli import main
    from studio.core.metadata import read_parameters

    with_tiny, without = comfy_tree
    code = main(["generate", "--model", str(with_tiny), "--prompt", "x", "--steps", "2", "--seed", "1",
                 "--tiny-decode", "--out", str(tmp_path / "a"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Tiny decode: taesd_decoder" in read_parameters(out.split()[0])
    code = main(["generate", "--model", str(without), "--prompt", "x", "--steps", "2", "--seed", "1",
                 "--tiny-decode", "--out", str(tmp_path / "b"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and "no tiny decoder for this model: full decode used" in err
    assert "Tiny decode" not in read_parameters(out.split()[0])


# -- the built-in models' own tiny decoders

BUILTIN = Path(__file__).resolve().parents[1] / "models" / "builtin"
UPSCALER = Path(__file__).resolve().parents[1] / "models" / "latent-upscaler-x4"


def test_training_is_resumable_and_writes_the_original_layout(tmp_path):
    from studio.core.errors import ModelError  # noqa: F401 - the loader's errors are ModelErrors
    from studio.training.common import TrainingInputError, load_checkpoint
    from studio.training.train_tiny_decoder import PRESETS, train

    preset = PRESETS["tiny"]
    run = tmp_path / "run"
    result = train(BUILTIN, run, preset, steps=2, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2 and result["steps"] == 2
    assert {"rms_tiny_full_size", "rms_factors_full_size"} <= set(result)
    with pytest.raises(TrainingInputError, match="--resume"):
        train(BUILTIN, run, preset, steps=3, progress=False)
    result = train(BUILTIN, run, preset, steps=3, progress=False, resume_run=True)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3 and result["steps"] == 3
    from safetensors import safe_open

    with safe_open(str(run / tinydecoder.OWN_FILE), "pt") as f:
        keys = set(f.keys())
    assert "1.weight" in keys and "3.conv.0.weight" in keys  # TAESD's own layout
    tiny = tinydecoder.load(run / tinydecoder.OWN_FILE)
    assert tiny.scale == 4 and tiny.latent_channels == 4  # the built-in VAE: 4x, 4 channels
    # targets decoded once (a slow VAE's way): the pool and an augmented copy of it
    import dataclasses

    result = train(BUILTIN, tmp_path / "once", dataclasses.replace(preset, variants=2), steps=1, progress=False)
    assert result["steps"] == 1 and len(torch.load(tmp_path / "once" / "targets.pt")["lat"]) == 2 * preset.pool


def test_builtin_model_ships_a_small_tiny_decoder():
    import json

    f = BUILTIN / tinydecoder.OWN_FILE
    assert f.is_file() and f.stat().st_size < 1_000_000
    vae = json.loads((BUILTIN / "vae" / "config.json").read_text())
    tiny = tinydecoder.for_model(BUILTIN, "sd", 2 ** (len(vae["block_out_channels"]) - 1), vae["latent_channels"])
    assert tiny is not None and tiny.path == f and tiny.scale == 4


def test_latent_upscaler_previews_in_true_colours():
    """Its latent's channels 0-2 are the low-res picture: the fitted factors it ships (not SD's published ones,
    which showed blue as teal) preview held-out scenes within a few grey levels of the full decode."""
    import torch.nn.functional as F

    from studio.engine.preview import SD15_BIAS, SD15_FACTORS, factors_for
    from studio.training.train_tiny_decoder import HELDOUT_SEED, encode_scenes, full_decode, load_vae

    vae = load_vae(UPSCALER)
    z, _ = encode_scenes(vae, True, HELDOUT_SEED, 4)
    want = np.rint((F.avg_pool2d(full_decode(vae, z), 4).permute(0, 2, 3, 1).numpy() + 1) * 127.5)

    def rms(m, b) -> float:
        m, b = np.asarray(m, np.float32), np.asarray(b, np.float32)
        got = np.stack([latent_to_rgb(lat.numpy(), m, b) for lat in z])
        return float(np.sqrt(np.mean((got - want) ** 2)))

    fitted, published = rms(*factors_for(UPSCALER, "upscale")), rms(SD15_FACTORS, SD15_BIAS)
    assert fitted < 5 and published > 4 * fitted + 10, (fitted, published)


def test_builtin_preview_is_closer_to_the_final_image_than_the_factors(monkeypatch):
    """A real built-in run: each step's preview against the image the run ends with, RMS in grey levels; the
    factors' 16x16 preview scaled up as the canvas shows it (nearest)."""
    from studio.engine.engine import Engine

    monkeypatch.setattr(steps_mod, "TINY_PREVIEW_SHARE", 1e9)
    e = Engine(device="cpu")
    prompts = ["a large blue square in the center on a white background",
               "a green circle on the left on a black background"]
    for seed, prompt in enumerate(prompts):
        seen = []
        r = e.generate(GenerateRequest(prompt=prompt, steps=12, cfg=6.0, seed=seed, sampler="Euler"),
                       on_step=seen.append)
        final = r.images[0].astype(np.float64)
        m, b = e.load(None).latent_rgb
        tiny_err, lin_err = [], []
        for k, s in enumerate(seen):
            assert s.preview.shape == final.shape  # the tiny decoder's full-size preview
            lin = latent_to_rgb(r.x0[k, 0], m, b).repeat(4, 0).repeat(4, 1).astype(np.float64)
            tiny_err.append(np.sqrt(np.mean((s.preview - final) ** 2)))
            lin_err.append(np.sqrt(np.mean((lin - final) ** 2)))
        assert tiny_err[-1] < lin_err[-1] / 2, (tiny_err, lin_err)
        assert np.mean(tiny_err) < np.mean(lin_err), (tiny_err, lin_err)


def test_training_can_start_from_an_existing_tiny_decoder(tmp_path):
    """``--init-from``: distil again from a decoder already close (after a VAE change); another architecture is
    refused in one line."""
    import dataclasses

    from safetensors.torch import load_file

    from studio.training.common import TrainingInputError
    from studio.training.train_tiny_decoder import PRESETS, train

    preset = PRESETS["tiny"]
    train(BUILTIN, tmp_path / "a", preset, steps=1, progress=False, seed=1)  # another start than b's own
    src = tmp_path / "a" / tinydecoder.OWN_FILE
    train(BUILTIN, tmp_path / "b", dataclasses.replace(preset, lr=0.0), steps=1, progress=False, init_from=src)
    a, b = load_file(str(src)), load_file(str(tmp_path / "b" / tinydecoder.OWN_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the start is the file
    with pytest.raises(TrainingInputError, match="architecture"):
        train(BUILTIN, tmp_path / "c", preset, steps=1, progress=False, init_from=BUILTIN / tinydecoder.OWN_FILE)


def test_training_pool_can_hold_plain_pictures(tmp_path):
    """``--plain-fraction``: that share of the scene pool is plain one-colour pictures (the latents a removal on a
    plain background ends near), which the built-in VAE decodes as flat pictures; the measurement reports the
    preview's error on them. The latent upscaler's pool refuses them in one line."""
    import dataclasses

    from studio.training.common import TrainingInputError
    from studio.training.train_tiny_decoder import PRESETS, full_decode, load_vae, train

    preset = dataclasses.replace(PRESETS["tiny"], pool=8, plain=0.5, plain_noise=0.0)
    result = train(BUILTIN, tmp_path / "p", preset, steps=1, progress=False)
    assert {"rms_tiny_plain", "rms_tiny_plain_noisy"} <= set(result)
    lat = torch.load(tmp_path / "p" / "pool.pt", weights_only=True)["lat"].float()
    assert len(lat) == 8
    pictures = full_decode(load_vae(BUILTIN), lat)
    spread = pictures.flatten(2).std(dim=2).mean(dim=1) * 127.5  # grey levels within each picture
    assert spread[:4].mean() < 8 and spread[4:].mean() > 15, spread  # four plain pictures first, then four scenes
    with pytest.raises(TrainingInputError, match="plain"):
        train(UPSCALER, tmp_path / "u", preset, steps=1, progress=False)


def test_builtin_preview_of_a_plain_picture_is_plain():
    """The shipped tiny decoder was distilled on plain pictures too: on their latents (gray and named colours, as
    a removal on a plain background leaves them) its preview is close to the full decode, not a pattern (the
    decoder before: 26.1 grey levels RMS)."""
    from studio.training.train_tiny_decoder import HELDOUT_SEED, full_decode, load_vae, plain_latents

    vae = load_vae(BUILTIN)
    z, _ = plain_latents(vae, 8, HELDOUT_SEED, 0.0)
    tiny = tinydecoder.load(BUILTIN / tinydecoder.OWN_FILE)
    rms = float((tiny.decode(z) - full_decode(vae, z)).pow(2).mean().sqrt()) * 127.5
    assert rms < 12, rms
