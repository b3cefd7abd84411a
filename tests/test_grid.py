"""The comparison grid (A1111's X/Y/Z plot): axes, cells, the labelled image, the runner, and cells that equal
single runs on the tiny model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from studio.core import GenerateRequest, RequestError
from studio.core import grid as g
from studio.core.requests import GenerateResult, StepInfo


@pytest.mark.parametrize("kind, text, values", [
    ("Steps", "1-5", (1, 2, 3, 4, 5)),
    ("steps", "1-5 (+2)", (1, 3, 5)),
    ("Steps", "10-30 [3]", (10, 20, 30)),
    ("Steps", "5-1 (-2), 20", (5, 3, 1, 20)),
    ("CFG", "4,7,10", (4.0, 7.0, 10.0)),
    ("CFG Scale", "1.5-3 (+0.5)", (1.5, 2.0, 2.5, 3.0)),
    ("Denoising", "0.2-0.6 [3]", (0.2, 0.4, 0.6)),
    ("Sampler", "Euler a, DDIM", ("Euler a", "DDIM")),
    ("Prompt S/R", 'cat, "dog, wet", bird', ("cat", "dog, wet", "bird")),
])  # fmt: skip
def test_axis_values_as_a1111_reads_them(kind, text, values):
    assert g.parse_axis(kind, text).values == values


@pytest.mark.parametrize("spec, says", [
    ("Colour: red", "Unknown grid axis 'Colour'"),
    ("Steps: 1-5 (+0)", "never reaches its end"),
    ("Steps: ten", "'ten' is not a number or a range"),
    ("Steps: 2.5", "not a whole number"),
    ("Steps: 0", "Steps 0 is out of range"),
    ("CFG: 4,,", "4.0") ,
    ("Sampler: Eulr", "Unknown sampler 'Eulr'"),
    ("Steps", "needs a kind and values"),
    ("Steps: 1-100000", "at most 1024"),
])  # fmt: skip
def test_bad_axes_say_one_line(spec, says):
    if says == "4.0":  # empty values are skipped, as A1111 does
        assert g.parse_axis_spec(spec).values == (4.0,)
        return
    with pytest.raises(RequestError) as e:
        g.parse_axis_spec(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_cells_z_y_x_order_and_fixed_seed():
    base = GenerateRequest(prompt="a cat on a mat", batch=4)
    grid = g.plan(base, [g.parse_axis("CFG", "4,7"), g.parse_axis("Prompt S/R", "cat, dog"),
                         g.parse_axis("Steps", "5,6")], draw=lambda: 99)  # fmt: skip
    assert grid.shape == (2, 2, 2)
    got = [(c.index, c.request.cfg, c.request.prompt, c.request.steps) for c in grid.cells]
    assert got[:3] == [((0, 0, 0), 4.0, "a cat on a mat", 5), ((1, 0, 0), 7.0, "a cat on a mat", 5),
                       ((0, 1, 0), 4.0, "a dog on a mat", 5)]  # fmt: skip
    assert got[-1] == ((1, 1, 1), 7.0, "a dog on a mat", 6)
    assert {c.request.seed for c in grid.cells} == {99} and {c.request.batch for c in grid.cells} == {1}
    with pytest.raises(RequestError, match="did not find 'horse'"):
        g.plan(base, [g.parse_axis("Prompt S/R", "horse, cow")])
    with pytest.raises(RequestError, match="no LoRA"):
        g.plan(base, [g.parse_axis("LoRA weight", "0, 1")])
    lora = g.plan(base.replace(prompt="x <lora:ink:0.8>", loras=(("pen", 1.0),)), [g.parse_axis("LoRA weight", "0.25")])
    assert lora.cells[0].request.prompt == "x <lora:ink:0.25>" and lora.cells[0].request.loras == (("pen", 0.25),)
    combo = g.plan(base, [g.parse_axis("Sampler", "DPM++ 2M Karras")])
    assert (combo.cells[0].request.sampler, combo.cells[0].request.schedule) == ("DPM++ 2M", "Karras")


def test_metadata_keys():
    grid = g.plan(GenerateRequest(prompt="p", seed=1), [g.parse_axis("CFG Scale", "4,7"), g.parse_axis("Seed", "-1, 5")],
                  draw=lambda: 77)  # fmt: skip
    assert g.grid_parameters(grid) == {"Script": "X/Y/Z plot", "X Type": "CFG Scale", "X Values": "4,7",
                                       "Y Type": "Seed", "Y Values": "-1, 5", "Fixed Y Values": "77, 5"}  # fmt: skip


def _cells(n, w=40, h=30):
    return [np.full((h, w, 3), 40 * (i + 1), np.uint8) for i in range(n)]


def test_grid_image_size_and_headers():
    grid = g.plan(GenerateRequest(prompt="p", seed=1), [g.parse_axis("CFG", "4,7,10"), g.parse_axis("Steps", "5,9")])
    [image] = g.grid_images(grid, _cells(6))
    h, w = image.shape[:2]
    # Headers: a band above (column labels) and one to the left (row labels), both on white.
    left, top = w - 3 * 40, h - 2 * 30
    assert left > 0 and top > 0
    assert np.array_equal(image[top:top + 30, left:left + 40], _cells(6)[0])  # cell (0, 0) just below and right
    assert np.array_equal(image[h - 30:, w - 40:], _cells(6)[5])  # the last cell bottom right
    band = image[:top, left:]
    assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on white
    assert (image[top:, :left] < 128).any()


def test_z_separate_or_stacked():
    axes = [g.parse_axis("CFG", "4,7"), g.parse_axis("Steps", "5"), g.parse_axis("Sampler", "Euler, DDIM")]
    separate = g.grid_images(g.plan(GenerateRequest(seed=1), axes), _cells(4))
    [stacked] = g.grid_images(g.plan(GenerateRequest(seed=1), axes, stacked=True), _cells(4))
    assert len(separate) == 2 and stacked.shape[0] == separate[0].shape[0] + separate[1].shape[0]
    assert separate[0].shape[0] > 30 + 30  # a title (the Z value) and the column headers above the cells


class FakeCells:
    """A generate() that makes a flat image per cell and can block a cell's step until told."""

    def __init__(self, stop_at: int | None = None, cancel: threading.Event | None = None):
        self.calls: list[GenerateRequest] = []
        self.stop_at, self.cancel = stop_at, cancel
        self.infos: list[StepInfo] = []

    def __call__(self, request, on_step, cancel):
        self.calls.append(request)
        for s in range(1, request.steps + 1):
            if len(self.calls) == self.stop_at and s == 2:
                self.cancel.set()  # the artist presses Cancel during cell stop_at's second step
            if cancel is not None and cancel.is_set():
                return GenerateResult([], request, [], cancelled=True)
            on_step(StepInfo(s, request.steps, 0.0))
        return GenerateResult([np.full((8, 8, 3), int(request.cfg), np.uint8)], request, [request.seed])


