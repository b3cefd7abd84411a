"""Procedural captioned shapes: the built-in model's training data.

Every sample is a pure function of ``(seed, index)``: ``ShapesDataset(seed).sample(i)`` draws the same
64x64 image and caption every time, on any machine, so no data set is stored anywhere.

Vocabulary (what the built-in model knows):
- shapes: circle, square, triangle, diamond, star
- colours: red, green, blue, yellow, orange, purple, pink, cyan, brown, gray, white, black
- sizes: small, large (or unsaid: in between)
- positions (a 3x3 grid): top left, top, top right, left, center, right, bottom left, bottom, bottom right
- backgrounds: "on a <colour> background" (white, black and gray most often)
- one or two objects: "a blue square and a yellow triangle", "a red star on the left and a green circle on the right"

Held out: some (colour, shape, position) triples never appear in training (``is_held_out``); the evaluator
prompts for them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SUPERSAMPLE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")

# Named colours (sRGB). Hues kept far apart so a nearest-colour lookup is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 185),
    "pink": (250, 125, 195),
    "cyan": (40, 205, 220),
    "brown": (120, 70, 30),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Backgrounds: neutral ones most of the time, any colour some of the time.
NEUTRAL_BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray")

# 3x3 grid: name -> (column, row), 0..2
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)
CELL_CENTERS = (12.0, 32.0, 52.0)  # pixel centre of grid columns/rows 0..2

SIZES: dict[str, tuple[float, float]] = {  # object extent (bounding box side) in pixels
    "small": (12.0, 15.0),
    "medium": (17.0, 20.0),  # never said in captions
    "large": (22.0, 25.0),
}


def position_phrase(name: str) -> str:
    return f"in the {name}" if name != "left" and name != "right" else f"on the {name}"


def is_held_out(color: str, shape: str, position: str) -> bool:
    """About one in ten (colour, shape, position) triples is never drawn in training."""
    key = f"{color}|{shape}|{position}".encode()
    return hashlib.sha256(key).digest()[0] % 10 == 0


def held_out_triples() -> list[tuple[str, str, str]]:
    return [
        (c, s, p)
        for c in COLOR_NAMES
        for s in SHAPES
        for p in POSITION_NAMES
        if is_held_out(c, s, p)
    ]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str  # small / medium / large
    position: str  # grid cell name
    cx: float
    cy: float
    extent: float  # bounding-box side in pixels
    rotation: float = 0.0  # degrees, only for the star's tiny jitter


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...]
    caption: str
    said: dict = field(default_factory=dict, compare=False)  # which attributes the caption states


def _polygon(shape: str, cx: float, cy: float, e: float, rotation: float = 0.0) -> list[tuple[float, float]] | None:
    h = e / 2.0
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # pointing up, base at the bottom
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    if shape == "star":  # five points, one pointing up
        pts = []
        for k in range(10):
            r = h if k % 2 == 0 else h * 0.45
            a = math.radians(-90.0 + 36.0 * k + rotation)
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a) * 1.0 + h * 0.05))
        return pts
    return None


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw a scene (anti-aliased by supersampling) -> uint8 HxWx3."""
    s = _SUPERSAMPLE * size / IMAGE_SIZE
    big = Image.new("RGB", (int(size * _SUPERSAMPLE), int(size * _SUPERSAMPLE)), COLORS[scene.background])
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        fill = COLORS[obj.color]
        cx, cy, e = obj.cx * s, obj.cy * s, obj.extent * s
        if obj.shape == "circle":
            r = e / 2.0
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, e, obj.rotation), fill=fill)
    img = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def describe(obj: ShapeObject, say_size: bool, say_position: bool) -> str:
    words = ["a"]
    if say_size and obj.size != "medium":
        words.append(obj.size)
    words += [obj.color, obj.shape]
    if say_position:
        words.append(position_phrase(obj.position))
    return " ".join(words)


def caption_for(
    objects: tuple[ShapeObject, ...], background: str, say_size: bool, say_position: bool, say_background: bool
) -> str:
    text = " and ".join(describe(o, say_size, say_position) for o in objects)
    if say_background:
        text += f" on a {background} background"
    return text


