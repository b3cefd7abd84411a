"""LoRAs, textual-inversion embeddings and a VAE override on a tiny real pipeline; A1111 hashes."""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.core.errors import ModelError
from studio.engine import addons

PROMPT = "a red fox in the snow"


def _load(path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        path, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, prompt: str = PROMPT) -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images[0]


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return _load(tiny_model)


@pytest.fixture(scope="module")
def plain(pipe) -> np.ndarray:
    return _run(pipe)


@pytest.fixture(scope="module")
def targets(pipe):
    """(module name, in, out) of the tiny U-Net's attention projections and the text encoder's, before any LoRA."""
    unet = [
        (n, m.in_features, m.out_features)
        for n, m in pipe.unet.named_modules()
        if isinstance(m, torch.nn.Linear) and (".attn1.to_" in n or ".attn2.to_" in n)
    ]
    text = [
        (n, m.in_features, m.out_features)
        for n, m in pipe.text_encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and ".self_attn." in n
    ]
    assert unet and text
    return unet, text


@pytest.fixture
def loras(pipe):
    """A fresh LoraSet; every adapter is removed afterwards, so the module's pipeline stays plain."""
    s = addons.LoraSet(pipe)
    yield s
    s.unload()
    assert not _peft_layers(pipe)


def _peft_layers(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())


