"""The command-line interface: paths on stdout, metadata in the files, one clear line and exit 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.core.metadata import read_parameters, request_fields
from studio.core.samplers import SAMPLER_NAMES


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
    assert "Traceback" not in p.stderr and "model.safetensors is truncated" in p.stderr


def test_info_on_image_without_parameters(capsys, tmp_path):
    f = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(f)
    code, out, err = run(capsys, "info", str(f))
    assert code == 1 and out == "" and "no generation parameters" in err


# --------------------------------------------------------------------------------------------
# inpaint and outpaint


def _inpaint_files(tmp_path, size=(48, 40), mode="L"):
    rng = np.random.default_rng(3)
    w, h = size
    src = tmp_path / "in.png"
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(src)
    m = np.zeros((h, w), np.uint8)
    m[12:28, 16:32] = 255
    mask = tmp_path / "mask.png"
    if mode == "RGBA":  # white paint on a transparent sheet: where alpha is 0 nothing is painted
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = m
        Image.fromarray(rgba, "RGBA").save(mask)
    else:
        Image.fromarray(m).convert(mode).save(mask)
    return src, mask, image, m


@pytest.mark.parametrize("mask_mode", ["L", "RGB", "RGBA"])
def test_inpaint_prints_the_path_keeps_the_size_and_the_rest_of_the_image(capsys, tiny_inpaint_model, tmp_path,
                                                                           mask_mode):  # fmt: skip
    from studio.core.inpaint import feather

    src, mask, image, m = _inpaint_files(tmp_path, mode=mask_mode)
    code, out, err = run(
        capsys, "inpaint", "--model", tiny_inpaint_model, "--image", str(src), "--mask", str(mask), "--prompt", "x",
        "--steps", "2", "--seed", "5", "--mask-blur", "2", "--area", "masked", "--padding", "4", "--fill", "fill",
        "--strength", "0.9", "--width", "32", "--height", "32", "--out", str(tmp_path / "o"), "-q",
    )  # fmt: skip
    assert code == 0, err
    p = Path(out.strip())
    assert out == f"{p}\n" and p.is_file()
    result = np.asarray(Image.open(p).convert("RGB"))
    assert result.shape == image.shape
    outside = feather(m, 2) == 0
    assert np.array_equal(result[outside], image[outside])
    assert not np.array_equal(result[m == 255], image[m == 255])
    text = read_parameters(p)
    assert ("Denoising strength: 0.9, Mask blur: 2, Inpaint area: Only masked, Masked area padding: 4, "
            "Masked content: fill") in text  # fmt: skip
    f = request_fields(text)
    assert (f["mode"], f["mask_blur"], f["inpaint_area"], f["inpaint_padding"], f["masked_content"]) == (
        "inpaint", 2, "masked", 4, "fill")  # fmt: skip


def test_outpaint_extends_the_image(capsys, tiny_model, tmp_path):
    src, _, image, _ = _inpaint_files(tmp_path)
    code, out, err = run(
        capsys, "outpaint", "--model", tiny_model, "--image", str(src), "--right", "16", "--top", "8",
        "--overlap", "8", "--prompt", "x", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "o"), "-q",
    )  # fmt: skip
    assert code == 0, err
    result = np.asarray(Image.open(out.strip()).convert("RGB"))
    assert result.shape == (48, 64, 3)
    assert np.array_equal(result[8 + 8 :, : 48 - 8], image[8:, : 48 - 8])  # the old image, away from the seams
    assert not np.array_equal(result[:8], np.zeros_like(result[:8]))
    assert "Mask blur: 0" in read_parameters(out.strip())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["inpaint", "--mask", "{small}"], "The mask is 10x8 but the image is 48x40"),
        (["inpaint", "--mask", "{empty}"], "The mask is empty"),
        (["inpaint", "--mask", "{junk}"], "Cannot read mask"),
        (["inpaint", "--mask", "{missing}"], "Mask not found"),
        (["inpaint", "--mask", "{mask}", "--image", "{junk}"], "Cannot read image"),
        (["inpaint", "--mask", "{mask}", "--padding", "-3"], "Masked area padding"),
        (["outpaint", "--right", "4100"], "at most 4096"),
        (["outpaint", "--left", "-8"], "0 or more"),
        (["outpaint"], "Nothing to outpaint"),
        (["outpaint", "--image", "{junk}", "--left", "8"], "Cannot read image"),
    ],
)
def test_inpaint_and_outpaint_bad_input_exit_2_and_write_nothing(capsys, tiny_inpaint_model, tmp_path, argv, message):
    src, mask, _, _ = _inpaint_files(tmp_path)
    files = {"mask": mask, "missing": tmp_path / "nope.png", "junk": tmp_path / "junk.png",
             "small": tmp_path / "small.png", "empty": tmp_path / "empty.png"}  # fmt: skip
    files["junk"].write_bytes(b"this is not an image")
    Image.new("L", (10, 8), 255).save(files["small"])
    Image.new("L", (48, 40), 0).save(files["empty"])
    argv = [a.format(**files) for a in argv]
    if "--image" not in argv:
        argv += ["--image", str(src)]
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, *argv, "--model", tiny_inpaint_model, "--prompt", "x", "--out", str(out_dir), "-q")
    assert code == 2
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out_dir.exists()


# --------------------------------------------------------------------------------------------
# `studio` / `python -m studio`: an unknown command or window option is an error, never the window

_NO_QT = (
    "import sys, studio.__main__ as m; code = m.main(sys.argv[1:]); print('PySide6' in sys.modules); sys.exit(code)"
)


def _run_studio(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *argv], capture_output=True, text=True, timeout=60)


def test_unknown_command_exits_2_with_one_line_and_no_window():
    p = _run_studio("inpant", "--image", "x.png")
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert "unknown command 'inpant'" in lines[0]
    assert "generate" in lines[0] and "img2img" in lines[0]


def test_unknown_command_imports_no_qt():
    p = subprocess.run(
        [sys.executable, "-c", _NO_QT, "inpant", "--image", "x.png"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert p.stdout.strip() == "False"  # PySide6 was never imported
    assert len(p.stderr.splitlines()) == 1


def test_unknown_command_in_process(capsys):
    from studio.__main__ import main as studio_main

    qt_before = "PySide6" in sys.modules
    assert studio_main(["inpant", "--image", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generate" in err
    if not qt_before:
        assert "PySide6" not in sys.modules


def test_unknown_window_option_exits_2_with_one_line():
    p = _run_studio("--bogus")
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.splitlines() == ["studio: error: unrecognized arguments: --bogus"]


def test_unknown_window_option_in_process(capsys):
    from studio.__main__ import main as studio_main

    with pytest.raises(SystemExit) as exc:
        studio_main(["--model", "m", "--bogus"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_cli_main_rejects_an_unknown_command_too(capsys):
    code, out, err = run(capsys, "inpant")
    assert code == 2 and out == ""
    assert err.startswith("studio: error: unknown command 'inpant' (commands: generate, img2img,")


def test_command_names_come_from_the_parser():
    from studio.cli import build_parser, command_names

    names = command_names()
    assert names[:2] == ("generate", "img2img")
    assert {"samplers", "schedules", "info", "make-tiny-model"} <= set(names)
    assert {"train-vae", "train-unet", "export", "fit-preview", "evaluate"} <= set(names)  # training, registered too
    parser = build_parser()
    for name in names:  # each one parses as that command
        assert parser.parse_args([name, *_REQUIRED.get(name, [])]).command == name


_REQUIRED = {
    "generate": ["--prompt", "x"],
    "img2img": ["--prompt", "x", "--image", "x.png"],
    "inpaint": ["--prompt", "x", "--image", "x.png", "--mask", "m.png"],
    "outpaint": ["--prompt", "x", "--image", "x.png"],
    "upscale": ["--image", "x.png"],
    "grid": ["--prompt", "x"],
    "info": ["x.png"],
    "make-tiny-model": ["out"],
    "export-vae-gan": ["--run-dir", "r"],
    "export-upscaler-vae-gan": ["--run-dir", "r"],
    "evaluate-vae": ["--vae", "v"],
}


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (the CLI matches it by name)."""


