"""Scribble data for the built-in ControlNet: a hand-drawn-looking outline and the picture that fills it.

Every sample is a pure function of ``(seed, index)`` like the shapes data set. Half of the outlines are of the data
set's own shapes (circle, square, triangle, diamond, star, where the shapes data set puts them), the other half of
random closed figures (smooth blobs, polygons, ellipses and rectangles of any aspect, anywhere): the artist may draw
any closed outline and the model must fill that outline, not snap it to the nearest shape it knows. The outline is
wobbled like a hand's stroke and the *target* is the fill of the wobbled outline, so the model learns to follow the
line it is given. The control image is white lines on black, as a control layer sends it (``control_image``).

Captions name the colour (always) and the background (mostly); the shape and position words are sometimes left out,
and for free figures the shape word is any of the known ones or none (an artist types what they like; the outline
decides the shape). The trainer drops ~15% of captions to empty for classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .analysis import grid_cell
from .data import COLOR_NAMES, COLORS, IMAGE_SIZE, NEUTRAL_BACKGROUNDS, SHAPES, ShapesDataset, _polygon, position_phrase

SS = 4  # supersampling of the drawing (box-filtered down, as data.render does)
# Seeds of the scribble streams: training pools and the held-out evaluation never share one.
TRAIN_STREAM = 31_000_000
HELD_OUT_STREAM = 71_000_000


@dataclass(frozen=True)
class Figure:
    points: np.ndarray  # Nx2 closed outline in 64-px coordinates (the last point joins the first)
    color: str
    shape: str  # a data set shape name, or "" for a free figure


@dataclass(frozen=True)
class ScribbleSample:
    target: np.ndarray  # HxWx3 uint8: the figures filled with their colours on the background
    control: np.ndarray  # HxW uint8: white outline strokes on black
    interior: np.ndarray  # HxW bool: the region the outlines enclose (to the middle of the stroke)
    caption: str
    background: str
    figures: tuple[Figure, ...]


def _densify(pts: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Points every ``step`` px along the closed polygon ``pts``."""
    out = []
    for a, b in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / step)))
        out.extend(a + (b - a) * (k / n) for k in range(n))
    return np.array(out, dtype=np.float64)


def _wobble(pts: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A hand's wobble: a smooth displacement of the closed outline (a few low sinusoids in its arc length, in x and
    y), a slight overall scale and shift."""
    n = len(pts)
    s = np.arange(n) / n * 2 * math.pi
    d = np.zeros_like(pts)
    for k in (1, 2, 3, 5):
        amp = amount * rng.uniform(0.2, 1.0) / k**0.5
        d[:, 0] += amp * np.sin(k * s + rng.uniform(0, 2 * math.pi))
        d[:, 1] += amp * np.sin(k * s + rng.uniform(0, 2 * math.pi))
    c = pts.mean(axis=0)
    return c + (pts - c) * rng.uniform(0.96, 1.04) + d + rng.uniform(-0.5, 0.5, size=2)


def shape_outline(shape: str, cx: float, cy: float, extent: float) -> np.ndarray:
    if shape == "circle":
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([cx + extent / 2 * np.cos(a), cy + extent / 2 * np.sin(a)], axis=1)
    poly = _polygon(shape, cx, cy, extent)
    assert poly is not None
    return np.array(poly, dtype=np.float64)


def free_outline(rng: np.random.Generator) -> np.ndarray:
    """A random closed figure (blob, polygon, ellipse or rectangle), 10-44 px across, inside the picture."""
    kind = rng.integers(4)
    r = rng.uniform(5.0, 20.0)
    if kind == 0:  # smooth blob: a radius wobbling around a circle
        a = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        rad = np.ones_like(a)
        for k in range(2, 6):
            rad += rng.uniform(0, 0.35 / k**0.5) * np.cos(k * a + rng.uniform(0, 2 * math.pi))
        pts = np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1) * r
    elif kind == 1:  # polygon of 3-8 corners (star-shaped around its centre, so it never crosses itself)
        n = int(rng.integers(3, 9))
        a = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * math.pi / n + rng.uniform(0, 2 * math.pi)
        rad = rng.uniform(0.6, 1.0, n)
        pts = np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1) * r
    else:  # ellipse or rectangle of any aspect, turned
        w, h = r, r * rng.uniform(0.35, 1.0)
        if kind == 2:
            a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            pts = np.stack([w * np.cos(a), h * np.sin(a)], axis=1)
        else:
            pts = np.array([(-w, -h), (w, -h), (w, h), (-w, h)], dtype=np.float64)
        t = rng.uniform(0, math.pi) if rng.random() < 0.5 else 0.0
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        pts = pts @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    margin = 2.0
    cx = rng.uniform(margin - lo[0], IMAGE_SIZE - margin - hi[0]) if hi[0] - lo[0] < IMAGE_SIZE - 2 * margin else 32
    cy = rng.uniform(margin - lo[1], IMAGE_SIZE - margin - hi[1]) if hi[1] - lo[1] < IMAGE_SIZE - 2 * margin else 32
    return pts + np.array([cx, cy])


def _boxes_touch(a: np.ndarray, b: np.ndarray, gap: float = 3.0) -> bool:
    return bool(np.all(a.min(axis=0) - gap < b.max(axis=0)) and np.all(b.min(axis=0) - gap < a.max(axis=0)))


def draw(figures: tuple[Figure, ...], background: str, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target RGB, control L, interior mask) of the figures, drawn at 4x and box-filtered to 64x64."""
    big = IMAGE_SIZE * SS
    target = Image.new("RGB", (big, big), COLORS[background])
    control = Image.new("L", (big, big), 0)
    inside = Image.new("L", (big, big), 0)
    dt, dc, di = ImageDraw.Draw(target), ImageDraw.Draw(control), ImageDraw.Draw(inside)
    for f in figures:
        pts = [(float(x) * SS, float(y) * SS) for x, y in f.points]
        dt.polygon(pts, fill=COLORS[f.color])
        dc.line(pts + [pts[0]], fill=255, width=max(1, int(round(width * SS))), joint="curve")
        di.polygon(pts, fill=255)
    inside_arr = np.asarray(inside.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)) > 127
    ctl = np.asarray(control.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
    tgt = np.asarray(target.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))
    return tgt.copy(), ctl.copy(), inside_arr


