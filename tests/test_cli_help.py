"""The CLI as a new artist meets it: typos answered with a suggestion, a main help without the training commands,
help text for every option, an upscale that keeps the source's prompt, an installer that prints no red ERROR."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.cli import build_parser, command_names, main
from studio.core.metadata import read_parameters, request_fields

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ("train-vae", "train-unet", "export", "fit-preview", "evaluate", "train-swinir", "export-swinir",
            "train-latent-upscaler", "export-latent-upscaler", "train-tiny-decoder", "showcase", "train-controlnet",
            "export-controlnet", "evaluate-control", "train-vae-gan", "export-vae-gan", "evaluate-vae",
            "train-upscaler-vae-gan", "export-upscaler-vae-gan")  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("typo,meant", [("generat", "generate"), ("upscal", "upscale"), ("train-vea", "train-vae")])
def test_a_mistyped_command_gets_a_suggestion(capsys, typo, meant):
    code, out, err = run(capsys, typo, "--prompt", "x")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert f"unknown command {typo!r}" in err and f"did you mean {meant!r}?" in err


def test_a_word_like_no_command_gets_no_suggestion(capsys):
    code, _, err = run(capsys, "zzzzzz")
    assert code == 2
    assert "did you mean" not in err and "generate" in err


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_the_main_help_keeps_the_training_commands_in_a_section_of_their_own():
    text = build_parser().format_help()
    main_part, sep, training_part = text.partition("training commands")
    assert sep, text
    for name in TRAINING:
        assert not re.search(rf"(?m)^\s+{re.escape(name)}\s", main_part), name  # not among the artist's commands
        assert re.search(rf"(?m)^\s+{re.escape(name)}\s+\S", training_part), name  # listed with its help
    assert "train-vae" not in text.splitlines()[0]  # the usage line neither
    assert re.search(r"(?m)^\s+generate\s+text to image", main_part)
    assert set(TRAINING) <= set(command_names())  # still commands under their names
    parser = build_parser()
    assert parser.parse_args(["train-vae", "--preset", "tiny"]).command == "train-vae"


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for name, sub in [("studio", parser), *_subparsers(parser).choices.items()]:
        for action in sub._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_a_resize_upscale_keeps_the_source_prompt(capsys, tmp_path):
    src = tmp_path / "src.png"
    info = PngInfo()
    info.add_text("parameters", "a red circle, on grey\nNegative prompt: blur\nSteps: 20, Sampler: Euler a, "
                                "CFG scale: 7, Seed: 5, Size: 32x24, Model: builtin")  # fmt: skip
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(src, pnginfo=info)
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "resize", "--out", str(tmp_path / "o"), "-q")
    assert code == 0, err
    fields = request_fields(read_parameters(out.strip()))
    assert (fields["prompt"], fields["negative_prompt"]) == ("a red circle, on grey", "blur")
    assert (fields["mode"], fields["upscale_mode"], fields["scale"]) == ("upscale", "resize", 2.0)
    assert "seed" not in fields  # a resize ran no sampler: no seed of its own, and not the source's


def test_an_upscale_of_an_image_without_parameters_writes_no_prompt(capsys, tmp_path):
    src = tmp_path / "plain.png"
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(src)
    code, out, err = run(capsys, "upscale", "--image", str(src), "--mode", "resize", "--out", str(tmp_path / "o"), "-q")
    assert code == 0, err
    assert read_parameters(out.strip()).startswith("Size: 32x24")


def test_the_installer_installs_spandrels_needs_before_spandrel():
    # A static check (a real install needs the network): pip checks the installed packages that depend on what it
    # installs, so any dependency-checking install after `spandrel --no-deps` prints "spandrel requires torchvision,
    # which is not installed" as a red ERROR. Its needs go first; after it, only --no-deps installs.
    lines = [ln.strip() for ln in (ROOT / "packaging" / "install.sh").read_text().splitlines()]
    installs = [ln for ln in lines if not ln.startswith("#") and " install " in ln and "pip" in ln]
    (spandrel,) = [i for i, ln in enumerate(installs) if "spandrel" in ln]
    assert "--no-deps" in installs[spandrel]
    (needs,) = [i for i, ln in enumerate(installs) if "einops" in ln]
    assert needs < spandrel and "typing_extensions" in installs[needs]
    assert all("--no-deps" in ln for ln in installs[spandrel:]), installs[spandrel:]


_ARGUMENT_ERRORS = [
    ["--help"], ["generate", "--help"], ["serve", "--help"], ["generat", "--prompt", "x"], ["generate"],
    ["generate", "--prompt", "x", "--steps", "x"], ["generate", "--prompt", "x", "--steps", "0"],
    ["generate", "--prompt", "x", "--sampler", "bogus"], ["generate", "--prompt", "x", "--device", "tpu"],
    ["generate", "--prompt", "x", "--model", "/no/such/model"], ["upscale", "--image", "/no/such.png"],
    ["inpaint", "--prompt", "x", "--image", "/no/such.png", "--mask", "/no/mask.png"],
]  # fmt: skip


def test_help_and_argument_errors_import_no_torch():
    # In a fresh interpreter (this one has torch in already): each answer comes before torch or diffusers is imported.
    code = (
        "import contextlib, io, sys\n"
        "from studio.cli import main\n"
        "for argv in ARGS:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    print(code, argv, err.getvalue().strip().splitlines()[-1:])\n"
        "print([m for m in ('torch', 'diffusers', 'transformers', 'studio.engine.engine') if m in sys.modules])\n"
    ).replace("ARGS", repr(_ARGUMENT_ERRORS))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    *answers, modules = p.stdout.strip().splitlines()
    assert modules == "[]", p.stdout
    codes = [int(line.split()[0]) for line in answers]
    assert codes == [0, 0, 0] + [2] * (len(_ARGUMENT_ERRORS) - 3), p.stdout
    assert "Unknown device tpu" in answers[8]
