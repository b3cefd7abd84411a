"""Measure the built-in scribble ControlNet (``evaluate-control``): does the picture fill the drawn outline, in the
prompt's colour? The same held-out outlines, prompts and seeds with and without the ControlNet.

Held-out outlines: ``ScribbleDataset(HELD_OUT_STREAM, held_out=True)``, a seed no training pool uses, one figure each:
about half the data set's shapes at its held-out (colour, shape, position) triples, half free figures (blobs,
polygons, ellipses, rectangles). The filled region of a picture is every pixel far from its background (the border's
median colour, as analysis.py finds it); it *follows* the outline when its IoU with the outline's interior is at least
0.5. Its colour is the analysis' nearest named colour of the region's inner pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .analysis import background_rgb, far_from, region_colour
from .control_data import HELD_OUT_STREAM, ScribbleDataset, ScribbleSample, control_rgb
from .data import IMAGE_SIZE
from .export import load_pipeline

FOLLOW_IOU = 0.5
FAR = 60.0  # a pixel this far (RGB distance) from the background belongs to the filled region (analysis.object_mask's)


def filled_region(img: np.ndarray) -> np.ndarray:
    return far_from(img, background_rgb(img), FAR)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def region_color(img: np.ndarray, region: np.ndarray) -> str | None:
    return region_colour(img, region) if region.sum() >= 4 else None


def score(img: np.ndarray, sample: ScribbleSample) -> dict:
    region = filled_region(img)
    v = iou(region, sample.interior)
    color = region_color(img, region)
    return {"iou": v, "follows": v >= FOLLOW_IOU, "color_ok": color == sample.figures[0].color, "color": color}


def load_controlnet_any(model: str | Path):
    """A ControlNetModel from a diffusers folder, or the EMA weights of a train-controlnet run folder."""
    from diffusers import ControlNetModel

    from .common import load_checkpoint
    from .train_controlnet import controlnet_from_checkpoint

    p = Path(model)
    if (p / "config.json").is_file():
        return ControlNetModel.from_pretrained(str(p), local_files_only=True, torch_dtype=torch.float32).eval()
    ck = load_checkpoint(p / "checkpoint.pt" if p.is_dir() else p)
    if ck is None:
        from .common import TrainingInputError

        raise TrainingInputError(f"no ControlNet at {p} (a diffusers folder or a train-controlnet run folder)")
    return controlnet_from_checkpoint(ck)


def held_out_samples(n: int) -> list[ScribbleSample]:
    ds = ScribbleDataset(HELD_OUT_STREAM, held_out=True)
    return [ds.sample(i) for i in range(n)]


def generate_pair(pipe, cpipe, samples: list[ScribbleSample], steps: int, cfg: float, batch: int = 16):
    """(without, with) images: the same prompts and seeds (seed = the sample's index), text-to-image as the engine
    runs the 9-channel built-in model (the all-ones mask)."""
    from PIL import Image

    plain: list[np.ndarray] = []
    ctrl: list[np.ndarray] = []
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    ones = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 255)
    for s in range(0, len(samples), batch):
        part = samples[s : s + batch]
        prompts = [x.caption for x in part]
        common = dict(prompt=prompts, image=[blank] * len(part), mask_image=[ones] * len(part), strength=1.0,
                      num_inference_steps=steps, guidance_scale=cfg, height=IMAGE_SIZE, width=IMAGE_SIZE,
                      output_type="np")  # fmt: skip
        with torch.no_grad():
            for out, p, extra in (
                (plain, pipe, {}),
                (ctrl, cpipe, {"control_image": [Image.fromarray(control_rgb(x.control)) for x in part]}),
            ):
                gens = [torch.Generator().manual_seed(s + k) for k in range(len(part))]
                imgs = p(generator=gens, **common, **extra).images
                out.extend((np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in imgs)
    return plain, ctrl


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    return {"n": len(rows), "follows": float(np.mean([r["follows"] for r in rows])),
            "mean_iou": float(np.mean([r["iou"] for r in rows])),
            "color": float(np.mean([r["color_ok"] for r in rows])),
            "both": float(np.mean([r["follows"] and r["color_ok"] for r in rows]))}


def evaluate_control(model: str | Path, base: str | Path = "models/builtin", n: int = 64, steps: int = 20,
                     cfg: float = 6.0, grid: str | None = None) -> dict:
    from diffusers import StableDiffusionControlNetInpaintPipeline

    pipe = load_pipeline(base)
    net = load_controlnet_any(model)
    cpipe = StableDiffusionControlNetInpaintPipeline.from_pipe(pipe, controlnet=net)
    cpipe.set_progress_bar_config(disable=True)
    samples = held_out_samples(n)
    plain, ctrl = generate_pair(pipe, cpipe, samples, steps, cfg)
    result: dict = {"model": str(model), "n": n, "steps": steps, "cfg": cfg}
    truth = [x.target for x in samples]  # the ceiling: the outlines' own filled pictures (edges are anti-aliased)
    for name, imgs in (("without", plain), ("with", ctrl), ("truth", truth)):
        rows = [score(im, x) | {"kind": "shape" if x.figures[0].shape else "free"} for im, x in zip(imgs, samples, strict=True)]
        result[name] = {"all": summarise(rows),
                        "shape": summarise([r for r in rows if r["kind"] == "shape"]),
                        "free": summarise([r for r in rows if r["kind"] == "free"])}  # fmt: skip
    if grid:
        from PIL import Image

        k = min(16, n)
        cols = [np.concatenate([control_rgb(samples[i].control), plain[i], ctrl[i]], axis=0) for i in range(k)]
        Image.fromarray(np.concatenate(cols, axis=1)).save(grid)
    return result


_ROW = {"without": "without", "with": "**with**", "truth": "(the target pictures)"}


def table(result: dict) -> str:
    lines = ["| outlines | control | follows (IoU >= 0.5) | mean IoU | colour | both |", "| --- | --- | --- | --- | --- | --- |"]
    for part, label in (("all", "all"), ("shape", "data set shapes"), ("free", "free figures")):
        for name in ("without", "with", "truth"):
            s = result[name][part]
            if s.get("n"):
                lines.append(f"| {label} ({s['n']}) | {_ROW[name]} | {s['follows']:.1%} | {s['mean_iou']:.3f} | "
                             f"{s['color']:.1%} | {s['both']:.1%} |")
    return "\n".join(lines)


def main_evaluate_control(args) -> None:
    from .common import set_threads

    set_threads(args.threads)
    result = evaluate_control(args.model, args.base, n=args.n, steps=args.steps, cfg=args.cfg, grid=args.grid)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