class ShapesDataset:
    """Index-addressable procedural data set: ``sample(i)`` is a pure function of ``(seed, i)``."""

    def __init__(self, seed: int = 0, two_object_prob: float = 0.3, held_out: bool = False):
        self.seed = int(seed)
        self.two_object_prob = two_object_prob
        self.held_out = held_out  # True: draw only held-out triples (single objects), for evaluation

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index), 0x5EED])

    def scene(self, index: int) -> Scene:
        rng = self._rng(index)
        if self.held_out:
            return self._held_out_scene(rng)
        n = 2 if rng.random() < self.two_object_prob else 1
        if rng.random() < 0.75:
            background = NEUTRAL_BACKGROUNDS[rng.integers(len(NEUTRAL_BACKGROUNDS))]
        else:
            background = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        say_background = rng.random() < 0.85
        say_size = rng.random() < 0.7
        say_position = rng.random() < (0.9 if n == 1 else 0.6)
        objects: list[ShapeObject] = []
        used_cells: set[str] = set()
        for _ in range(n):
            for _attempt in range(100):
                color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
                shape = SHAPES[rng.integers(len(SHAPES))]
                if n == 2:
                    position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
                else:
                    position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
                if color == background or position in used_cells or is_held_out(color, shape, position):
                    continue
                if n == 2 and objects:
                    other = POSITIONS[objects[0].position]
                    col, row = POSITIONS[position]
                    if max(abs(col - other[0]), abs(row - other[1])) < 1:
                        continue
                    if objects[0].color == color and objects[0].shape == shape:
                        continue
                break
            size = ("small", "medium", "large")[rng.integers(3)]
            objects.append(self._place(rng, shape, color, size, position))
            used_cells.add(position)
        objs = tuple(objects)
        caption = caption_for(objs, background, say_size, say_position, say_background)
        said = {"size": say_size, "position": say_position, "background": say_background}
        return Scene(background, objs, caption, said)

    def _held_out_scene(self, rng: np.random.Generator) -> Scene:
        triples = held_out_triples()
        color, shape, position = triples[rng.integers(len(triples))]
        choices = [b for b in NEUTRAL_BACKGROUNDS if b != color]
        background = choices[rng.integers(len(choices))]
        size = ("small", "medium", "large")[rng.integers(3)]
        obj = self._place(rng, shape, color, size, position)
        caption = caption_for((obj,), background, True, True, True)
        return Scene(background, (obj,), caption, {"size": True, "position": True, "background": True})

    @staticmethod
    def _place(rng: np.random.Generator, shape: str, color: str, size: str, position: str) -> ShapeObject:
        lo, hi = SIZES[size]
        extent = float(rng.uniform(lo, hi))
        col, row = POSITIONS[position]
        jitter = 3.0
        cx = CELL_CENTERS[col] + float(rng.uniform(-jitter, jitter))
        cy = CELL_CENTERS[row] + float(rng.uniform(-jitter, jitter))
        half = extent / 2.0 + 0.5
        cx = min(max(cx, half), IMAGE_SIZE - half)
        cy = min(max(cy, half), IMAGE_SIZE - half)
        return ShapeObject(shape, color, size, position, cx, cy, extent)

    def sample(self, index: int) -> tuple[np.ndarray, str]:
        scene = self.scene(index)
        return render(scene), scene.caption

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.sample(index)


def to_tensor_batch(images: list[np.ndarray]):
    """uint8 HxWx3 list -> float tensor Bx3xHxW in [-1, 1]."""
    import torch

    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def random_mask(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A random inpainting mask (1 = repaint): rectangles or blobs, float32 HxW of 0/1."""
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    kind = rng.integers(3)
    for _ in range(int(rng.integers(1, 3))):
        w, h = rng.uniform(0.2, 0.7, size=2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=255)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=255)
        else:  # blobby stroke
            pts = [(float(x0 + rng.uniform(0, w)), float(y0 + rng.uniform(0, h))) for _ in range(4)]
            d.line(pts, fill=255, width=int(rng.integers(6, 16)), joint="curve")
            for p in pts:
                r = float(rng.uniform(3, 8))
                d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=255)
    return (np.asarray(m, dtype=np.float32) > 127).astype(np.float32)
