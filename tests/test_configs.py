"""The diffusers-format config folders in resources/configs/ that single-file checkpoints load with.

``from_single_file(path, config=resources/configs/<arch>, local_files_only=True)`` builds every component from these
folders, so each must describe the published model exactly. Every model here is built on the meta device (no weights
are ever allocated) and its parameter count checked against the published one; the U-Net and VAE are also checked
against what diffusers' own ``create_*_diffusers_config_from_ldm`` derive from the original LDM yaml files.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import diffusers
import pytest
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "resources" / "configs"
TOKENIZER = ROOT / "resources" / "tokenizer"

CLIP_L = ("CLIPTextModel", 768, 12, 123_060_480)  # class, hidden size, layers, parameters
OPENCLIP_H = ("CLIPTextModel", 1024, 23, 340_387_840)  # OpenCLIP ViT-H/14 minus its last layer (SD 2 uses layer 23)
BIGG = ("CLIPTextModelWithProjection", 1280, 32, 694_659_840)  # OpenCLIP ViT-bigG/14 with the 1280x1280 projection
PAD_L, PAD_OPENCLIP = 49407, 0  # "<|endoftext|>" and "!"
SD_VAE, X4_VAE = 83_653_863, 55_325_927

# arch -> what the folder must describe. unet: (parameters, in_channels, sample_size); scheduler: (class,
# prediction_type, beta_start, beta_end); native: the training resolution (the U-Net's sample_size x 8, x4 for x4).
ARCHS = {
    "sd1": dict(
        pipeline="StableDiffusionPipeline",
        unet=(859_520_964, 4, 64),
        vae=(SD_VAE, 0.18215),
        text={"text_encoder": CLIP_L},
        pad={"tokenizer": PAD_L},
        scheduler=("PNDMScheduler", "epsilon", 0.00085, 0.012),
    ),
    "sd1-inpaint": dict(
        pipeline="StableDiffusionInpaintPipeline",
        unet=(859_535_364, 9, 64),
        vae=(SD_VAE, 0.18215),
        text={"text_encoder": CLIP_L},
        pad={"tokenizer": PAD_L},
        scheduler=("PNDMScheduler", "epsilon", 0.00085, 0.012),
    ),
    "sd2": dict(
        pipeline="StableDiffusionPipeline",
        unet=(865_910_724, 4, 64),
        vae=(SD_VAE, 0.18215),
        text={"text_encoder": OPENCLIP_H},
        pad={"tokenizer": PAD_OPENCLIP},
        scheduler=("PNDMScheduler", "epsilon", 0.00085, 0.012),
    ),
    "sd2-v": dict(
        pipeline="StableDiffusionPipeline",
        unet=(865_910_724, 4, 96),
        vae=(SD_VAE, 0.18215),
        text={"text_encoder": OPENCLIP_H},
        pad={"tokenizer": PAD_OPENCLIP},
        scheduler=("DDIMScheduler", "v_prediction", 0.00085, 0.012),
    ),
    "sd2-inpaint": dict(
        pipeline="StableDiffusionInpaintPipeline",
        unet=(865_925_124, 9, 64),
        vae=(SD_VAE, 0.18215),
        text={"text_encoder": OPENCLIP_H},
        pad={"tokenizer": PAD_OPENCLIP},
        scheduler=("PNDMScheduler", "epsilon", 0.00085, 0.012),
    ),
    "sdxl": dict(
        pipeline="StableDiffusionXLPipeline",
        unet=(2_567_463_684, 4, 128),
        vae=(SD_VAE, 0.13025),
        text={"text_encoder": CLIP_L, "text_encoder_2": BIGG},
        pad={"tokenizer": PAD_L, "tokenizer_2": PAD_OPENCLIP},
        scheduler=("EulerDiscreteScheduler", "epsilon", 0.00085, 0.012),
    ),
    "sdxl-inpaint": dict(
        pipeline="StableDiffusionXLInpaintPipeline",
        unet=(2_567_478_084, 9, 128),
        vae=(SD_VAE, 0.13025),
        text={"text_encoder": CLIP_L, "text_encoder_2": BIGG},
        pad={"tokenizer": PAD_L, "tokenizer_2": PAD_OPENCLIP},
        scheduler=("EulerDiscreteScheduler", "epsilon", 0.00085, 0.012),
    ),
    "x4-upscaler": dict(
        pipeline="StableDiffusionUpscalePipeline",
        unet=(473_398_020, 7, 128),
        vae=(X4_VAE, 0.08333),
        text={"text_encoder": OPENCLIP_H},
        pad={"tokenizer": PAD_OPENCLIP},
        scheduler=("DDIMScheduler", "v_prediction", 0.0001, 0.02),
    ),
}

# The original LDM yaml files' model parameters (CompVis v1-inference.yaml, runwayml v1-inpainting-inference.yaml,
# Stability-AI v2-inference(-v).yaml / v2-inpainting-inference.yaml / x4-upscaling.yaml, generative-models
# sd_xl_base.yaml), as far as diffusers' converters read them.
_SD_VAE = dict(z_channels=4, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
_V1 = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_heads=8,
    transformer_depth=1,
    context_dim=768,
)
_V2 = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
)
_XL = dict(
    adm_in_channels=2816,
    num_classes="sequential",
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 4],
    num_head_channels=64,
    use_linear_in_transformer=True,
    transformer_depth=[1, 2, 10],
    context_dim=2048,
)
_X4 = dict(
    num_classes=1000,
    in_channels=7,
    out_channels=4,
    model_channels=256,
    attention_resolutions=[2, 4, 8],
    num_res_blocks=2,
    channel_mult=[1, 2, 2, 4],
    disable_self_attentions=[True, True, True, False],
    num_heads=8,
    transformer_depth=1,
    context_dim=1024,
    use_linear_in_transformer=True,
)
# arch -> (U-Net params, VAE ddconfig, scale_factor, "unet_config" or "network_config")
LDM = {
    "sd1": (_V1, _SD_VAE, 0.18215, "unet_config"),
    "sd1-inpaint": ({**_V1, "in_channels": 9}, _SD_VAE, 0.18215, "unet_config"),
    "sd2": (_V2, _SD_VAE, 0.18215, "unet_config"),
    "sd2-v": (_V2, _SD_VAE, 0.18215, "unet_config"),
    "sd2-inpaint": ({**_V2, "in_channels": 9}, _SD_VAE, 0.18215, "unet_config"),
    "sdxl": (_XL, _SD_VAE, 0.13025, "network_config"),
    "sdxl-inpaint": ({**_XL, "in_channels": 9}, _SD_VAE, 0.13025, "network_config"),
    "x4-upscaler": (_X4, {**_SD_VAE, "ch_mult": [1, 2, 4]}, 0.08333, "unet_config"),
}

ALL = sorted(ARCHS)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(build):
    """Build a model with every tensor on the meta device (no memory), and check nothing landed elsewhere."""
    with torch.device("meta"):
        model = build()
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    return model


def _library(name: str):
    return {"diffusers": diffusers, "transformers": transformers}[name]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _ldm_config(arch: str) -> dict:
    unet, ddconfig, scale, key = LDM[arch]
    params = {key: {"params": unet}, "first_stage_config": {"params": {"ddconfig": ddconfig}}, "scale_factor": scale}
    return {"model": {"params": params}}


def test_the_folders_are_the_architectures():
    """One folder per pipeline architecture, and one per ControlNet family (studio.engine.controlnet)."""
    folders = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
    assert [f for f in folders if not f.startswith("controlnet-")] == ALL
    assert [f for f in folders if f.startswith("controlnet-")] == ["controlnet-sd1", "controlnet-sd2", "controlnet-sdxl"]
    for f in ("controlnet-sd1", "controlnet-sd2", "controlnet-sdxl"):
        assert _json(CONFIGS / f / "config.json")["_class_name"] == "ControlNetModel"


def test_every_json_parses():
    files = sorted(CONFIGS.rglob("*.json"))
    assert len(files) >= 8 * 7
    for f in files:
        assert isinstance(_json(f), dict), f


@pytest.mark.parametrize("arch", ALL)
def test_model_index_matches_the_pipeline(arch):
    folder = CONFIGS / arch
    index = _json(folder / "model_index.json")
    assert index["_class_name"] == ARCHS[arch]["pipeline"]
    assert index["_diffusers_version"]
    cls = getattr(diffusers, index["_class_name"])
    expected = set(cls._get_signature_keys(cls)[0])
    signature = set(inspect.signature(cls.__init__).parameters) - {"self"}
    entries = {k: v for k, v in index.items() if not k.startswith("_")}
    assert set(entries) <= signature, set(entries) - signature
    assert expected <= set(entries), expected - set(entries)  # every component named, absent ones as [null, null]
    for name in expected:
        library, class_name = entries[name]
        if library is None:
            assert class_name is None and name in cls._optional_components, name
            assert not (folder / name).exists(), name
            continue
        assert getattr(_library(library), class_name), (name, class_name)
        assert (folder / name).is_dir(), name
    for name in ("safety_checker", "feature_extractor", "image_encoder", "watermarker"):
        if name in signature:
            assert entries[name] == [None, None], name
    if "requires_safety_checker" in signature:
        assert entries["requires_safety_checker"] is False
    if index["_class_name"].startswith("StableDiffusionXL"):
        assert entries["force_zeros_for_empty_prompt"] is True
    if arch == "x4-upscaler":
        assert entries["max_noise_level"] == 350
    # what from_single_file does with it: load_config + extract_init_dict, nothing left over
    _, unused, _ = cls.extract_init_dict(cls.load_config(str(folder)))
    assert not {k for k in unused if not k.startswith("_")}, unused


@pytest.mark.parametrize("arch", ALL)
def test_unet(arch):
    params, in_channels, sample_size = ARCHS[arch]["unet"]
    config = UNet2DConditionModel.load_config(str(CONFIGS / arch), subfolder="unet")
    unet = _on_meta(lambda: UNet2DConditionModel.from_config(config))
    assert _params(unet) == params
    assert unet.config.in_channels == in_channels and unet.config.out_channels == 4
    assert unet.config.sample_size == sample_size
    width = {"text_encoder": 0, "text_encoder_2": 0}
    for name, (_, hidden, _, _) in ARCHS[arch]["text"].items():
        width[name] = hidden
    assert unet.config.cross_attention_dim == width["text_encoder"] + width["text_encoder_2"]


@pytest.mark.parametrize("arch", ALL)
def test_unet_is_what_diffusers_derives_from_the_ldm_yaml(arch):
    ours = UNet2DConditionModel.load_config(str(CONFIGS / arch), subfolder="unet")
    derived = create_unet_diffusers_config_from_ldm(_ldm_config(arch), checkpoint={})
    derived.pop("sample_size")  # from the checkpoint's detected type (none here); checked in test_unet
    for key, value in derived.items():
        assert _plain(ours[key]) == _plain(value), key
    a = _on_meta(lambda: UNet2DConditionModel.from_config(ours))
    b = _on_meta(lambda: UNet2DConditionModel.from_config({**ours, **derived}))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("arch", ALL)
def test_vae(arch):
    params, scaling = ARCHS[arch]["vae"]
    config = AutoencoderKL.load_config(str(CONFIGS / arch), subfolder="vae")
    vae = _on_meta(lambda: AutoencoderKL.from_config(config))
    assert _params(vae) == params
    assert vae.config.scaling_factor == scaling
    assert vae.config.force_upcast is True
    derived = create_vae_diffusers_config_from_ldm(_ldm_config(arch), checkpoint={})
    derived.pop("sample_size")  # only diffusers' VAE tiling reads it; the published values are kept
    for key, value in derived.items():
        assert _plain(config[key]) == _plain(value), key
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    assert factor == (4 if arch == "x4-upscaler" else 8)


@pytest.mark.parametrize("arch", ALL)
def test_text_encoders(arch):
    folder = CONFIGS / arch
    index = _json(folder / "model_index.json")
    text = ARCHS[arch]["text"]
    assert {n for n in ("text_encoder", "text_encoder_2") if (folder / n).is_dir()} == set(text)
    for name, (class_name, hidden, layers, params) in text.items():
        # a missing subfolder would give transformers' defaults silently, hence the is_dir check above
        config = transformers.CLIPTextConfig.from_pretrained(str(folder), subfolder=name, local_files_only=True)
        assert index[name] == ["transformers", class_name]
        assert config.architectures == [class_name]
        assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (hidden, layers, 49408)
        assert config.max_position_embeddings == 77
        assert config.hidden_act == ("quick_gelu" if hidden == 768 else "gelu")
        model_cls = getattr(transformers, class_name)
        model = _on_meta(lambda cls=model_cls, c=config: cls(c))
        assert _params(model) == params, name


@pytest.mark.parametrize("arch", ALL)
def test_schedulers(arch):
    folder = CONFIGS / arch
    index = _json(folder / "model_index.json")
    class_name, prediction, beta_start, beta_end = ARCHS[arch]["scheduler"]
    names = ["scheduler", "low_res_scheduler"] if arch == "x4-upscaler" else ["scheduler"]
    assert {p.name for p in folder.iterdir() if p.name.endswith("scheduler")} == set(names)
    for name in names:
        config = _json(folder / name / "scheduler_config.json")
        assert index[name] == ["diffusers", config["_class_name"]]
        cls = getattr(diffusers, config["_class_name"])
        scheduler = cls.from_config(config)
        if name == "low_res_scheduler":  # the noise augmentation of the low-res image: DDPM, 1e-4..0.02
            assert config["_class_name"] == "DDPMScheduler" and scheduler.config.prediction_type == "epsilon"
            start, end = 0.0001, 0.02
        else:
            assert config["_class_name"] == class_name
            assert scheduler.config.prediction_type == prediction
            assert scheduler.config.steps_offset == 1
            start, end = beta_start, beta_end
        # LDM's "linear" schedule is diffusers' scaled_linear: linspace over the square roots
        assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
        want = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float32) ** 2
        assert torch.allclose(scheduler.betas.float(), want)


def _tokenizer(settings_dir: Path):
    """A CLIPTokenizer from the shared BPE files plus one folder's settings (portable over transformers 4 and 5)."""
    settings = _json(settings_dir / "tokenizer_config.json")
    special = _json(settings_dir / "special_tokens_map.json")
    assert {k: settings[k] for k in special} == special
    assert settings["tokenizer_class"] == "CLIPTokenizer"
    keep = ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token", "do_lower_case", "errors")
    kwargs = {k: settings[k] for k in keep if k in settings}
    return transformers.CLIPTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True, **kwargs)


@pytest.mark.parametrize("arch", ALL)
def test_tokenizers(arch):
    folder = CONFIGS / arch
    pads = ARCHS[arch]["pad"]
    assert {p.name for p in folder.iterdir() if p.name.startswith("tokenizer")} == set(pads)
    for name, pad_id in pads.items():
        assert sorted(p.name for p in (folder / name).iterdir()) == ["special_tokens_map.json", "tokenizer_config.json"]
        tok = _tokenizer(folder / name)
        assert len(tok) == 49408 and tok.model_max_length == 77
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, pad_id)
        ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
        assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert len(ids) == 77 and set(ids[7:]) == {pad_id}
