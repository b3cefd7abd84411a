"""A comparison grid: A1111's X/Y/Z plot, without Qt or torch.

Up to three axes, each a parameter and its values, written as A1111 writes them ("CFG Scale" with "4,7,10";
"Steps" with "10-30 (+10)" or "10-30 [3]"; "Prompt S/R" with "cat, dog, bird": the first value is searched in
the prompt and each value replaces it). `plan` turns a base request and the axes into the cells' requests (one
image each, one fixed seed for all unless Seed is an axis); `run` runs them one after the other through any
`generate(request, on_step, cancel)` (a backend's), saying "cell 5/12, step 3/20"; `grid_images` draws the
labelled grid with Pillow (column headers above, row headers left; Z as separate grids, or stacked in one).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import numpy as np

from .errors import RequestError
from .requests import MAX_SEED, GenerateRequest, GenerateResult, StepInfo
from .samplers import resolve_sampler, resolve_schedule

MAX_AXES = 3
MAX_CELLS = 1024  # a grid past this is surely a typo ("1-10000")


@dataclass(frozen=True)
class AxisType:
    """One kind of axis: its A1111 label, how a value is read, and how it changes a request."""

    label: str
    kind: str  # "int", "float" or "str"
    apply: Callable[[GenerateRequest, Any, list], GenerateRequest]  # (request, value, all values) -> request
    check: Callable[[Any], object] = lambda v: None  # raises RequestError for a value the axis cannot use
    aliases: tuple[str, ...] = ()


def _seed(r: GenerateRequest, v, _vs) -> GenerateRequest:
    return r.replace(seed=int(v))


def _check_seed(v) -> None:
    if not 0 <= int(v) <= MAX_SEED:
        raise RequestError(f"Seed {v} is out of range: use 0 to {MAX_SEED} (or -1: random)")


def _denoising(r: GenerateRequest, v, _vs) -> GenerateRequest:
    # A1111's "Denoising": a txt2img hires fix's second pass, else the img2img / inpaint strength.
    if r.mode == "txt2img" and r.hires.enabled:
        return r.replace(hires=r.hires.replace(strength=float(v)))
    return r.replace(strength=float(v))


def _check_range(name: str, lo: float, hi: float, above: bool = False):
    def check(v) -> None:
        f = float(v)
        if not ((lo < f if above else lo <= f) and f <= hi):
            raise RequestError(f"{name} {v} is out of range: use {'above ' if above else ''}{lo:g} to {hi:g}")

    return check


def _prompt_sr(r: GenerateRequest, v, vs) -> GenerateRequest:
    return r.replace(prompt=r.prompt.replace(str(vs[0]), str(v)),
                     negative_prompt=r.negative_prompt.replace(str(vs[0]), str(v)))  # fmt: skip


_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>", re.IGNORECASE)


def _lora_weight(r: GenerateRequest, v, _vs) -> GenerateRequest:
    """Every LoRA of the request at this weight: the panel's (loras) and the prompt's <lora:name:w> tags."""
    w = float(v)
    text = f"{w:g}"
    return r.replace(prompt=_LORA_TAG.sub(lambda m: f"<lora:{m.group(1)}:{text}>", r.prompt),
                     loras=tuple((name, w) for name, _ in r.loras))  # fmt: skip


def _sampler(r: GenerateRequest, v, _vs) -> GenerateRequest:
    """A sampler name, or A1111's combined "DPM++ 2M Karras" (the schedule goes with it)."""
    from .metadata import split_sampler

    name, schedule = split_sampler(str(v).strip())
    sampler = resolve_sampler(name).name
    return r.replace(sampler=sampler, **({"schedule": resolve_schedule(schedule)} if schedule else {}))


def _check_sampler(v) -> None:
    _sampler(GenerateRequest(), v, [])  # RequestError for an unknown name


def _schedule(r: GenerateRequest, v, _vs) -> GenerateRequest:
    return r.replace(schedule=resolve_schedule(str(v)))


