"""Hostile files in the model folders: a crafted ``.safetensors`` header breaks nothing but itself, and a pickle that
gets past the opcode pre-scan is still refused by torch with the one security wording, its payload never run."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from studio.core import modellibrary
from studio.core.modelfiles import classify


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """A model folder holding a good checkpoint-less VAE and the two crafted headers of the issue."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "models"
    folder.mkdir()
    # 80 bytes or so: a shape of 1e400 (json gives float inf, which int() cannot take).
    _safetensors(folder / "inf-shape.safetensors", b'{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}', bytes(4))
    # Nested 100000 deep: json's decoder runs out of recursion.
    _safetensors(folder / "deep.safetensors", b"[" * 100000)
    save_file({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_in.weight": torch.zeros(1)},
              str(folder / "good-vae.safetensors"))  # fmt: skip
    modellibrary.clear_cache()
    return folder


@pytest.mark.parametrize("name", ["inf-shape.safetensors", "deep.safetensors"])
def test_a_crafted_header_is_an_unknown_file_with_a_reason(bad_folder, name):
    found = classify(bad_folder / name)
    assert found.kind == "unknown"
    assert name in found.note and len(found.note.splitlines()) == 1 and len(found.note) < 300


def test_a_negative_or_fractional_shape_is_refused(tmp_path):
    for i, shape in enumerate((b"[-1]", b"[1.5]", b"[true]", b'["4"]')):
        f = _safetensors(tmp_path / f"s{i}.safetensors", b'{"w":{"dtype":"F32","shape":' + shape
                         + b',"data_offsets":[0,4]}}', bytes(4))  # fmt: skip
        assert classify(f).kind == "unknown", shape


def test_studio_models_lists_them_as_not_loadable_and_the_good_ones(bad_folder, tmp_path, capsys, monkeypatch):
    from studio.cli import main

    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    assert main(["models", "--folder", str(bad_folder)]) == 0
    out, err = capsys.readouterr()
    rows = {r.split("\t")[-2]: r.split("\t") for r in out.splitlines()}
    assert rows["inf-shape"][0] == "unknown" and rows["deep"][0] == "unknown"
    assert rows["good-vae"][0] == "vae"
    assert "builtin" in rows  # the rest of the library is listed as ever
    assert "inf-shape.safetensors" in err and "deep.safetensors" in err and "Traceback" not in err


def test_models_add_scans_the_folder_before_saving_it(bad_folder, tmp_path, capsys, monkeypatch):
    from studio.cli import main
    from studio.settings import Settings

    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    assert main(["models", "--add", str(bad_folder)]) == 0
    assert Settings.load().model_folders == [str(bad_folder.resolve())]
    capsys.readouterr()
    # A folder the scan cannot get through is not saved (the next start would meet the same failure).
    modellibrary.clear_cache()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setattr(modellibrary, "classify", lambda p: (_ for _ in ()).throw(RecursionError("deep")))
    (other / "x.safetensors").write_bytes(b"x" * 16)
    assert main(["models", "--add", str(other)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "other" in err
    assert Settings.load().model_folders == [str(bad_folder.resolve())]


def test_the_window_model_list_builds(bad_folder):
    from studio.session.library import model_choices

    labels = {Path(v).name: label for label, v in model_choices([str(bad_folder)])}
    assert "not loadable" in labels["inf-shape.safetensors"] and "not loadable" in labels["deep.safetensors"]
    assert "good-vae.safetensors" not in labels  # a VAE is not a model to pick
    assert labels[""].startswith("Built-in")


def test_a_generation_with_the_builtin_model_works(bad_folder, tmp_path, capsys, monkeypatch):
    from studio.cli import main
    from studio.settings import Settings

    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(tmp_path / "config"))
    settings = Settings.load()
    settings.model_folders = [str(bad_folder)]
    settings.save()
    code = main(["generate", "--prompt", "a red circle", "--steps", "1", "--width", "32", "--height", "32",
                 "--seed", "1", "--out", str(tmp_path / "out"), "-q"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert Path(out.strip()).is_file()


# ---------------------------------------------------------------------------------------------
# Pickles that get past the opcode pre-scan (modelfiles.pickle_globals): torch refuses them, and its refusal is
# the security refusal, whatever kind of file it was.


def _text(s: str) -> bytes:  # BINUNICODE: a string torch's weights-only unpickler reads
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _stack_global(marker: Path) -> bytes:
    """io.open(marker, "w") imported with STACK_GLOBAL from strings fetched back from the memo, while the last two
    strings pushed name a tensor-rebuilding function: a scan taking "the last two strings" sees only those."""
    return (
        b"\x80\x02(" + _text("io") + b"q\x00" + _text("open") + b"q\x01"
        + _text("torch._utils") + _text("_rebuild_tensor_v2") + b"t"  # the decoys, kept in a tuple
        + b"h\x00h\x01\x93" + _text(str(marker)) + _text("w") + b"\x86R."
    )  # fmt: skip


def _protocol_0(marker: Path) -> bytes:
    """The same call in protocol 0 text (GLOBAL, MARK, TUPLE, REDUCE)."""
    return b"cio\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def _torch_zip(path: Path, data_pkl: bytes, decoy: bytes | None = None) -> Path:
    """A torch zip file whose archive/data.pkl is `data_pkl`; `decoy`: a harmless pickle stored first under another
    name that also ends in data.pkl (the one a scan of "the first *data.pkl" reads; torch reads archive/data.pkl)."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        if decoy is not None:
            dst.writestr("archive/decoy_data.pkl", decoy)
        for info in src.infolist():
            dst.writestr(info.filename, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return path


def _legacy(path: Path, payload: bytes) -> Path:
    """The pre-zip torch format: magic number, protocol and system pickles, then the object's; a scan that stops at
    the first STOP reads only the magic number."""
    import pickle

    head = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                           "type_sizes": {"short": 2, "int": 4, "long": 4}}]  # fmt: skip
    path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in head) + payload)
    return path


EVASIONS = {
    "stack-global": lambda p, m: _torch_zip(p, _stack_global(m)),
    "decoy-data-pkl": lambda p, m: _torch_zip(p, _protocol_0(m), decoy=b"\x80\x02}q\x00."),
    "legacy-after-magic": lambda p, m: _legacy(p, _protocol_0(m)),
}


def test_the_crafted_pickles_are_live_and_get_past_the_pre_scan(tmp_path):
    import pickle

    from studio.engine.singlefile import check_pickle

    for way, make in EVASIONS.items():
        f = make(tmp_path / f"{way}.pt", tmp_path / f"{way}.pwned")
        check_pickle(f)  # the pre-scan finds nothing wrong: the refusal below is torch's
    live = tmp_path / "live.txt"  # run by plain pickle, the payload would create its file
    pickle.loads(_stack_global(live)).close()
    pickle.loads(_protocol_0(live.with_suffix(".0"))).close()
    assert live.exists() and live.with_suffix(".0").exists()


@pytest.fixture(scope="module")
def sd_pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)  # fmt: skip


def _loaders(pipe, tiny_model):
    """kind -> (file suffix, a function that loads a file as that kind)."""
    import torch

    from studio.engine import addons, upscalers
    from studio.engine.singlefile import load_single_file

    return {
        "checkpoint": (".ckpt", lambda p: load_single_file(p, "sd1", dtype=torch.float32)),
        "LoRA": (".pt", lambda p: addons.LoraSet(pipe).apply([(p, 1.0)])),
        "embedding": (".pt", lambda p: addons.load_embeddings(pipe, [p])),
        "VAE": (".pt", lambda p: addons.load_vae(p, tiny_model)),
        "upscaler": (".pth", upscalers.load_upscaler),
        "upscaler state dict": (".pth", upscalers.read_state_dict),
    }


@pytest.mark.parametrize("way", list(EVASIONS))
def test_a_pickle_past_the_pre_scan_gets_the_security_refusal_as_every_kind(way, sd_pipe, tiny_model, tmp_path):
    from studio.core.errors import ModelError

    marker = tmp_path / "pwned.txt"
    for kind, (suffix, load) in _loaders(sd_pipe, tiny_model).items():
        f = EVASIONS[way](tmp_path / f"evil{suffix}", marker)
        with pytest.raises(ModelError) as info:
            load(f)
        message = str(info.value)
        assert message.startswith(f"evil{suffix} holds program code, not only weights"), (kind, message)
        assert "was not opened; use a .safetensors version of it" in message and "\n" not in message, kind
        assert not marker.exists(), kind
