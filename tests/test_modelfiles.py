"""Model files told apart from their headers alone: checkpoints by architecture, VAEs, LoRAs, embeddings,
upscalers; broken files named as such; the library scan of A1111 / ComfyUI trees; the hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.core import filehash, modellibrary
from studio.core.errors import ModelError
from studio.core.modelfiles import classify, detect_checkpoint, pickle_globals, read_header

U = "model.diffusion_model."
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TEXT = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
XL_L = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
XL_G = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


def write(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path))
    return path


def checkpoint(path: Path, text: list[str], in_ch: int = 4, width: int | None = None) -> Path:
    t = {U + "input_blocks.0.0.weight": (8, in_ch, 3, 3), **{k: (1,) for k in text}}
    if width:
        t[U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = (8, width)
    return write(path, t)


@pytest.mark.parametrize(
    ("text", "in_ch", "arch"),
    [
        ([SD1_TEXT], 4, "sd1"),
        ([SD1_TEXT], 9, "sd1-inpaint"),
        ([SD2_TEXT], 4, "sd2"),
        ([SD2_TEXT], 9, "sd2-inpaint"),
        ([SD2_TEXT], 7, "x4-upscaler"),
        ([XL_L, XL_G], 4, "sdxl"),
        ([XL_L, XL_G], 9, "sdxl-inpaint"),
    ],
)
def test_checkpoint_architecture_from_names_and_shapes(tmp_path, text, in_ch, arch):
    f = checkpoint(tmp_path / "m.safetensors", text, in_ch)
    assert detect_checkpoint(read_header(f)) == arch
    m = classify(f)
    assert (m.kind, m.arch, m.size) == ("checkpoint", arch, f.stat().st_size)


@pytest.mark.parametrize(("width", "arch"), [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_a_unet_without_text_encoder_goes_by_cross_attention_width(tmp_path, width, arch):
    assert detect_checkpoint(read_header(checkpoint(tmp_path / "u.safetensors", [], 4, width))) == arch


def test_unknown_layouts_say_what_was_found(tmp_path):
    f = checkpoint(tmp_path / "p2p.safetensors", [SD1_TEXT], 8)
    with pytest.raises(ModelError, match="8-channel U-Net"):
        detect_checkpoint(read_header(f))
    g = write(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (3, 3)})
    m = classify(g)
    assert m.kind == "unknown" and "double_blocks" in m.note and "1 tensors" in m.note
    ref = write(tmp_path / "refiner.safetensors", {U + "input_blocks.0.0.weight": (8, 4, 3, 3),
                                                   "conditioner.embedders.0.model.ln_final.weight": (4,)})
    with pytest.raises(ModelError, match="SDXL refiner"):
        detect_checkpoint(read_header(ref))


def test_broken_files_are_named(tmp_path):
    zero = tmp_path / "zero.safetensors"
    zero.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        read_header(zero)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>404 not found</html>" * 4)
    with pytest.raises(ModelError, match="not a safetensors file"):
        read_header(junk)
    good = checkpoint(tmp_path / "good.safetensors", [SD1_TEXT])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"cut.safetensors is truncated.*download or copy it again"):
        read_header(cut)
    header = tmp_path / "bad-json.safetensors"
    body = b"{not json"
    header.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(ModelError, match="corrupt"):
        read_header(header)
    for f in (zero, junk, cut, header):
        m = classify(f)  # the library never raises: the file is listed as unknown, with the reason
        assert m.kind == "unknown" and m.note


def test_addons_classified(tmp_path):
    kohya = write(tmp_path / "style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": (),
    })
    xl = write(tmp_path / "xl.safetensors", {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)})
    sd2 = write(tmp_path / "two.safetensors", {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)})
    emb = write(tmp_path / "bad-hands.safetensors", {"emb_params": (2, 768)})
    emb_xl = write(tmp_path / "xl-emb.safetensors", {"clip_l": (1, 768), "clip_g": (1, 1280)})
    vae = write(tmp_path / "vae-ft.safetensors", {"encoder.down.0.block.0.conv1.weight": (1,), "decoder.conv_out.bias": (3,)})
    esrgan = write(tmp_path / "4x.safetensors", {"conv_first.weight": (4, 3, 3, 3), "RRDB_trunk.0.RDB1.conv1.weight": (1,)})
    got = {p.stem: (m.kind, m.arch) for p in tmp_path.iterdir() for m in [classify(p)]}
    assert got == {
        kohya.stem: ("lora", "sd1"),
        xl.stem: ("lora", "sdxl"),
        sd2.stem: ("lora", "sd2"),
        emb.stem: ("embedding", "sd1"),
        emb_xl.stem: ("embedding", "sdxl"),
        vae.stem: ("vae", ""),
        esrgan.stem: ("upscaler", ""),
    }


def test_pickles_are_read_without_running_them(tmp_path):
    marker = tmp_path / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = tmp_path / "model.ckpt"
    torch.save({"state_dict": {U + "input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3), SD1_TEXT: torch.zeros(1)}}, good)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {U + "x": torch.zeros(1)}, "x": Evil()}, evil)
    assert not marker.exists()
    assert classify(good).arch == "sd1"
    assert "io.open" in pickle_globals(evil)
    classify(evil)
    assert not marker.exists()


def test_library_scans_a1111_and_comfyui_trees(tmp_path):
    a1111 = tmp_path / "webui" / "models"
    checkpoint(a1111 / "Stable-diffusion" / "dream.safetensors", [SD1_TEXT])
    write(a1111 / "Lora" / "sub" / "ink.safetensors", {"lora_unet_x_to_q.lora_down.weight": (4, 8)})
    write(a1111 / "VAE" / "vae-ft-mse.safetensors", {"encoder.conv_in.weight": (1,), "decoder.conv_in.weight": (1,)})
    write(a1111 / "ESRGAN" / "4x-Ultra.safetensors", {"model.0.weight": (1,)})
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, a1111 / "embedding-in-models.pt")
    comfy = tmp_path / "ComfyUI" / "models"
    checkpoint(comfy / "checkpoints" / "xl.safetensors", [XL_L, XL_G])
    (comfy / "embeddings").mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, comfy / "embeddings" / "easyneg.pt")
    (comfy / "upscale_models").mkdir(parents=True)
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}}, comfy / "upscale_models" / "x.pth")
    (comfy / "checkpoints" / "notes.txt").write_text("not a model")
    items = modellibrary.scan([a1111, comfy])
    got = {m.path.name: (m.kind, m.arch) for m in items}
    assert got == {
        "dream.safetensors": ("checkpoint", "sd1"),
        "xl.safetensors": ("checkpoint", "sdxl"),
        "vae-ft-mse.safetensors": ("vae", ""),
        "ink.safetensors": ("lora", ""),
        "embedding-in-models.pt": ("embedding", ""),
        "easyneg.pt": ("embedding", ""),
        "4x-Ultra.safetensors": ("upscaler", ""),
        "x.pth": ("upscaler", ""),
    }
    assert [m.kind for m in items] == sorted((m.kind for m in items), key=modellibrary.KINDS.index)
    assert modellibrary.find(items, "INK", "lora").path.name == "ink.safetensors"


def test_library_rescan_reads_only_changed_files(tmp_path, monkeypatch):
    checkpoint(tmp_path / "a.safetensors", [SD1_TEXT])
    checkpoint(tmp_path / "b.safetensors", [SD2_TEXT])
    modellibrary.clear_cache()
    calls: list[str] = []
    real = modellibrary.classify
    monkeypatch.setattr(modellibrary, "classify", lambda p: calls.append(Path(p).name) or real(p))
    modellibrary.scan([tmp_path])
    assert sorted(calls) == ["a.safetensors", "b.safetensors"]
    calls.clear()
    modellibrary.scan([tmp_path])
    assert calls == []
    checkpoint(tmp_path / "b.safetensors", [XL_L, XL_G])
    os.utime(tmp_path / "b.safetensors", ns=(1, 1))
    items = modellibrary.scan([tmp_path])
    assert calls == ["b.safetensors"] and {m.arch for m in items} == {"sd1", "sdxl"}


def test_hashes_as_a1111_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))
    filehash.forget()
    f = write(tmp_path / "lora.safetensors", {"lora_unet_a.lora_down.weight": (2, 3)})
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert filehash.file_hash(f) == hashlib.sha256(raw).hexdigest()
    assert filehash.lora_short_hash(f) == hashlib.sha256(raw[8 + n :]).hexdigest()[:12]
    assert filehash.model_short_hash(f) == hashlib.sha256(raw).hexdigest()[:10]
    stored = json.loads((tmp_path / "data" / "hashes.json").read_text())
    assert stored[str(f.resolve())]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["hashes.json"]  # written atomically: no temp left
    # A new process (forget) reads the digests from the disk cache, not the file.
    filehash.forget()
    monkeypatch.setattr(filehash, "_digest", lambda *a: pytest.fail("hashed again"))
    assert filehash.lora_short_hash(f) == hashlib.sha256(raw[8 + n :]).hexdigest()[:12]
    monkeypatch.undo()
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))
    # A changed file is hashed again.
    f.write_bytes(raw[:8 + n] + bytes(len(raw) - 8 - n))
    os.utime(f, ns=(5, 5))
    assert filehash.file_hash(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    filehash.forget()


def test_cli_lists_every_kind_and_the_picker_only_checkpoints(tmp_path, capsys, monkeypatch):
    from studio.cli import main
    from studio.session.library import model_choices

    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "ComfyUI" / "models"
    checkpoint(root / "checkpoints" / "dream.safetensors", [SD1_TEXT])
    checkpoint(root / "checkpoints" / "xl-inpaint.safetensors", [XL_L, XL_G], 9)
    write(root / "loras" / "ink.safetensors", {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)})
    write(root / "vae" / "ft.safetensors", {"encoder.conv_in.weight": (1,), "decoder.conv_in.weight": (1,)})
    assert main(["models", "--folder", str(root), "--hashes"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    by_name = {r[4]: r for r in rows}
    assert by_name["dream"][:2] == ["checkpoint", "SD 1.x"]
    assert by_name["xl-inpaint"][:2] == ["checkpoint", "SDXL inpainting"]
    assert by_name["ink"][:2] == ["lora", "SDXL"] and len(by_name["ink"][3]) == 12
    assert by_name["ft"][0] == "vae" and len(by_name["ft"][3]) == 10
    assert main(["models", "--folder", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err

    labels = dict((v, label) for label, v in model_choices([str(root)]))
    picked = {Path(v).name for v in labels if v}
    assert {"dream.safetensors", "xl-inpaint.safetensors"} <= picked
    assert not picked & {"ink.safetensors", "ft.safetensors", "swinir-x4.safetensors"}
    dream = next(v for v in labels if v.endswith("dream.safetensors"))
    assert "SD 1.x" in labels[dream] and "KB" in labels[dream]


def test_cli_adds_a_model_folder_to_the_settings(tmp_path, capsys, monkeypatch):
    from studio.cli import main
    from studio.settings import Settings

    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    root = tmp_path / "webui" / "models"
    checkpoint(root / "Stable-diffusion" / "dream.safetensors", [SD1_TEXT])
    assert main(["models", "--add", str(root)]) == 0
    assert Settings.load().model_folders == [str(root.resolve())]
    assert "dream" in capsys.readouterr().out
    assert main(["models"]) == 0  # from the settings now, with no --folder
    assert "dream" in capsys.readouterr().out
    assert main(["models", "--add", str(tmp_path / "nowhere")]) == 2
    assert Settings.load().model_folders == [str(root.resolve())]
