"""Single-file checkpoints through the engine, offline (conftest blocks sockets): tiny SD 1.x / 2.x / SDXL models
written in the original (LDM / A1111) key layout are detected, loaded with the shipped config mechanism and
generate the same pixels as their diffusers folders; LoRAs, embeddings and a VAE from the model library change
the run and its metadata; bad files are refused with one line and the engine keeps the model it had."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_layout import write_config_folder, write_single_file
from safetensors.torch import save_file

from studio.core.errors import EngineError, ModelError
from studio.core.metadata import parameters_for
from studio.core.requests import GenerateRequest
from studio.engine.engine import Engine
from studio.engine.loader import read_layout
from studio.testing.tiny import build_tiny_pipeline

VARIANTS = {  # arch id -> (family, kind) of the tiny builder
    "sd1": ("sd1", "txt2img"),
    "sd1-inpaint": ("sd1", "inpaint"),
    "sd2": ("sd2", "txt2img"),
    "sdxl": ("sdxl", "txt2img"),
    "sdxl-inpaint": ("sdxl", "inpaint"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> (diffusers folder, single .safetensors), and a configs root holding each tiny config folder."""
    root = tmp_path_factory.mktemp("single")
    configs = root / "configs"
    out = {}
    for arch, (family, kind) in VARIANTS.items():
        folder = build_tiny_pipeline(root / f"{arch}-folder", kind, seed=3, family=family)
        write_config_folder(folder, configs / arch)
        out[arch] = (folder, write_single_file(folder, root / "models" / f"{arch}.safetensors"))
    return out, configs


@pytest.fixture
def configs(tiny, monkeypatch):
    monkeypatch.setenv("LATENT_STUDIO_CONFIGS_DIR", str(tiny[1]))
    return tiny[1]


def req(model, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=str(model), steps=2, width=64, height=64, seed=5, cfg=5.0,
                prediction="epsilon")  # fmt: skip
    return GenerateRequest.from_fields(**{**base, **kw})


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_each_architecture_is_detected_loads_offline_and_matches_its_folder(tiny, configs, arch):
    folder, single = tiny[0][arch]
    layout = read_layout(single)
    assert (layout.arch, layout.single_file) == (arch, True)
    engine = Engine(device="cpu")
    from_file = engine.generate(req(single))
    assert engine._model.layout.arch == arch
    from_folder = engine.generate(req(folder))
    assert from_file.images[0].shape == (64, 64, 3)
    np.testing.assert_allclose(from_file.images[0].astype(int), from_folder.images[0].astype(int), atol=1)
    assert from_file.model_name == single.stem and len(from_file.model_hash) == 10