def _kohya(targets, seed: int, rank: int = 4, scale: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    unet, text = targets
    for prefix, mods in (("lora_unet_", unet), ("lora_te_text_model_", text)):
        for name, fan_in, fan_out in mods:
            k = prefix + name.replace(".", "_")
            sd[k + ".lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * scale
            sd[k + ".lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * scale
            sd[k + ".alpha"] = torch.tensor(float(rank) / 2)
    return sd


def _save(sd, path, metadata=None) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return str(path)


@pytest.fixture(scope="module")
def lora_files(targets, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return _save(_kohya(targets, 1), d / "style-a.safetensors"), _save(_kohya(targets, 2), d / "style-b.safetensors")


class _Hostile:
    """A pickle payload that would create a file when unpickled (no os.system needed)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


# ---------------------------------------------------------------------------------------------
# Hashes


def test_hashes_match_a1111_on_known_bytes(tmp_path):
    body = bytes(range(256)) * 5000  # > 1 MiB: more than one read
    header = b'{"__metadata__":{"ss_name":"x"}}'
    data = struct.pack("<Q", len(header)) + header + body
    f = tmp_path / "net.safetensors"
    f.write_bytes(data)
    whole = hashlib.sha256(data).hexdigest()
    assert addons.lora_hash(f) == hashlib.sha256(body).hexdigest()[:12]
    assert addons.embedding_hash(f) == whole[:12]
    assert addons.vae_hash(f) == whole[:10]
    # Rewriting the metadata changes the file's sha256 but not the LoRA hash.
    header2 = b'{"__metadata__":{"ss_name":"renamed"}}'
    f.write_bytes(struct.pack("<Q", len(header2)) + header2 + body)
    assert addons.lora_hash(f) == hashlib.sha256(body).hexdigest()[:12]
    assert addons.embedding_hash(f) != whole[:12]
    # Any other format: the whole file.
    pt = tmp_path / "net.pt"
    pt.write_bytes(data)
    assert addons.lora_hash(pt) == whole[:12]


# ---------------------------------------------------------------------------------------------
# LoRA


def test_lora_changes_output_weights_combine_and_removal_is_exact(pipe, plain, loras, lora_files):
    a, b = lora_files
    loras.apply([(a, 1.0)])
    out_a = _run(pipe)
    assert np.abs(out_a - plain).max() > 1e-3
    loras.apply([(a, 0.0)])
    np.testing.assert_array_equal(_run(pipe), plain)
    loras.apply([(b, 1.0)])
    out_b = _run(pipe)
    loras.apply([(a, 1.0), (b, 0.7)])
    both = _run(pipe)
    assert np.abs(both - out_a).max() > 1e-3 and np.abs(both - out_b).max() > 1e-3
    loras.apply([(a, 1.0)])
    np.testing.assert_array_equal(_run(pipe), out_a)  # back to one LoRA: the same image as before
    loras.apply([])
    np.testing.assert_array_equal(_run(pipe), plain)
    loras.unload()
    assert _peft_layers(pipe) == 0
    np.testing.assert_array_equal(_run(pipe), plain)


def test_one_lora_set_per_unet(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    try:
        assert addons.lora_set(pipe) is addons.lora_set(img2img)
        assert addons.lora_set(pipe).pipe is pipe
    finally:
        del pipe.unet._studio_loras


def test_lora_adapters_are_cached_by_file_version(pipe, loras, lora_files, monkeypatch, targets):
    a, b = lora_files
    reads: list[str] = []
    real = addons.read_tensors

    def counting(path, what="file"):
        reads.append(os.path.basename(str(path)))
        return real(path, what)

    monkeypatch.setattr(addons.lora, "read_tensors", counting)
    first = loras.apply([(a, 1.0), (b, 0.5)])
    loras.apply([(b, 1.0)])
    again = loras.apply([(a, 0.8), (b, 0.2)])
    assert reads == ["style-a.safetensors", "style-b.safetensors"]
    assert [e.adapter for e in first] == [e.adapter for e in again]
    assert loras.active == [(first[0].adapter, 0.8), (first[1].adapter, 0.2)]
    # A new version of the file (size / mtime) is read again, under a new adapter.
    _save(_kohya(targets, 3), a)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        newer = loras.apply([(a, 1.0)])
        assert reads[-1] == "style-a.safetensors" and len(reads) == 3
        assert newer[0].adapter != first[0].adapter
        assert len(loras.loaded) == 2
    finally:
        _save(_kohya(targets, 1), a)  # the module's other tests use the original


def test_loras_touching_different_parts_switch_cleanly(pipe, plain, loras, lora_files, targets, tmp_path):
    a, _b = lora_files
    unet_only = _save(
        {k: v for k, v in _kohya(targets, 8).items() if k.startswith("lora_unet_")}, tmp_path / "u.safetensors"
    )
    text_only = _save(
        {k: v for k, v in _kohya(targets, 9).items() if k.startswith("lora_te_")}, tmp_path / "t.safetensors"
    )
    (u,) = loras.apply([(unet_only, 1.0)])
    assert u.parts == ("unet",)
    out_u = _run(pipe)
    loras.apply([(a, 1.0)])  # touches the text encoder too
    loras.apply([(unet_only, 1.0)])
    np.testing.assert_array_equal(_run(pipe), out_u)  # the text encoder's part of `a` is off again
    (t,) = loras.apply([(text_only, 1.0)])
    assert t.parts == ("text_encoder",)
    assert np.abs(_run(pipe) - plain).max() > 1e-3


def test_lora_diffusers_peft_format_and_pt(pipe, plain, loras, targets, tmp_path):
    g = torch.Generator().manual_seed(7)
    unet, text = targets
    sd = {}
    for name, fan_in, fan_out in unet:
        sd[f"unet.{name}.lora_A.weight"] = torch.randn(2, fan_in, generator=g)
        sd[f"unet.{name}.lora_B.weight"] = torch.randn(fan_out, 2, generator=g)
    for name, fan_in, fan_out in text:
        sd[f"text_encoder.{name}.lora_A.weight"] = torch.randn(2, fan_in, generator=g)
        sd[f"text_encoder.{name}.lora_B.weight"] = torch.randn(fan_out, 2, generator=g)
    peft_file = _save(sd, tmp_path / "peft-style.safetensors")
    loras.apply([(peft_file, 1.0)])
    out = _run(pipe)
    assert np.abs(out - plain).max() > 1e-3
    assert set(loras.loaded[0].parts) == {"unet", "text_encoder"}
    pt = tmp_path / "kohya-style.pt"
    torch.save(_kohya(targets, 5), pt)
    loras.apply([(str(pt), 1.0)])
    assert np.abs(_run(pipe) - plain).max() > 1e-3
    loras.apply([])
    np.testing.assert_array_equal(_run(pipe), plain)


def test_diffusers_lora_keeps_its_alpha_from_the_file_metadata(pipe, loras, targets, tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    sd = {k: (torch.tensor(1.0) if k.endswith(".alpha") else v) for k, v in _kohya(targets, 11).items()}
    sd = {k: v for k, v in sd.items() if k.startswith("lora_unet_")}  # alpha 1, rank 4: a quarter of the strength
    (entry,) = loras.apply([(_save(sd, tmp_path / "kohya.safetensors"), 1.0)])
    reference = _run(pipe)
    config = pipe.unet.peft_config[entry.adapter]
    assert (config.r, config.lora_alpha) == (4, 1.0)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet, adapter_name=entry.adapter),
        unet_lora_adapter_metadata=config.to_dict(),
        weight_name="saved.safetensors",
    )
    loras.apply([(tmp_path / "saved.safetensors", 1.0)])
    np.testing.assert_array_equal(_run(pipe), reference)


def test_sdxl_lora_is_refused_and_the_pipeline_is_untouched(pipe, plain, loras, lora_files, tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k in ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", "lora_te1_text_model_encoder_layers_0_mlp_fc1"):
        sd[k + ".lora_down.weight"] = torch.randn(4, 1280, generator=g)
        sd[k + ".lora_up.weight"] = torch.randn(1280, 4, generator=g)
        sd[k + ".alpha"] = torch.tensor(4.0)
    k = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    sd[k + ".lora_down.weight"] = torch.randn(4, 2048, generator=g)
    sd[k + ".lora_up.weight"] = torch.randn(640, 4, generator=g)
    sd[k + ".alpha"] = torch.tensor(4.0)
    xl = _save(sd, tmp_path / "style.safetensors")
    with pytest.raises(ModelError, match=r"^style\.safetensors is a LoRA for SDXL; the loaded model is SD 1\.x$"):
        loras.apply([(xl, 1.0)])
    assert _peft_layers(pipe) == 0 and not loras.loaded
    np.testing.assert_array_equal(_run(pipe), plain)
    # With a LoRA already in use, a refused one leaves that one as it was.
    a, _b = lora_files
    loras.apply([(a, 1.0)])
    out_a = _run(pipe)
    layers = _peft_layers(pipe)
    with pytest.raises(ModelError, match="is a LoRA for SDXL"):
        loras.apply([(a, 1.0), (xl, 1.0)])
    assert _peft_layers(pipe) == layers and len(loras.loaded) == 1
    np.testing.assert_array_equal(_run(pipe), out_a)


def test_lora_of_other_shapes_is_refused(pipe, plain, loras, targets, tmp_path):
    sd = _kohya(targets, 1)
    key = next(k for k in sd if k.startswith("lora_unet_") and k.endswith("attn2_to_k.lora_down.weight"))
    sd[key] = torch.randn(4, 48)  # the tiny model's cross-attention is 32 wide
    bad = _save(sd, tmp_path / "wide.safetensors")
    with pytest.raises(
        ModelError, match=r"^wide\.safetensors does not fit the loaded model \(SD 1\.x\): .*attn2\.to_k"
    ):
        loras.apply([(bad, 1.0)])
    sd = _kohya(targets, 1)
    sd["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch.randn(4, 64)
    sd["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.randn(64, 4)
    extra = _save(sd, tmp_path / "extra.safetensors")
    with pytest.raises(ModelError, match="does not have"):
        loras.apply([(extra, 1.0)])
    assert _peft_layers(pipe) == 0
    np.testing.assert_array_equal(_run(pipe), plain)


def test_broken_lora_files_are_refused(pipe, plain, loras, lora_files, tmp_path):
    a, _b = lora_files
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(open(a, "rb").read()[:-100])
    garbage = tmp_path / "noise.safetensors"
    garbage.write_bytes(os.urandom(4096))
    cut_pt = tmp_path / "cut.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, cut_pt)
    cut_pt.write_bytes(cut_pt.read_bytes()[:50])
    for f, pattern in (
        (empty, r"empty\.safetensors is empty \(0 bytes\)"),
        (truncated, r"cut\.safetensors is damaged or incomplete"),
        (garbage, r"noise\.safetensors is damaged or incomplete"),
        (cut_pt, r"cut\.pt is damaged or incomplete"),
        (tmp_path / "missing.safetensors", r"LoRA not found: missing\.safetensors"),
    ):
        with pytest.raises(ModelError, match=pattern) as info:
            loras.apply([(str(f), 1.0)])
        assert "\n" not in str(info.value)
    assert _peft_layers(pipe) == 0
    np.testing.assert_array_equal(_run(pipe), plain)


def test_hostile_pickle_is_refused_without_running(pipe, loras, tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.alpha": _Hostile(str(target))}, evil)
    assert not target.exists()
    refused = r"^evil\.pt holds program code, not only weights \(io\.open\): .*was not opened"
    with pytest.raises(ModelError, match=refused):
        loras.apply([(str(evil), 1.0)])
    with pytest.raises(ModelError, match=refused):
        addons.load_embeddings(pipe, [evil])
    assert not target.exists()
    assert _peft_layers(pipe) == 0


# ---------------------------------------------------------------------------------------------
# Embeddings


def _embeds(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        pos, _neg = pipe.encode_prompt(prompt, "cpu", 1, False)
    return pos


def test_embedding_adds_its_keyword_and_changes_the_prompt(tiny_model, tmp_path):
    pipe = _load(tiny_model)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    prompt = "a photo in tinystyle"
    before = _embeds(pipe, prompt)
    other = _embeds(pipe, "a photo")
    f = _save(
        {"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(3))},
        tmp_path / "tinystyle.safetensors",
    )
    assert addons.load_embeddings(pipe, [f]) == ["tinystyle"]
    assert "tinystyle" in pipe.tokenizer.get_added_vocab() and "tinystyle_1" in pipe.tokenizer.get_added_vocab()
    after = _embeds(pipe, prompt)
    assert (after - before).abs().max() > 1e-4
    size = len(pipe.tokenizer)
    assert addons.load_embeddings(pipe, [f]) == ["tinystyle"]  # idempotent
    assert len(pipe.tokenizer) == size
    torch.testing.assert_close(_embeds(pipe, prompt), after, rtol=0, atol=0)
    torch.testing.assert_close(_embeds(pipe, "a photo"), other, rtol=0, atol=0)  # prompts without it: as before
    # A1111 .pt and diffusers {token: tensor}
    pt = tmp_path / "oldstyle.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, width)}, "name": "x"}, pt)
    diff = tmp_path / "learned.bin"
    torch.save({"<cat-toy>": torch.randn(width)}, diff)
    # the original textual_inversion code saved a ParameterDict: allowed as a container, nothing of it runs
    orig = tmp_path / "paramdict.pt"
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(2, width))})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, orig)
    assert addons.load_embeddings(pipe, [pt, diff, orig]) == ["oldstyle", "learned", "paramdict"]
    added = pipe.tokenizer.get_added_vocab()
    assert {"oldstyle_2", "learned", "paramdict_1"} <= set(added) and "learned_1" not in added
    assert [e.keyword for e in addons.loaded_embeddings(pipe)] == ["learned", "oldstyle", "paramdict", "tinystyle"]
    row = pipe.text_encoder.get_input_embeddings().weight[added["paramdict_1"]]
    torch.testing.assert_close(row, params["*"].detach()[1])


def test_embedding_keywords_any_case_and_vocabulary_words(tiny_model, tmp_path):
    pipe = _load(tiny_model)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vocab = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    plain_wide = _embeds(pipe, "a widescreen photo")
    g = torch.Generator().manual_seed(4)
    mixed = _save({"emb_params": torch.randn(2, width, generator=g)}, tmp_path / "FoxStyle.safetensors")
    word = _save({"emb_params": torch.randn(1, width, generator=g)}, tmp_path / "wide.safetensors")
    assert addons.load_embeddings(pipe, [mixed, word]) == ["FoxStyle", "wide"]
    tokens = {e.keyword: e.token for e in addons.loaded_embeddings(pipe)}
    assert tokens == {"FoxStyle": "foxstyle", "wide": "<wide>"}  # "wide" is a piece of CLIP's vocabulary
    assert addons.prompt_with_embeddings(pipe, "a FOXSTYLE, wide photo; widescreen") == (
        "a foxstyle, <wide> photo; widescreen"
    )
    # Both vectors of FoxStyle reach the encoder whatever the case in the prompt.
    expanded = pipe.maybe_convert_prompt(addons.prompt_with_embeddings(pipe, "FoxStyle"), pipe.tokenizer)
    assert expanded == "foxstyle foxstyle_1"
    torch.testing.assert_close(
        _embeds(pipe, addons.prompt_with_embeddings(pipe, "a FoxStyle fox")), _embeds(pipe, "a foxstyle fox")
    )
    # No vector of the vocabulary was overwritten: "widescreen" encodes as before.
    torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[: vocab.shape[0]], vocab)
    torch.testing.assert_close(_embeds(pipe, "a widescreen photo"), plain_wide, rtol=0, atol=0)
    assert (_embeds(pipe, "a <wide> photo") - _embeds(pipe, "a wide photo")).abs().max() > 1e-4


def test_wrong_embeddings_are_refused(tiny_model, tmp_path):
    pipe = _load(tiny_model)
    size = len(pipe.tokenizer)
    wide = _save({"emb_params": torch.randn(2, 768)}, tmp_path / "wide.safetensors")
    with pytest.raises(
        ModelError, match=r"^wide\.safetensors has vectors of width 768 \(made for SD 1\.x\); .* width 32$"
    ):
        addons.load_embeddings(pipe, [wide])
    xl = _save({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(ModelError, match=r"^xl\.safetensors is an embedding for SDXL; the loaded model is SD 1\.x$"):
        addons.load_embeddings(pipe, [xl])
    ok = _save({"emb_params": torch.randn(1, 32)}, tmp_path / "fine.safetensors")
    with pytest.raises(ModelError, match="wide.safetensors"):
        addons.load_embeddings(pipe, [ok, wide])  # checked before anything loads
    lora = _save(
        {"lora_unet_a.lora_down.weight": torch.randn(2, 2), "lora_unet_a.lora_up.weight": torch.randn(2, 2)},
        tmp_path / "l.safetensors",
    )
    with pytest.raises(ModelError, match="is not a textual-inversion embedding"):
        addons.load_embeddings(pipe, [lora])
    assert len(pipe.tokenizer) == size


# ---------------------------------------------------------------------------------------------
# VAE


def test_vae_override_changes_pixels_and_restores(tiny_model, pipe, plain, tmp_path):
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(tiny_model, subfolder="vae")
    torch.manual_seed(123)
    other = AutoencoderKL.from_config(config)
    f = _save(other.state_dict(), tmp_path / "other-vae.safetensors")
    vae = addons.load_vae(f, tiny_model, torch.float32)
    own = pipe.vae
    addons.swap_vae(pipe, vae)
    try:
        assert pipe.vae is vae
        swapped = _run(pipe)
        assert np.abs(swapped - plain).max() > 1e-3
        addons.swap_vae(pipe, vae)  # twice: still the model's own one is remembered
        assert addons.own_vae(pipe) is own
    finally:
        addons.restore_vae(pipe)
    assert pipe.vae is own
    np.testing.assert_array_equal(_run(pipe), plain)


def test_wrong_vae_files_are_refused(tiny_model, lora_files, tmp_path):
    from diffusers import AutoencoderKL

    config = dict(AutoencoderKL.load_config(tiny_model, subfolder="vae"))
    config["block_out_channels"] = [32, 32]
    smaller = _save(AutoencoderKL.from_config(config).state_dict(), tmp_path / "small-vae.safetensors")
    with pytest.raises(ModelError, match=r"^small-vae\.safetensors does not fit this model's VAE"):
        addons.load_vae(smaller, tiny_model)
    with pytest.raises(ModelError, match=r"style-a\.safetensors is not a VAE"):
        addons.load_vae(lora_files[0], tiny_model)


def _to_ldm(sd: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original (LDM) layout, ``first_stage_model.``-prefixed."""
    out = {}
    for k, v in sd.items():
        k2 = k
        for a, b in (("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out")):
            k2 = k2.replace(a, b)
        parts = k2.split(".")
        if parts[1] == "down_blocks":
            i, kind, j = parts[2], parts[3], parts[4]
            rest = parts[5:]
            k2 = ".".join(
                [
                    parts[0],
                    "down",
                    i,
                    "block" if kind == "resnets" else "downsample",
                    *([j] if kind == "resnets" else []),
                    *rest,
                ]
            )
        elif parts[1] == "up_blocks":
            i, kind, j = str(n_blocks - 1 - int(parts[2])), parts[3], parts[4]
            rest = parts[5:]
            k2 = ".".join(
                [
                    parts[0],
                    "up",
                    i,
                    "block" if kind == "resnets" else "upsample",
                    *([j] if kind == "resnets" else []),
                    *rest,
                ]
            )
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            k2 = ".".join([parts[0], "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
        elif parts[1] == "mid_block" and parts[2] == "attentions":
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
            rest = [p for p in parts[5:] if p != "0"]
            k2 = ".".join([parts[0], "mid", "attn_1", name, *rest])
            if v.ndim == 2:
                v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + k2] = v
    return out


def test_vae_in_the_original_layout(tiny_model, pipe, plain, tmp_path):
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(tiny_model, subfolder="vae")
    torch.manual_seed(321)
    other = AutoencoderKL.from_config(config)
    ldm = _save(_to_ldm(other.state_dict(), len(config["block_out_channels"])), tmp_path / "ldm-vae.safetensors")
    vae = addons.load_vae(ldm, tiny_model, torch.float32)
    mine, theirs = vae.state_dict(), other.state_dict()
    assert set(mine) == set(theirs)
    for k, v in theirs.items():
        torch.testing.assert_close(mine[k], v, rtol=0, atol=0)


def test_a_failed_load_leaves_no_half_adapter(pipe, plain, loras, lora_files, monkeypatch):
    a, b = lora_files
    loras.apply([(a, 1.0)])
    out_a = _run(pipe)
    layers = _peft_layers(pipe)
    real = addons.LoraSet._load

    def unet_then_fail(self, state_dict, alphas, metadata, adapter, parts):
        real(self, state_dict, alphas, metadata, adapter, ("unet",))  # the U-Net gets it...
        raise RuntimeError("simulated failure in the text encoder\nsecond line")

    monkeypatch.setattr(addons.LoraSet, "_load", unet_then_fail)
    with pytest.raises(
        ModelError, match=r"^Cannot use LoRA style-b\.safetensors: simulated failure in the text encoder$"
    ):
        loras.apply([(a, 1.0), (b, 1.0)])
    assert len(loras.loaded) == 1 and _peft_layers(pipe) == layers
    assert all(len(addons.lora._adapters_of(m)) == 1 for m in (pipe.unet, pipe.text_encoder))
    np.testing.assert_array_equal(_run(pipe), out_a)
    loras.unload()
    with pytest.raises(ModelError, match="simulated failure"):
        loras.apply([(b, 1.0)])
    assert _peft_layers(pipe) == 0
    np.testing.assert_array_equal(_run(pipe), plain)


# ---------------------------------------------------------------------------------------------
# SDXL: two text encoders, kohya's sgm U-Net names


@pytest.fixture(scope="module")
def tiny_sdxl():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from studio.paths import TOKENIZER_DIR

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + the 32-wide pooled text embedding
        cross_attention_dim=64,  # both text encoders, 32 + 32
        norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=64,
    )
    cfg = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(cfg),
        text_encoder_2=CLIPTextModelWithProjection(cfg),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe) -> np.ndarray:
    out = pipe(
        PROMPT,
        num_inference_steps=1,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    return out.images.numpy()


def test_sdxl_lora_and_embedding(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl
    plain = _latents(pipe)
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}

    def add(key, module):
        sd[key + ".lora_down.weight"] = torch.randn(4, module.in_features, generator=g) * 0.5
        sd[key + ".lora_up.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.5
        sd[key + ".alpha"] = torch.tensor(2.0)

    modules = dict(pipe.unet.named_modules())
    # kohya names SDXL's U-Net after the original (sgm) layout: input_blocks.4.1 is down_blocks.1.attentions.0
    for sgm, ours in (("input_blocks_4_1", "down_blocks.1.attentions.0"), ("middle_block_1", "mid_block.attentions.0")):
        for block in range(2):
            for proj in ("attn1.to_q", "attn2.to_k"):
                key = f"lora_unet_{sgm}_transformer_blocks_{block}_{proj.replace('.', '_')}"
                add(key, modules[f"{ours}.transformer_blocks.{block}.{proj}"])
    for prefix, encoder in (("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)):
        for name, m in list(encoder.named_modules()):
            if isinstance(m, torch.nn.Linear) and ".self_attn." in name:
                add(prefix + "text_model_" + name.removeprefix("text_model.").replace(".", "_"), m)
    xl = _save(sd, tmp_path / "xl-style.safetensors")
    loras = addons.LoraSet(pipe)
    try:
        (entry,) = loras.apply([(xl, 1.0)])
        assert entry.parts == ("unet", "text_encoder", "text_encoder_2")
        assert np.abs(_latents(pipe) - plain).max() > 1e-3
        sd1 = {k.replace("lora_te1_", "lora_te_"): v for k, v in sd.items() if k.startswith("lora_te1_")}
        sd1 = {k: (torch.randn(4, 768) if k.endswith("q_proj.lora_down.weight") else v) for k, v in sd1.items()}
        with pytest.raises(ModelError, match=r"^sd1\.safetensors is a LoRA for SD 1\.x; the loaded model is SDXL$"):
            loras.apply([(_save(sd1, tmp_path / "sd1.safetensors"), 1.0)])
        loras.apply([])
        np.testing.assert_array_equal(_latents(pipe), plain)
    finally:
        loras.unload()

    def embeds(prompt):
        with torch.no_grad():
            return pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[
                0
            ]

    before = embeds("a photo of xlstyle")
    emb = _save({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 32)}, tmp_path / "xlstyle.safetensors")
    assert addons.load_embeddings(pipe, [emb]) == ["xlstyle"]
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        assert {"xlstyle", "xlstyle_1"} <= set(tok.get_added_vocab())
    assert (embeds("a photo of xlstyle") - before).abs().max() > 1e-4
    one = _save({"emb_params": torch.randn(2, 32)}, tmp_path / "sd1style.safetensors")
    with pytest.raises(ModelError, match=r"^sd1style\.safetensors is an embedding for .*; the loaded model is SDXL$"):
        addons.load_embeddings(pipe, [one])