@pytest.mark.parametrize("exc", [MemoryError(), OutOfMemoryError("CUDA out of memory.\nTried to allocate 2 GiB")])
def test_out_of_memory_is_the_one_message(capsys, monkeypatch, exc):
    import studio.cli
    from studio.core.errors import OUT_OF_MEMORY

    def boom(path):
        raise exc

    monkeypatch.setattr(studio.cli, "_info", boom)
    code, out, err = run(capsys, "info", "x.png")
    assert code == 1 and out == ""
    assert err.splitlines() == [f"studio: error: {OUT_OF_MEMORY}"]


def test_unexpected_error_is_one_line(capsys, monkeypatch):
    import studio.cli

    def boom(path):
        raise RuntimeError("first\nsecond")

    monkeypatch.setattr(studio.cli, "_info", boom)
    code, _, err = run(capsys, "info", "x.png")
    assert code == 1
    assert err.splitlines() == ["studio: unexpected error (RuntimeError): first"]


def test_known_command_still_runs_through_python_m_studio():
    p = _run_studio("samplers")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == list(SAMPLER_NAMES)


def test_cli_parser_imports_no_torch_or_qt():
    code = (
        "import sys; from studio.cli import command_names; command_names(); "
        "print([m for m in ('torch', 'diffusers', 'transformers', 'PySide6') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# upscale


def _smooth_png(tmp_path, size=(32, 24), name="low.png") -> tuple[Path, np.ndarray]:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([40 + 160 * xx / (w - 1), 40 + 160 * yy / (h - 1), 100 + 0 * xx], -1).round().astype(np.uint8)
    p = tmp_path / name
    Image.fromarray(a).save(p)
    return p, a


def _lanczos(a: np.ndarray, size) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))