def figure_caption(f: Figure, rng: np.random.Generator, say_position: bool) -> str:
    words = ["a", f.color]
    if f.shape and rng.random() < 0.75:
        words.append(f.shape)
    elif not f.shape and rng.random() < 0.5:
        words.append(SHAPES[rng.integers(len(SHAPES))])
    if say_position:
        c = f.points.mean(axis=0)
        words.append(position_phrase(grid_cell(float(c[0]), float(c[1]))))
    return " ".join(words)


class ScribbleDataset:
    """``sample(i)``: an outline and its filled picture, a pure function of ``(seed, i)``. ``held_out``: single
    figures only, the data set shapes from its held-out (colour, shape, position) triples (for evaluation)."""

    def __init__(self, seed: int, held_out: bool = False):
        self.seed = int(seed)
        self.held_out = held_out
        self.shapes = ShapesDataset(self.seed, held_out=held_out, two_object_prob=0.0 if held_out else 0.3)

    def sample(self, index: int) -> ScribbleSample:
        rng = np.random.default_rng([self.seed, int(index), 0x5C81])
        width = float(rng.choice([1.0, 1.0, 1.5, 2.0, 2.5, 3.0]))
        if rng.random() < 0.5:  # a data set scene's shapes
            scene = self.shapes.scene(index)
            background = scene.background
            figures = tuple(
                Figure(_wobble(_densify(shape_outline(o.shape, o.cx, o.cy, o.extent)), rng, rng.uniform(0.2, 1.2)),
                       o.color, o.shape)
                for o in scene.objects)  # fmt: skip
        else:
            n = 1 if self.held_out or rng.random() < 0.8 else 2
            if rng.random() < 0.75:
                background = NEUTRAL_BACKGROUNDS[rng.integers(len(NEUTRAL_BACKGROUNDS))]
            else:
                background = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
            colors = [c for c in COLOR_NAMES if c != background]
            picked = rng.choice(len(colors), size=n, replace=False)
            outlines = [_wobble(_densify(free_outline(rng)), rng, rng.uniform(0.2, 1.2))]
            for _attempt in range(20 if n == 2 else 0):  # a second figure apart from the first (or none)
                pts = _wobble(_densify(free_outline(rng)), rng, rng.uniform(0.2, 1.2))
                if not _boxes_touch(outlines[0], pts):
                    outlines.append(pts)
                    break
            figures = tuple(Figure(pts, colors[int(k)], "") for pts, k in zip(outlines, picked, strict=False))
        say_position = rng.random() < (0.9 if self.held_out else 0.5)
        text = " and ".join(figure_caption(f, rng, say_position) for f in figures)
        if self.held_out or rng.random() < 0.85:
            text += f" on a {background} background"
        target, control, interior = draw(figures, background, width)
        return ScribbleSample(target, control, interior, text, background, figures)


def control_rgb(control: np.ndarray) -> np.ndarray:
    """HxW outline -> the HxWx3 image a control layer sends (white lines on black)."""
    return np.repeat(control[:, :, None], 3, axis=2)
