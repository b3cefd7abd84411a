"""The original single-file layout writer (tests/ldm_layout.py) against diffusers' own readers.

For each family (SD 1.x, SD 2.x, SDXL; txt2img and 9-channel inpaint): diffusers' converters turn the written
keys back into exactly the diffusers state dicts, `infer_diffusers_model_type` recognises the file where the tiny
shapes allow, and `from_single_file(file, config=<weights-less folder>, local_files_only=True)` loads offline,
with the source's weights, and draws the same pixels as the source pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ldm_layout import (
    TEXT_PREFIXES,
    family_of,
    to_original,
    write_config_folder,
    write_single_file,
)

# name: (family, kind, pipeline class, what infer_diffusers_model_type says of the tiny file)
VARIANTS = {
    "sd1": ("sd1", "txt2img", "StableDiffusionPipeline", "v1"),
    "sd1-inpaint": ("sd1", "inpaint", "StableDiffusionInpaintPipeline", "inpainting"),
    # The SD 2.x test is the width of the cross-attention keys (1024, OpenCLIP-H); at width 32 it reads as 1.x.
    "sd2": ("sd2", "txt2img", "StableDiffusionPipeline", "v1"),
    "sd2-inpaint": ("sd2", "inpaint", "StableDiffusionInpaintPipeline", "inpainting"),
    "sdxl": ("sdxl", "txt2img", "StableDiffusionXLPipeline", "xl_base"),
    "sdxl-inpaint": ("sdxl", "inpaint", "StableDiffusionXLInpaintPipeline", "xl_inpaint"),
}
V2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model, tiny_inpaint_model):
    """Lazily: name -> (pipeline folder, single file, config folder)."""
    from studio.testing.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("ldm")
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            family, kind, _, _ = VARIANTS[name]
            if name == "sd1":
                folder = tiny_model
            elif name == "sd1-inpaint":
                folder = tiny_inpaint_model
            else:
                folder = build_tiny_pipeline(root / name, kind, seed=3, family=family)
            single = write_single_file(folder, root / f"{name}.safetensors")
            config = write_config_folder(folder, root / f"{name}-config")
            cache[name] = (str(folder), str(single), str(config))
        return cache[name]

    return get


def source(folder: str, cls_name: str):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_same(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: keys differ: {sorted(set(got) ^ set(want))[:10]}"
    bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not bad, f"{what}: tensors differ: {bad[:10]}"


def unflatten(sd: dict, model) -> dict:
    """diffusers' CLIP converters give text_model.* keys; transformers >= 5.6 flattened CLIPTextModel."""
    if hasattr(model, "text_model"):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_diffusers_converters_invert_the_writer(built, name):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    family, _, cls_name, _ = VARIANTS[name]
    folder, _, _ = built(name)
    pipe = source(folder, cls_name)
    assert family_of(folder) == family == family_of(pipe)
    for extras in (False, True):
        ckpt = to_original(pipe if extras else folder, extras=extras)  # a folder or a loaded pipeline
        prefixes = ("model.diffusion_model.", "first_stage_model.") + tuple(p for _, p, _ in TEXT_PREFIXES[family])
        stray = sorted(k for k in ckpt if not k.startswith(prefixes))
        if extras and family != "sdxl":  # the LDM DDPM schedule buffers
            assert "alphas_cumprod" in stray and all("." not in k for k in stray)
        else:
            assert stray == []
        unet_keys = [k for k in ckpt if k.startswith("model.diffusion_model.")]
        vae_keys = [k for k in ckpt if k.startswith("first_stage_model.")]
        assert len(unet_keys) == len(pipe.unet.state_dict()) and len(vae_keys) == len(pipe.vae.state_dict())

        assert_same(convert_ldm_unet_checkpoint(ckpt, pipe.unet.config), pipe.unet.state_dict(), "unet")
        assert_same(convert_ldm_vae_checkpoint(ckpt, pipe.vae.config), pipe.vae.state_dict(), "vae")
        for comp, prefix, layout in TEXT_PREFIXES[family]:
            model = getattr(pipe, comp)
            if layout == "clip":
                got = convert_ldm_clip_checkpoint(ckpt)
                got = {k: v for k, v in got.items() if not k.endswith("position_ids")}  # extras: skipped on load
            else:
                got = convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
            assert_same(unflatten(got, model), model.state_dict(), comp)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_diffusers_recognises_the_family(built, name):
    from diffusers.loaders import single_file_utils as su
    from safetensors.torch import load_file

    family, kind, _, expected = VARIANTS[name]
    _, single, _ = built(name)
    ckpt = load_file(single)
    assert su.infer_diffusers_model_type(ckpt) == expected
    assert ckpt[su.CHECKPOINT_KEY_NAMES["inpainting"]].shape[1] == (9 if kind == "inpaint" else 4)
    assert su.is_clip_model(ckpt) == (family == "sd1")
    assert su.is_open_clip_model(ckpt) == (family == "sd2")
    assert su.is_clip_sdxl_model(ckpt) == su.is_open_clip_sdxl_model(ckpt) == (family == "sdxl")
    if family == "sd2":
        # The key diffusers reads SD 2.x by is there, at the tiny width; at OpenCLIP-H's width it reads 2.x.
        assert ckpt[V2_KEY].shape[-1] == 32
        wide = dict(ckpt)
        wide[V2_KEY] = torch.zeros(ckpt[V2_KEY].shape[0], 1024)
        assert su.infer_diffusers_model_type(wide) == ("inpainting_v2" if kind == "inpaint" else "v2")