AXIS_TYPES: dict[str, AxisType] = {}


def register_axis(axis: AxisType) -> None:
    """Add an axis kind (the hook for later ones: "Branch step" registers itself where branching lives)."""
    for name in (axis.label, *axis.aliases):
        AXIS_TYPES[name.lower()] = axis


for _axis in (
    AxisType("Seed", "int", _seed, _check_seed, ("seeds",)),
    AxisType("Var. seed", "int", lambda r, v, _: r.replace(subseed=int(v)), _check_seed, ("variation seed", "subseed")),
    AxisType("Var. strength", "float", lambda r, v, _: r.replace(subseed_strength=float(v)),
             _check_range("Variation strength", 0, 1), ("variation strength", "variation seed strength")),
    AxisType("Steps", "int", lambda r, v, _: r.replace(steps=int(v)), _check_range("Steps", 1, 1000)),
    AxisType("CFG Scale", "float", lambda r, v, _: r.replace(cfg=float(v)), _check_range("CFG scale", 0, 100),
             ("cfg",)),
    AxisType("Sampler", "str", _sampler, _check_sampler, ("samplers",)),
    AxisType("Schedule type", "str", _schedule, lambda v: resolve_schedule(str(v)), ("schedule",)),
    AxisType("Prompt S/R", "str", _prompt_sr, aliases=("prompt sr", "prompt search/replace")),
    AxisType("LoRA weight", "float", _lora_weight, _check_range("LoRA weight", -10, 10), ("lora",)),
    AxisType("Denoising", "float", _denoising, _check_range("Denoising strength", 0, 1, above=True),
             ("denoising strength", "strength")),
):  # fmt: skip
    register_axis(_axis)


def _branch_step(r: GenerateRequest, v, _vs) -> GenerateRequest:
    """The step a branch leaves its parent at: a kept state of the parent when it has that step, else the engine
    re-runs the parent's first k steps (the same noise, so the parent's x_k exactly)."""
    b = r.branch
    if b is None:
        raise RequestError("The Branch step axis needs a branch: choose Branch from here on a run's step first")
    k = int(v)
    if k == b.step:
        return r
    kept = b.before_states
    state = kept[k - 1] if b.state is not None and 1 <= k <= len(kept) and kept[k - 1].step == k else None
    cut = k <= len(kept)  # the timeline's steps 1..k, when the parent's are there
    return r.replace(branch=dataclasses.replace(
        b, step=k, state=state, before_states=tuple(kept[:k]) if cut else (),
        before_latents=b.before_latents[:k] if cut and b.before_latents is not None else None,
        before_x0=b.before_x0[:k] if cut and b.before_x0 is not None else None))  # fmt: skip


register_axis(AxisType("Branch step", "int", _branch_step, _check_range("Branch step", 1, 1000), ("branch",)))


def axis_labels() -> list[str]:
    """The axis kinds, by their A1111 labels, in the order a menu shows them."""
    return list(dict.fromkeys(a.label for a in AXIS_TYPES.values()))


# A1111's range syntax (scripts/xyz_grid.py): "1-5" every integer, "1-5 (+2)" a step, "1-10 [4]" a count.
_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
RE_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\))?\s*$")
RE_COUNT = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*\[\s*(\d+)\s*\]\s*$")


def _split_values(text: str) -> list[str]:
    """A1111's: comma-separated, double quotes keep a comma inside one value."""
    rows = csv.reader(StringIO(text), skipinitialspace=True)
    return [v.strip() for row in rows for v in row if v.strip()]


def _num(text: str, kind: str) -> float:
    return float(text.replace(" ", ""))