def test_run_labels_progress_and_keeps_cells_on_cancel():
    grid = g.plan(GenerateRequest(prompt="p", seed=1, steps=3), [g.parse_axis("CFG", "1,2"), g.parse_axis("Steps", "3,4")])
    seen: list[str] = []
    done: list[int] = []
    cancel = threading.Event()
    fake = FakeCells(stop_at=3, cancel=cancel)
    out = g.run(grid, fake, lambda info: seen.append(info.label()), cancel, lambda i, r: done.append(i))
    assert out.cancelled and done == [0, 1] and len(out.results) == 2 and not out.images
    assert len(fake.calls) == 3  # the fourth cell never starts
    assert seen[0] == "cell 1/4, step 1/3" and "cell 3/4, step 1/4" in seen
    full = g.run(grid, FakeCells(), None, threading.Event())
    assert not full.cancelled and len(full.images) == 1
    result = g.grid_result(grid, full)
    assert result.extra_params["X Type"] == "CFG Scale" and result.request.cfg == 1.0


def test_a_2x2_grid_equals_single_runs(engine, tiny_model, tmp_path):
    from studio.core.metadata import read_parameters
    from studio.core.output import save_result

    base = GenerateRequest(prompt="a red circle", model=tiny_model, steps=3, seed=1234, width=32, height=32)
    grid = g.plan(base, [g.parse_axis("CFG", "3,6"), g.parse_axis("Sampler", "Euler a, DDIM")])
    out = g.run(grid, engine.generate)
    for cell, result in zip(grid.cells, out.results, strict=True):
        alone = engine.generate(base.replace(cfg=cell.request.cfg, sampler=cell.request.sampler))
        assert np.array_equal(result.images[0], alone.images[0])
    [image] = out.images
    assert image.shape[0] > 64 and image.shape[1] > 64
    [path] = save_result(g.grid_result(grid, out), tmp_path, "test")
    text = read_parameters(path) or ""
    assert "CFG scale: 3, Seed: 1234" in text and 'X Type: CFG Scale, X Values: "3,6", Y Type: Sampler' in text