def test_a_pickle_checkpoint_loads_and_a_hostile_one_never_runs(tiny, configs, tmp_path):
    from safetensors.torch import load_file

    folder, single = tiny[0]["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single)), "global_step": 10}, ckpt)
    engine = Engine(device="cpu")
    a = engine.generate(req(ckpt)).images[0]
    b = engine.generate(req(single)).images[0]
    np.testing.assert_array_equal(a, b)

    marker = tmp_path / "pwned.txt"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": load_file(str(single)), "callback": Hostile()}, evil)
    loaded = engine.loads
    refused = r"^evil\.ckpt holds program code, not only weights \(io\.open\): .*was not opened"
    with pytest.raises(ModelError, match=refused):
        engine.generate(req(evil))
    assert not marker.exists()
    assert engine.loads == loaded


def test_bad_files_are_refused_and_the_engine_keeps_its_model(tiny, configs, tmp_path):
    folder, single = tiny[0]["sd1"]
    engine = Engine(device="cpu")
    first = engine.generate(req(single)).images[0]
    kept = engine._model
    zero = tmp_path / "zero.safetensors"
    zero.write_bytes(b"")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(single.read_bytes()[: single.stat().st_size // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(flux))
    expected = {
        zero: "zero.safetensors is empty",
        cut: "cut.safetensors is truncated",
        junk: "not a safetensors file",
        lora: r"style.safetensors is not a checkpoint but a LoRA: add it to the prompt as <lora:style:1>",
        flux: "flux.safetensors is not a model this studio knows: 1 tensors under double_blocks",
    }
    for path, message in expected.items():
        with pytest.raises(ModelError, match=message):
            engine.generate(req(path))
        assert engine._model is kept  # refused from the header: the loaded model was never dropped
    # An SDXL file whose configs say SD 1.x (a wrong architecture forced on it): one line, then the engine recovers.
    wrong = tmp_path / "configs-wrong"
    shutil.copytree(configs, wrong)
    shutil.rmtree(wrong / "sdxl")
    shutil.copytree(configs / "sd1", wrong / "sdxl")
    import os

    os.environ["LATENT_STUDIO_CONFIGS_DIR"] = str(wrong)
    with pytest.raises(ModelError, match=r"^Cannot load sdxl.safetensors as SDXL: "):
        engine.generate(req(tiny[0]["sdxl"][1]))
    os.environ["LATENT_STUDIO_CONFIGS_DIR"] = str(configs)
    np.testing.assert_array_equal(engine.generate(req(single)).images[0], first)


def test_switching_models_frees_the_previous_one(tiny, configs):
    engine = Engine(device="cpu")
    engine.generate(req(tiny[0]["sd1"][1]))
    old = weakref.ref(engine._model.base.unet)
    engine.generate(req(tiny[0]["sd2"][1]))
    gc.collect()
    assert old() is None
    loads = engine.loads
    engine.generate(req(tiny[0]["sd2"][1]))
    assert engine.loads == loads  # the same file again: nothing read


def test_prediction_type_detected_or_set(tiny, configs):
    engine = Engine(device="cpu")
    engine.generate(req(tiny[0]["sd2"][1], prediction="v_prediction"))
    assert engine._model.prediction == "v_prediction"
    assert engine._model.scheduler_config["prediction_type"] == "v_prediction"
    engine.generate(req(tiny[0]["sd2"][1], prediction="epsilon"))
    assert engine._model.prediction == "epsilon"
    assert engine._model.scheduler_config["prediction_type"] == "epsilon"
    engine.generate(req(tiny[0]["sd2"][1], prediction="auto"))  # A1111's test decides: one or the other
    assert engine._model.prediction in ("epsilon", "v_prediction")


# ---------------------------------------------------------------------------------------------
# Add-ons from the model library


def _kohya_lora(pipe_folder: Path, path: Path, seed: int) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(pipe_folder / "unet")
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and (".attn1.to_" in name or ".attn2.to_" in name):
            k = "lora_unet_" + name.replace(".", "_")
            sd[k + ".lora_down.weight"] = torch.randn(4, m.in_features, generator=g) * 0.5
            sd[k + ".lora_up.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.5
            sd[k + ".alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def library(tiny, tmp_path_factory):
    """An A1111-style folder: a LoRA, an embedding and a VAE for the tiny SD 1.x model, and an SDXL LoRA."""
    from diffusers import AutoencoderKL

    folder = tiny[0]["sd1"][0]
    root = tmp_path_factory.mktemp("webui") / "models"
    _kohya_lora(folder, root / "Lora" / "ink.safetensors", 1)
    _kohya_lora(tiny[0]["sdxl"][0], root / "Lora" / "xl-style.safetensors", 2)
    width = 32
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(4))},
              str((root / "embeddings").mkdir(parents=True) or root / "embeddings" / "fuzzy.safetensors"))  # fmt: skip
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    torch.manual_seed(9)
    for p in vae.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    (root / "VAE").mkdir()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(root / "VAE" / "sharp.safetensors"))
    return root


def test_lora_embedding_and_vae_from_the_library_change_the_run_and_its_metadata(tiny, configs, library):
    single = tiny[0]["sd1"][1]
    engine = Engine(device="cpu", model_folders=[library])
    plain = engine.generate(req(single))
    assert plain.extra_params == {"Speed": "exact"}  # the mode the run used; no LoRA, TI or VAE keys
    with_lora = engine.generate(req(single, prompt="a red circle <lora:ink:0.8>"))
    assert not np.array_equal(with_lora.images[0], plain.images[0])
    hashes = with_lora.extra_params["Lora hashes"]
    assert hashes.startswith("ink: ") and len(hashes) == len("ink: ") + 12
    zero = engine.generate(req(single, prompt="a red circle <lora:ink:0>"))
    np.testing.assert_array_equal(zero.images[0], plain.images[0])
    again = engine.generate(req(single))  # no LoRA in the prompt: back to the plain model
    np.testing.assert_array_equal(again.images[0], plain.images[0])
    by_request = engine.generate(req(single, loras=(("ink", 0.8),)))
    np.testing.assert_array_equal(by_request.images[0], with_lora.images[0])

    text = parameters_for(with_lora.request, 5, with_lora.model_name, with_lora.model_hash, "t",
                          with_lora.extra_params)  # fmt: skip
    assert 'Lora hashes: "ink: ' in text and "<lora:ink:0.8>" in text.splitlines()[0]

    emb = engine.generate(req(single, prompt="a fuzzy red circle"))
    assert emb.extra_params["TI hashes"].startswith("fuzzy: ")
    assert not np.array_equal(emb.images[0], engine.generate(req(single, prompt="a furry red circle")).images[0])

    vae = engine.generate(req(single, vae="sharp"))
    assert vae.extra_params["VAE"] == "sharp" and len(vae.extra_params["VAE hash"]) == 10
    assert not np.array_equal(vae.images[0], plain.images[0])
    np.testing.assert_array_equal(engine.generate(req(single)).images[0], plain.images[0])  # the model's own again


def test_a_lora_for_another_architecture_is_refused_and_changes_nothing(tiny, configs, library):
    single = tiny[0]["sd1"][1]
    engine = Engine(device="cpu", model_folders=[library])
    plain = engine.generate(req(single)).images[0]
    with pytest.raises(EngineError, match="xl-style.safetensors"):
        engine.generate(req(single, prompt="a red circle <lora:xl-style:1>"))
    with pytest.raises(EngineError, match="LoRA 'nowhere' is not in the model folders"):
        engine.generate(req(single, prompt="a red circle <lora:nowhere:1>"))
    np.testing.assert_array_equal(engine.generate(req(single)).images[0], plain)


def test_cli_generates_from_a_single_file_and_refuses_a_broken_one(tiny, configs, library, tmp_path):
    import os

    single = tiny[0]["sd1"][1]
    env = {**os.environ, "LATENT_STUDIO_CONFIGS_DIR": str(configs), "LATENT_STUDIO_CONFIG_DIR": str(tmp_path / "c")}
    cmd = [sys.executable, "-m", "studio", "generate", "--model", str(single), "--prompt", "a circle <lora:ink:1>",
           "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--out", str(tmp_path / "out"), "-q",
           "--prediction", "epsilon"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "LoRA 'ink' is not in the model folders" in p.stderr  # not given the folder
    p = subprocess.run([*cmd, "--lora", "nothing:1"], capture_output=True, text=True, timeout=300,
                       env={**env, "LATENT_STUDIO_CONFIG_DIR": str(_settings_with(tmp_path / "c2", library))})  # fmt: skip
    assert p.returncode == 2 and "LoRA 'nothing'" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**env, "LATENT_STUDIO_CONFIG_DIR": str(_settings_with(tmp_path / "c3", library))})  # fmt: skip
    assert p.returncode == 0, p.stderr
    from studio.core.metadata import read_parameters

    text = read_parameters(Path(p.stdout.strip()))
    assert 'Lora hashes: "ink: ' in text and f"Model: {single.stem}" in text
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(single.read_bytes()[:1000])
    p = subprocess.run([*cmd[:4], str(bad), *cmd[5:]], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [p.stderr.strip()] and "bad.safetensors" in p.stderr


def _settings_with(folder: Path, library: Path) -> Path:
    from studio.settings import Settings

    s = Settings()
    s.model_folders = [str(library)]
    s.save(folder)
    return folder


def test_an_x4_upscaler_single_file_upscales(tiny_x4_model, tmp_path, monkeypatch):
    folder = Path(tiny_x4_model)
    configs = tmp_path / "configs"
    write_config_folder(folder, configs / "x4-upscaler")
    single = write_single_file(folder, tmp_path / "x4.safetensors")
    monkeypatch.setenv("LATENT_STUDIO_CONFIGS_DIR", str(configs))
    assert read_layout(single).arch == "x4-upscaler"
    engine = Engine(device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    r = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(single), init_image=image, scale=4.0,
                        steps=2, seed=1, strength=1.0, prediction="auto")  # fmt: skip
    a = engine.generate(r).images[0]
    b = engine.generate(r.replace(model=str(folder))).images[0]
    assert a.shape == (128, 128, 3)
    np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


def test_an_fp16_file_on_the_cpu_is_converted_tensor_by_tensor_to_the_same_weights(tiny, configs, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    import diffusers.loaders.single_file as single_file
    from safetensors.torch import load_file

    import studio.engine.singlefile as sf

    folder = tiny[0]["sd1"][0]
    half = write_single_file(folder, tmp_path / "half.safetensors", dtype=torch.float16)
    mixed = load_file(str(half))  # some tools keep a few tensors in fp32: they must not alias the read buffer
    for k in [k for k in mixed if k.startswith("first_stage_model.decoder.")][:6]:
        mixed[k] = mixed[k].float()
    save_file(mixed, str(half))
    real_loader = single_file.load_single_file_checkpoint
    used = []
    real = sf._read_converted
    monkeypatch.setattr(sf, "_read_converted", lambda p, d: used.append(d) or real(p, d))
    engine = Engine(device="cpu")
    converted = engine.generate(req(half)).images[0]
    assert used == [torch.float32] and single_file.load_single_file_checkpoint is real_loader
    assert all(p.dtype == torch.float32 for p in engine._model.base.unet.parameters())
    monkeypatch.setattr(sf, "_read_converted", lambda p, d: None)  # diffusers' own path: the mapped file
    engine.unload()
    plain = engine.generate(req(half)).images[0]
    np.testing.assert_array_equal(converted, plain)
    assert real(tiny[0]["sd1"][1], torch.float32) is None  # an fp32 file stays memory-mapped