def _expand(value: str, kind: str, label: str) -> list[object]:
    if kind == "str":
        return [value]
    if m := RE_COUNT.match(value):
        a, b, n = _num(m.group(1), kind), _num(m.group(2), kind), int(m.group(3))
        if n < 1:
            raise RequestError(f"{label}: {value!r} asks for no values")
        spaced = np.linspace(a, b, num=n)
        return [int(x) for x in spaced] if kind == "int" else [round(float(x), 6) for x in spaced]
    if m := RE_RANGE.match(value):
        a, b = _num(m.group(1), kind), _num(m.group(2), kind)
        step = _num(m.group(3), kind) if m.group(3) else (1.0 if b >= a else -1.0)
        if step == 0 or (b - a) * step < 0:
            raise RequestError(f"{label}: the range {value!r} never reaches its end: give a step toward it")
        count = int(math.floor((b - a) / step + 1e-9)) + 1
        if count > MAX_CELLS:
            raise RequestError(f"{label}: the range {value!r} has {count} values: at most {MAX_CELLS}")
        xs = [a + i * step for i in range(count)]
        return [int(x) for x in xs] if kind == "int" else [round(x, 6) for x in xs]
    try:
        f = float(value)
    except ValueError:
        raise RequestError(f"{label}: {value!r} is not a number or a range like 1-5, 1-5 (+2), 1-10 [4]") from None
    if not math.isfinite(f):
        raise RequestError(f"{label}: {value!r} is not a number")
    if kind == "int":
        if not f.is_integer():
            raise RequestError(f"{label}: {value!r} is not a whole number")
        return [int(f)]
    return [f]


@dataclass(frozen=True)
class Axis:
    """One axis: its kind, the values as written (for the metadata) and as read."""

    type: AxisType
    text: str
    values: tuple = ()

    @property
    def label(self) -> str:
        return self.type.label

    def value_label(self, v: object) -> str:
        return f"{self.label}: {v:g}" if isinstance(v, float) else f"{self.label}: {v}"


def parse_axis(type_name: str, values: str) -> Axis:
    """An axis from its kind's name (A1111's label or an alias, any case) and its values; RequestError (one line)
    for an unknown kind, a value that does not parse, or one the kind cannot use."""
    t = AXIS_TYPES.get(type_name.strip().lower())
    if t is None:
        raise RequestError(f"Unknown grid axis {type_name.strip()!r}: use one of {', '.join(axis_labels())}")
    out: list[Any] = []
    for v in _split_values(values):
        out.extend(_expand(v, t.kind, t.label))
    if not out:
        raise RequestError(f"{t.label}: the axis has no values")
    for x in out:
        if t.label in ("Seed", "Var. seed") and x == -1:
            continue  # random: drawn in plan
        t.check(x)
    return Axis(t, values.strip(), tuple(out))


def parse_axis_spec(spec: str) -> Axis:
    """'CFG: 4,7,10' (the CLI's form): the kind before the first ':', the values after."""
    name, sep, values = spec.partition(":")
    if not sep:
        raise RequestError(f"Grid axis {spec!r} needs a kind and values, like \"CFG Scale: 4,7,10\"")
    return parse_axis(name, values)


@dataclass(frozen=True)
class Cell:
    index: tuple[int, int, int]  # x, y, z
    request: GenerateRequest = field(repr=False)


@dataclass(frozen=True)
class GridRequest:
    """A planned grid: what the worker queues as one job. `axes`: X, then Y, then Z (the ones given)."""

    cells: tuple[Cell, ...]
    axes: tuple[Axis, ...]
    stacked: bool = False  # Z: the Z grids stacked in one image (top to bottom), else one image each

    @property
    def prompt(self) -> str:  # the queue's label
        return self.cells[0].request.prompt if self.cells else ""

    @property
    def shape(self) -> tuple[int, int, int]:
        n = [len(a.values) for a in self.axes] + [1] * (MAX_AXES - len(self.axes))
        return n[0], n[1], n[2]

    def validate(self) -> None:
        for c in self.cells:
            c.request.validate()


