"""The command-line interface: paths on stdout, metadata in the files, one clear line and exit 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.engine.metadata import read_parameters, request_fields
from studio.engine.samplers import SAMPLER_NAMES


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_samplers_lists_names(capsys):
    code, out, _ = run(capsys, "samplers")
    assert code == 0
    assert out.splitlines() == list(SAMPLER_NAMES)
    assert len(out.splitlines()) >= 12


def test_generate_prints_only_paths_and_writes_metadata(capsys, tiny_model, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "generate", "--model", tiny_model, "--prompt", 'a "red", circle: é', "--negative", "blue",
        "--sampler", "DPM++ 2M", "--schedule", "Karras", "--steps", "3", "--cfg", "6.5", "--seed", "42",
        "--width", "32", "--height", "40", "--batch", "2", "--out", str(out_dir), "-q",
    )  # fmt: skip
    assert code == 0, err
    paths = [Path(p) for p in out.splitlines()]
    assert len(paths) == 2 and all(p.parent == out_dir and p.is_file() for p in paths)
    im = Image.open(paths[0])
    assert im.size == (32, 40)
    fields = request_fields(read_parameters(paths[0]))
    assert fields["prompt"] == 'a "red", circle: é'
    assert fields["negative_prompt"] == "blue"
    assert (fields["sampler"], fields["schedule"], fields["steps"], fields["cfg"]) == ("DPM++ 2M", "Karras", 3, 6.5)
    assert (fields["seed"], fields["width"], fields["height"]) == (42, 32, 40)
    assert request_fields(read_parameters(paths[1]))["seed"] == 43
    code, out, _ = run(capsys, "info", str(paths[0]))
    assert code == 0 and "Seed: 42" in out and out.startswith('a "red", circle: é')


def test_img2img(capsys, tiny_model, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(src)
    code, out, err = run(
        capsys, "img2img", "--model", tiny_model, "--image", str(src), "--strength", "0.5", "--prompt", "x",
        "--steps", "4", "--seed", "1", "--out", str(tmp_path / "o"), "-q",
    )  # fmt: skip
    assert code == 0, err
    p = Path(out.strip())
    assert Image.open(p).size == (32, 32)
    assert "Denoising strength: 0.5" in read_parameters(p)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "/nonexistent/model"], "Model not found"),
        (["--width", "30"], "not a multiple of 8"),
        (["--sampler", "Bogus"], "Unknown sampler"),
        (["--steps", "0"], "Steps must be"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tiny_model, args, message):
    argv = ["generate", "--prompt", "x", "--model", tiny_model, *args]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_unreadable_image_and_missing_model_folder(capsys, tmp_path, tiny_model):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, _, err = run(capsys, "img2img", "--model", tiny_model, "--image", str(bad), "--prompt", "x")
    assert code == 2 and "Cannot read image" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "generate", "--model", str(empty), "--prompt", "x", "--out", str(tmp_path))
    assert code == 2 and "no model_index.json" in err and len(err.strip().splitlines()) == 1


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"junk")
    p = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--model", str(bad), "--prompt", "x", "--out", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2
    assert p.stdout == ""
    assert "Traceback" not in p.stderr and "single-file" in p.stderr


def test_info_on_image_without_parameters(capsys, tmp_path):
    f = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(f)
    code, out, err = run(capsys, "info", str(f))
    assert code == 1 and out == "" and "no generation parameters" in err