def test_cli_grid(tiny_model, tmp_path, capsys):
    from studio.cli import main
    from studio.core.metadata import read_parameters

    code = main(["grid", "--prompt", "a red circle", "--model", tiny_model, "--steps", "2", "--seed", "9",
                 "--width", "32", "--height", "32", "--x", "CFG: 3,6", "--out", str(tmp_path), "--quiet",
                 "--no-server"])  # fmt: skip
    assert code == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 3  # two cells, then the grid
    assert "CFG scale: 6, Seed: 9" in (read_parameters(paths[1]) or "")
    assert 'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "3,6"' in (read_parameters(paths[2]) or "")


@pytest.mark.parametrize("argv, says", [
    (["--x", "Steps: ten"], "Steps: 'ten' is not a number or a range"),
    ([], "A grid needs an axis"),
    (["--x", "Prompt S/R: horse, cow"], "Prompt S/R did not find 'horse'"),
])  # fmt: skip
def test_cli_grid_bad_input_is_one_line(argv, says, capsys):
    from studio.cli import main

    assert main(["grid", "--prompt", "a cat", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err


def test_a_branch_step_axis_equals_single_branches(engine, tiny_model):
    """"Branch step: 1,3" on a branch that changes the prompt: each cell is that branch at that step (a kept state
    of the parent, or the parent's first k steps re-run), pixel for pixel."""
    from studio.core.branch import BranchSpec

    parent = engine.generate(GenerateRequest(prompt="a red circle", model=tiny_model, sampler="Euler a", steps=4,
                                             seed=77, width=32, height=32))  # fmt: skip
    st = parent.step_states
    k = 2
    base = parent.request.replace(prompt="a blue square", branch=BranchSpec(
        k, st[k - 1].image(0), parent.request, "parent.png", "0123456789", parent.latents[:k], parent.x0[:k],
        tuple(s.image(0) for s in st[:k])))  # fmt: skip
    grid = g.plan(base, [g.parse_axis("Branch step", "1,3")])
    assert [c.request.branch.step for c in grid.cells] == [1, 3]
    out = g.run(grid, engine.generate)
    for step, result in zip((1, 3), out.results, strict=True):
        alone = engine.generate(base.replace(branch=BranchSpec(step, st[step - 1].image(0), parent.request)))
        assert np.array_equal(result.images[0], alone.images[0])
    assert not np.array_equal(out.results[0].images[0], out.results[1].images[0])
    with pytest.raises(RequestError, match="needs a branch"):
        g.plan(parent.request, [g.parse_axis("Branch step", "1,2")])