def plan(base: GenerateRequest, axes: Sequence[Axis], stacked: bool = False, draw=None) -> GridRequest:
    """The cells, Z outermost then Y then X (A1111's order), each one image. One seed for every cell (the base's,
    or one drawn now), so that only the axes differ; Seed -1 on an axis draws a seed per value."""
    if not axes:
        raise RequestError("A grid needs at least one axis")
    if len(axes) > MAX_AXES:
        raise RequestError(f"A grid has at most {MAX_AXES} axes (X, Y, Z)")
    draw = draw or (lambda: secrets.randbelow(MAX_SEED + 1))
    labels = [a.label for a in axes]
    if len(set(labels)) != len(labels):
        raise RequestError("Each grid axis must be a different kind")
    fixed = []
    for a in axes:
        if a.label in ("Seed", "Var. seed"):
            a = dataclasses.replace(a, values=tuple(draw() if v == -1 else v for v in a.values))
        if a.label == "Prompt S/R" and not any(str(a.values[0]) in t for t in (base.prompt, base.negative_prompt)):
            raise RequestError(f"Prompt S/R did not find {a.values[0]!r} in the prompt or the negative prompt")
        if a.label == "LoRA weight" and not (base.loras or _LORA_TAG.search(base.prompt)):
            raise RequestError("LoRA weight: the prompt has no LoRA (add one, e.g. <lora:name:1>)")
        fixed.append(a)
    base = base.replace(batch=1, seed=base.seed if base.seed is not None else draw())
    if base.subseed_strength > 0 and base.subseed is None:
        base = base.replace(subseed=draw())
    n = [len(a.values) for a in fixed] + [1] * (MAX_AXES - len(fixed))
    if n[0] * n[1] * n[2] > MAX_CELLS:
        raise RequestError(f"The grid has {n[0] * n[1] * n[2]} cells: at most {MAX_CELLS}")
    cells = []
    for iz in range(n[2]):
        for iy in range(n[1]):
            for ix in range(n[0]):
                r = base
                for a, i in zip(fixed, (ix, iy, iz), strict=False):
                    r = a.type.apply(r, a.values[i], list(a.values))
                cells.append(Cell((ix, iy, iz), r))
    grid = GridRequest(tuple(cells), tuple(fixed), stacked)
    grid.validate()
    return grid


def grid_parameters(grid: GridRequest) -> dict[str, str]:
    """The keys A1111's X/Y/Z plot adds to the first cell's parameters: Script, X Type, X Values (as written),
    and Fixed X Values for a seed axis (the seeds drawn for -1)."""
    out = {"Script": "X/Y/Z plot"}
    for name, a in zip("XYZ", grid.axes, strict=False):
        out[f"{name} Type"] = a.label
        out[f"{name} Values"] = a.text
        if a.label in ("Seed", "Var. seed"):
            out[f"Fixed {name} Values"] = ", ".join(str(v) for v in a.values)
    return out


# -- running ---------------------------------------------------------------------------------------

Generate = Callable[..., GenerateResult]


@dataclass
class GridOutcome:
    results: list[GenerateResult]  # the finished cells, in order
    cancelled: bool = False
    images: list[np.ndarray] = field(default_factory=list)  # the grid image(s), when all cells finished


def run(grid: GridRequest, generate: Generate, on_step=None, cancel=None,
        on_cell: Callable[[int, GenerateResult], None] | None = None) -> GridOutcome:  # fmt: skip
    """Each cell through `generate(request, on_step, cancel)`, the step reports relabelled "cell i/n"; `on_cell(i,
    result)` as each finishes (saved and shown there). A cancel stops at once: the finished cells are kept."""
    out = GridOutcome([])
    n = len(grid.cells)
    for i, cell in enumerate(grid.cells):
        if cancel is not None and cancel.is_set():
            out.cancelled = True
            return out

        def relabel(info: StepInfo, part: int = i + 1) -> None:
            if on_step is not None:
                on_step(dataclasses.replace(info, stage="cell", part=part, parts=n))

        result = generate(cell.request, relabel, cancel)
        if result.cancelled or not result.images:
            out.cancelled = True
            return out
        out.results.append(result)
        if on_cell is not None:
            on_cell(i, result)
    out.images = grid_images(grid, [r.images[0] for r in out.results])
    return out


