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
    from safetensors.torch import save_file
    import torch

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
