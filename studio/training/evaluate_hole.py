"""The "into the hole" measure: inpainting the way an artist does it.

An artist paints a hole anywhere, of any size, and names the object without a position ("a yellow star").
Each case: a held-out (colour, shape, cell) triple (never drawn in training, ``data.is_held_out``); a picture of
a neutral background, empty or (half the time) with one other object not touching the hole; a rectangle or ellipse hole of random
side 20-40 px centred at a random point of that cell (not grid-aligned); the prompt "a <colour> <shape>" and, as
a second case, "a <colour> <shape> on a <background> background". Success: the named colour's largest blob
(pixels whose nearest named colour is it, the analysis' classifier) has at least MIN_AREA pixels, INSIDE_FRACTION
of them inside the hole. Its shape is then told by the analysis' shape classifier.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage

from .analysis import _COLOR_ARRAY, _COLOR_NAMES, classify_shape, largest_blob, shape_features
from .data import CELL_CENTERS, COLORS, POSITIONS, SHAPES, Scene, ShapesDataset, held_out_triples, render
from .hole_data import random_hole

MIN_AREA = 12  # px: the analysis' smallest object
INSIDE_FRACTION = 0.75  # of the named colour's blob inside the hole
HOLE_SEED = 2_700_027


def color_map(img: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour of every pixel (HxW)."""
    d = np.linalg.norm(img.astype(np.float32)[:, :, None, :] - _COLOR_ARRAY[None, None], axis=3)
    return d.argmin(axis=2)


def find_in_hole(img: np.ndarray, mask: np.ndarray, color: str) -> dict:
    """Where the named colour's largest blob is: its area, the share of it inside the hole, its shape."""
    blob = largest_blob(color_map(img) == _COLOR_NAMES.index(color))
    if not blob.any():
        return {"area": 0, "inside": 0.0, "shape": None, "found": False}
    area = int(blob.sum())
    inside = float((blob & (mask >= 0.5)).sum() / max(area, 1))
    shape = classify_shape(shape_features(blob)) if area >= MIN_AREA else None
    return {"area": area, "inside": inside, "shape": shape, "found": area >= MIN_AREA and inside >= INSIDE_FRACTION}


def hole_cases(seed: int = HOLE_SEED, repeats: int = 1, n: int | None = None) -> list[dict]:
    """Each held-out triple ``repeats`` times, with and without the background in the prompt; half the
    pictures hold one other object (another colour, in a cell away from the hole)."""
    rng = np.random.default_rng(seed)
    cases = []
    for color, shape, position in held_out_triples() * repeats:
        bg = [b for b in ("white", "black", "gray") if b != color][int(rng.integers(2))]
        col, row = POSITIONS[position]
        centre = (CELL_CENTERS[col] + float(rng.uniform(-8, 8)), CELL_CENTERS[row] + float(rng.uniform(-8, 8)))
        mask = random_hole(rng, centre=centre)
        objs: tuple = ()
        img = render(Scene(bg, (), ""))
        if rng.random() < 0.5:
            dist = {p: max(abs(c - col), abs(r - row)) for p, (c, r) in POSITIONS.items()}
            far = [p for p, d in dist.items() if d == max(dist.values())]  # the centre: any other cell
            others = [c for c in COLORS if c not in (color, bg)]
            near_hole = ndimage.binary_dilation(mask > 0, iterations=2)
            for _ in range(20):  # away from the hole: not touching it
                other = ShapesDataset._place(rng, SHAPES[int(rng.integers(5))], others[int(rng.integers(len(others)))],
                                             "medium", far[int(rng.integers(len(far)))])  # fmt: skip
                with_other = render(Scene(bg, (other,), ""))
                drawn = np.abs(with_other.astype(np.int16) - np.array(COLORS[bg], np.int16)).max(axis=2) > 8
                if not (drawn & near_hole).any():
                    objs, img = (other,), with_other
                    break
        for with_bg in (False, True):
            prompt = f"a {color} {shape}" + (f" on a {bg} background" if with_bg else "")
            cases.append({"prompt": prompt, "color": color, "shape": shape, "position": position, "background": bg,
                          "image": img, "mask": mask, "other": bool(objs), "with_background": with_bg})  # fmt: skip
    return cases[:n] if n is not None else cases


def score_hole(painted: list[np.ndarray], cases: list[dict]) -> dict:
    """Success rates in all, by colour, by shape, with/without the background, with/without another object."""
    found, shape_ok = [], []
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    outside = []
    for img, c in zip(painted, cases, strict=True):
        r = find_in_hole(img, c["mask"], c["color"])
        ok = r["found"]
        found.append(ok)
        shape_ok.append(ok and r["shape"] == c["shape"])
        for key, val in (("by_color", c["color"]), ("by_shape", c["shape"]),
                         ("by_prompt", "with background" if c["with_background"] else "object only"),
                         ("by_picture", "another object" if c["other"] else "empty")):  # fmt: skip
            groups[key][val].append(ok)
        outside.append(float(np.abs(img.astype(np.float32) - c["image"].astype(np.float32))[c["mask"] < 0.5].mean()))
    out: dict = {"n": len(cases), "in_hole": float(np.mean(found)), "in_hole_and_shape": float(np.mean(shape_ok))}
    for key, g in groups.items():
        out[key] = {k: round(float(np.mean(v)), 4) for k, v in sorted(g.items())}
    out["outside_mean_abs_change"] = round(float(np.mean(outside)), 2)
    out["inside_fraction"] = INSIDE_FRACTION
    return out


def hole_line(r: dict) -> str:
    weak = ", ".join(f"{k} {r['by_color'].get(k, float('nan')):.0%}" for k in ("purple", "orange"))
    return (f"into the hole (held-out scenes, random holes, no position in the prompt; {r['n']} cases): the named "
            f"colour's object in the hole {r['in_hole']:.1%}, with the right shape {r['in_hole_and_shape']:.1%} "
            f"({weak}, square {r['by_shape'].get('square', float('nan')):.0%}); "
            f"mean change outside the hole {r['outside_mean_abs_change']} / 255")