def grid_result(grid: GridRequest, outcome: GridOutcome) -> GenerateResult:
    """The grid image(s) as a result to save and show: the first cell's parameters plus the grid's keys."""
    first = outcome.results[0]
    return GenerateResult(images=outcome.images, request=first.request, seeds=[first.seeds[0]] * len(outcome.images),
                          model_name=first.model_name, model_hash=first.model_hash,
                          extra_params={**first.extra_params, **grid_parameters(grid)},
                          timings={"total": sum(r.timings.get("total", 0.0) for r in outcome.results)})  # fmt: skip


# -- the image ------------------------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def header_size(cell_w: int) -> int:
    """The font size of the headers: A1111's (cell width / 22, at least 12 px... here 11)."""
    return max(11, cell_w // 16)


def draw_grid(images: Sequence[np.ndarray], cols: int, rows: int, x_labels: Sequence[str], y_labels: Sequence[str],
              title: str = "") -> np.ndarray:  # fmt: skip
    """cols x rows cells (row-major) with column headers above and row headers to the left (none for an axis
    with no labels), and an optional title line above all."""
    from PIL import Image, ImageDraw

    cw = max(int(np.asarray(im).shape[1]) for im in images)
    ch = max(int(np.asarray(im).shape[0]) for im in images)
    font = _font(header_size(cw))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(font.size * 1.3) if hasattr(font, "size") else 14
    pad = max(4, line_h // 3)
    left = 0
    if y_labels:
        left = min(max(int(probe.textlength(t, font=font)) for t in y_labels) + 2 * pad, max(cw, 96))
    x_lines = [_wrap(probe, t, font, cw - 2 * pad) for t in x_labels]
    top = (max(len(ls) for ls in x_lines) * line_h + 2 * pad) if x_labels else 0
    title_h = line_h + 2 * pad if title else 0
    canvas = Image.new("RGB", (left + cols * cw, title_h + top + rows * ch), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((pad, pad), title, fill="black", font=font)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        a = np.asarray(im, dtype=np.uint8)
        canvas.paste(Image.fromarray(a), (left + c * cw + (cw - a.shape[1]) // 2, title_h + top + r * ch + (ch - a.shape[0]) // 2))
    for c, lines in enumerate(x_lines):
        y = title_h + (top - len(lines) * line_h) // 2
        for line in lines:
            w = d.textlength(line, font=font)
            d.text((left + c * cw + (cw - w) / 2, y), line, fill="black", font=font)
            y += line_h
    for r, text in enumerate(y_labels[:rows]):
        lines = _wrap(probe, text, font, left - 2 * pad)
        y = title_h + top + r * ch + (ch - len(lines) * line_h) // 2
        for line in lines:
            w = d.textlength(line, font=font)
            d.text(((left - w) / 2, y), line, fill="black", font=font)
            y += line_h
    return np.asarray(canvas)


def grid_images(grid: GridRequest, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The labelled grid of the cells' images: one per Z value, or (stacked) one with the Z grids top to bottom,
    each under its Z label."""
    nx, ny, nz = grid.shape
    axes = list(grid.axes) + [None] * (MAX_AXES - len(grid.axes))
    xl = [axes[0].value_label(v) for v in axes[0].values] if axes[0] else []
    yl = [axes[1].value_label(v) for v in axes[1].values] if axes[1] else []
    per = nx * ny
    grids = [draw_grid(images[k * per:(k + 1) * per], nx, ny, xl, yl,
                       title=axes[2].value_label(axes[2].values[k]) if axes[2] else "") for k in range(nz)]  # fmt: skip
    if not grid.stacked or nz == 1:
        return grids
    w = max(g.shape[1] for g in grids)
    padded = [np.pad(g, ((0, 0), (0, w - g.shape[1]), (0, 0)), constant_values=255) for g in grids]
    return [np.concatenate(padded, axis=0)]