def test_upscale_resize_prints_the_path_and_records_the_upscale(capsys, tmp_path):
    src, a = _smooth_png(tmp_path)
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "resize", "--scale", "2.5",
                         "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert code == 0, err
    assert err == ""
    (p,) = [Path(x) for x in out.splitlines()]
    with Image.open(p) as im:
        assert np.array_equal(np.asarray(im), _lanczos(a, (80, 60)))
    f = request_fields(read_parameters(p))
    assert (f["mode"], f["upscale_mode"], f["scale"], f["upscaler"]) == ("upscale", "resize", 2.5, None)
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "resize", "--width", "72", "--height", "40",
                         "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert code == 0, err
    assert Image.open(out.strip()).size == (72, 40)
    f = request_fields(read_parameters(out.strip()))
    assert (f["width"], f["height"]) == (72, 40)


def test_upscale_diffusion_defaults_to_strength_0_3(capsys, tmp_path, tiny_model):
    src, _ = _smooth_png(tmp_path, (32, 32))
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "diffusion", "--model", tiny_model,
                         "--prompt", "a cat", "--steps", "4", "--seed", "3", "--sampler", "Euler",
                         "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0, err
    assert "tile 1/1, step 1/1" in err  # progress on stderr, the path alone on stdout
    (p,) = out.splitlines()
    assert Image.open(p).size == (64, 64)
    text = read_parameters(p)
    assert "Denoising strength: 0.3" in text and "Upscale mode: diffusion" in text and "Size: 32x32" in text
    f = request_fields(text)
    assert (f["prompt"], f["seed"], f["steps"], f["sampler"], f["scale"]) == ("a cat", 3, 4, "Euler", 2.0)


def test_upscale_latent_with_the_x4_layout(capsys, tmp_path, tiny_x4_model):
    src, _ = _smooth_png(tmp_path, (16, 16))
    code, out, err = run(capsys, "upscale", "--image", str(src), "--model", tiny_x4_model, "--mode", "latent",
                         "--scale", "4", "--steps", "2", "--seed", "1", "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert code == 0, err
    assert Image.open(out.strip()).size == (64, 64)
    text = read_parameters(out.strip())
    assert "Hires upscaler: Latent" in text and "Denoising strength: 1," in text and "Model: tiny-x4" in text


def test_upscale_with_an_upscaler_model(capsys, tmp_path, tiny_sr_file):
    src, _ = _smooth_png(tmp_path)
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "model", "--upscaler", tiny_sr_file,
                         "--scale", "4", "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert code == 0, err
    assert Image.open(out.strip()).size == (128, 96)
    assert "Hires upscaler: tiny-compact-x4" in read_parameters(out.strip())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scale", "9"], "between 1 and 8"),
        (["--image", "/nonexistent/low.png"], "Image not found"),
        (["--mode", "model", "--upscaler", "/nonexistent/4x.pth"], "Upscaler not found"),
        (["--mode", "model", "--upscaler", "JUNK"], "junk.safetensors"),
        (["--mode", "latent", "--model", "SD"], "needs an x4 upscaler model"),
        (["--mode", "diffusion", "--model", "X4"], "is an x4 upscaler model"),
        (["--mode", "diffusion", "--model", "SD", "--steps", "2"], "run no step"),  # 2 x 0.3 < 1
        (["--mode", "resize", "--upscaler", "JUNK"], "--upscaler is for --mode model or diffusion"),
        (["--width", "64"], "--width and --height together"),
        (["--mode", "resize", "--width", "9000", "--height", "64"], "out of range"),
        (["--image", "BIG", "--scale", "5"], "too large"),
        (["--mode", "resize", "--tile", "16"], "tile size"),
        (["--mode", "sideways"], "invalid choice"),
    ],
)
def test_upscale_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, request, args, message):
    src, _ = _smooth_png(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an upscaler")
    names = {"JUNK": str(junk), "BIG": str(_smooth_png(tmp_path, (1700, 1000), "big.png")[0])}
    if "SD" in args:
        names["SD"] = request.getfixturevalue("tiny_model")
    if "X4" in args:
        names["X4"] = request.getfixturevalue("tiny_x4_model")
    argv = ["upscale", "--image", str(src), *[names.get(a, a) for a in args], "--out", str(tmp_path / "o"), "-q"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (OneLineParser: one line, exit 2)
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize("device,message", [("banana", "Unknown device banana: use cpu, cuda or mps"),
                                            ("cuda", "This PyTorch has no CUDA: use --device cpu")])  # fmt: skip
def test_a_bad_device_is_refused_with_one_line_before_any_work(capsys, monkeypatch, tmp_path, device, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr("studio.engine.loader.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, out, err = run(capsys, "generate", "--prompt", "x", "--steps", "1", "--device", device,
                         "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert (code, out) == (2, "")
    assert err.strip() == f"studio: error: {message}"
    assert not (tmp_path / "o").exists()


def test_deeply_nested_emphasis_is_refused_not_a_black_image(capsys, tiny_model, tmp_path):
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "(" * 5000 + "cat" + ")" * 5000,
                         "--steps", "1", "--width", "32", "--height", "32", "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert (code, out) == (2, ""), err
    assert "limit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
