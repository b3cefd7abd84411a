"""`studio generate --branch-from PARENT.png --at-step K`: the same pixels as the window's branch (the kept state of
the parent's run), from the parent's latent sidecar or from its first K steps recomputed; metadata read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from studio.cli import main
from studio.core import branch
from studio.core.jobs import JobOutput
from studio.core.metadata import parse_parameters, read_parameters
from studio.core.requests import GenerateRequest
from studio.session.branching import PendingBranch

PARENT = ["--prompt", "a red circle", "--negative", "blur", "--sampler", "Euler a", "--steps", "5", "--cfg", "5",
          "--seed", "77", "--width", "32", "--height", "32", "-q"]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_branch_equals_the_windows_branch(capsys, engine, tiny_model, tmp_path):
    code, out, err = run(capsys, "generate", "--model", tiny_model, *PARENT, "--keep-latents", "--out",
                         str(tmp_path / "parent"))  # fmt: skip
    assert code == 0, err
    parent_png = Path(out.strip())
    assert branch.sidecar_path(parent_png).is_file()

    # The window: the parent's run as the engine made it, its step-2 state kept, the prompt changed in the panel.
    req = GenerateRequest(prompt="a red circle", negative_prompt="blur", model=tiny_model, sampler="Euler a", steps=5,
                          cfg=5.0, seed=77, width=32, height=32)  # fmt: skip
    parent = engine.generate(req)
    assert np.array_equal(parent.images[0], pixels(parent_png))  # the CLI's parent is the window's parent
    spec = PendingBranch(JobOutput(parent, [parent_png]), 2).spec()
    window = engine.generate(parent.request.replace(prompt="a blue square", branch=spec))

    for how, extra in (("sidecar", []), ("recomputed", ["--keep-latents"])):
        if how == "recomputed":
            branch.sidecar_path(parent_png).unlink()
        code, out, err = run(capsys, "generate", "--model", tiny_model, "--branch-from", str(parent_png), "--at-step",
                             "2", "--prompt", "a blue square", "-q", "--out", str(tmp_path / how), *extra)  # fmt: skip
        assert code == 0, err
        png = Path(out.strip())
        assert np.array_equal(pixels(png), window.images[0]), how
        params = parse_parameters(read_parameters(png))["params"]
        info = branch.read_info(params)
        assert info == branch.BranchInfo(parent_png.name, branch.image_hash(parent_png), 2, ("prompt",))
        assert params["Steps"] == "5" and params["Seed"] == "77"
    assert window.extra_params["Branch changes"] == "prompt"

    code, out, _ = run(capsys, "info", str(png))
    assert code == 0 and f"branch of {parent_png.name} at step 2" in out and "changed: prompt" in out
    # A branch of that branch from the command line: its own sidecar (--keep-latents above) makes it possible.
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--branch-from", str(png), "--at-step", "3",
                         "--cfg", "9", "-q", "--out", str(tmp_path / "again"))  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--branch-from", str(png), "--at-step", "2")
    assert code == 2 and f"branch from {parent_png.name} at step 2" in err


def test_cli_branch_bad_input_is_one_line(capsys, tiny_model, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    for argv, words in ((["--branch-from", str(plain), "--at-step", "2"], "no generation parameters"),
                        (["--branch-from", str(tmp_path / "none.png"), "--at-step", "2"], "not found"),
                        (["--branch-from", str(plain)], "needs --at-step"),
                        ([], "required: --prompt")):  # fmt: skip
        code, out, err = run(capsys, "generate", "--model", tiny_model, *argv)
        assert code == 2 and out == "" and words in err and len(err.strip().splitlines()) == 1, err