def image_args(pipe, kind: str) -> dict:
    from PIL import Image

    args = dict(prompt="a red circle", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np")
    if kind == "inpaint":
        rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
        rgb[16:48, 16:48] = (200, 30, 30)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, SIZE // 2 :] = 255
        args.update(image=Image.fromarray(rgb), mask_image=Image.fromarray(mask), strength=1.0)
    return args


@pytest.mark.parametrize("name", list(VARIANTS))
def test_from_single_file_loads_offline_and_generates(built, name):
    import diffusers

    family, kind, cls_name, _ = VARIANTS[name]
    folder, single, config = built(name)
    cls = getattr(diffusers, cls_name)
    pipe = cls.from_single_file(single, config=config, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = source(folder, cls_name)
    assert type(pipe) is type(ref)
    for comp in ("unet", "vae") + tuple(c for c, _, _ in TEXT_PREFIXES[family]):
        assert type(getattr(pipe, comp)) is type(getattr(ref, comp))
        assert_same(getattr(pipe, comp).state_dict(), getattr(ref, comp).state_dict(), comp)
    assert type(pipe.scheduler) is type(ref.scheduler)
    assert pipe.scheduler.config.prediction_type == ref.scheduler.config.prediction_type
    for tok in ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",):
        assert getattr(pipe, tok).pad_token == getattr(ref, tok).pad_token
        assert len(getattr(pipe, tok)) == len(getattr(ref, tok)) == 49408

    out = pipe(**image_args(pipe, kind), generator=torch.Generator("cpu").manual_seed(7)).images[0]
    want = ref(**image_args(ref, kind), generator=torch.Generator("cpu").manual_seed(7)).images[0]
    assert out.shape == (SIZE, SIZE, 3) and np.isfinite(out).all()
    # the weights are equal (above); the two runs' float sums may differ in the last bit (seen: 3e-8)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)


def test_family_layouts(built):
    """The tiny pipelines are built as their families are: the keys an SD 2.x or SDXL loader looks at."""
    sd2, sdxl = to_original(built("sd2")[0]), to_original(built("sdxl")[0])
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in sd2
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in sd2
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # use_linear_projection
    assert sdxl["conditioner.embedders.1.model.text_projection"].shape == (32, 32)
    assert sdxl["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 80  # pooled 32 + 6 time ids x 8
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sdxl
    assert "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in sdxl
    assert sdxl["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


def test_half_precision_file(built, tmp_path):
    """A float16 file loads as float32 unless torch_dtype says otherwise (diffusers casts to the model's dtype)."""
    import diffusers

    folder, _, config = built("sdxl")
    single = write_single_file(folder, tmp_path / "half.safetensors", dtype=torch.float16)
    pipe = diffusers.StableDiffusionXLPipeline.from_single_file(str(single), config=config, local_files_only=True)
    ref = source(folder, "StableDiffusionXLPipeline")
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        got, want = getattr(pipe, comp).state_dict(), getattr(ref, comp).state_dict()
        assert all(v.dtype == torch.float32 for v in got.values() if v.is_floating_point())
        assert all(torch.equal(got[k], want[k].half().float()) for k in want), comp
    half = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(single), config=config, local_files_only=True, torch_dtype=torch.float16
    )
    assert half.unet.dtype == half.text_encoder_2.dtype == half.vae.dtype == torch.float16


def test_tokenizers_passed_in_or_in_the_config(built, tmp_path):
    """Tokenizers come from the config folder, or are passed in; a config without them does NOT fail.

    transformers 5's CLIPTokenizer.from_pretrained of a missing folder gives a blank 2-token tokenizer, and
    from_single_file takes it silently: leave the tokenizer folders in, or pass tokenizer=/tokenizer_2=.
    """
    import diffusers
    from transformers import CLIPTokenizer

    folder, single, _ = built("sdxl")
    bare = write_config_folder(folder, tmp_path / "no-tokenizers", tokenizers=False)
    assert not (bare / "tokenizer").exists() and (bare / "text_encoder_2" / "config.json").exists()
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    cls = diffusers.StableDiffusionXLPipeline
    pipe = cls.from_single_file(single, config=str(bare), local_files_only=True, tokenizer=tok, tokenizer_2=tok2)
    assert pipe.tokenizer is tok and pipe.tokenizer_2 is tok2

    try:
        blank = cls.from_single_file(single, config=str(bare), local_files_only=True)
    except (OSError, ValueError):  # a transformers that refuses a missing tokenizer folder is fine too
        return
    assert len(blank.tokenizer) < 49408 and len(blank.tokenizer_2) < 49408  # the silent failure (2 tokens)


def test_without_config_it_wants_the_hub(built):
    """No config=: diffusers looks up the family's hub repo (and would download it; the offline env stops it)."""
    import diffusers
    from huggingface_hub.errors import LocalEntryNotFoundError

    _, single, _ = built("sd1")
    with pytest.raises(LocalEntryNotFoundError):
        diffusers.StableDiffusionPipeline.from_single_file(single, local_files_only=True)
