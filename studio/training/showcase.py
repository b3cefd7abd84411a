"""One picture of what each built-in model does, made through the studio's own engine (the path the app runs),
for the README's built-in model section: text to image, inpainting into a hole and removing an object, a
scribble followed by the built-in ControlNet (when it is there), and the x4 upscalers against bicubic."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.control import ControlSpec
from ..core.requests import GenerateRequest, InpaintOptions, UpscaleOptions
from .data import Scene, ShapeObject, render

CELL = 160  # px per shown picture
LABEL_W = 150
CAPTION_H = 30
PROMPTS = {  # prompt -> its caption under the picture
    "a large red circle in the center on a white background": "red circle, center",
    "a blue square in the top left and a yellow star in the bottom right on a black background": "two objects",
    "a small purple triangle on the right on a gray background": "purple triangle, right",
    "a large orange diamond in the bottom on a white background": "orange diamond, bottom",
}
STEPS, CFG, SAMPLER = 20, 6.0, "Euler"


def _scene(background: str, objects: tuple[tuple[str, str, float, float, float], ...], size: int = 64) -> np.ndarray:
    """A scene of the data set's drawing; objects as (shape, colour, x, y, extent) on the 64 px grid."""
    objs = tuple(ShapeObject(s, c, "medium", "center", x, y, e) for s, c, x, y, e in objects)
    return render(Scene(background, objs, ""), size)


def _show(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img).resize((CELL, CELL), Image.Resampling.NEAREST if img.shape[0] < CELL else Image.Resampling.LANCZOS)


def _mask_overlay(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    m = (mask > 127)[..., None]
    return np.where(m, out * 0.45 + np.array([255, 40, 160]) * 0.55, out).astype(np.uint8)


def _outline(cx: float, cy: float, r: float, size: int = 64) -> np.ndarray:
    """A hand-drawn-looking closed outline (a wobbly five-lobed blob), black on white as the artist draws it."""
    big = Image.new("L", (size * 4, size * 4), 255)
    t = np.linspace(0, 2 * np.pi, 90, endpoint=True)
    rad = r * (1 + 0.18 * np.sin(3 * t + 0.5) + 0.06 * np.sin(7 * t))
    pts = [(4 * (cx + a * np.cos(b)), 4 * (cy + a * np.sin(b))) for a, b in zip(rad, t, strict=True)]
    ImageDraw.Draw(big).line(pts, fill=0, width=7, joint="curve")
    small = np.asarray(big.resize((size, size), Image.Resampling.BOX))
    return np.repeat(small[..., None], 3, axis=2)


def rows(engine, control_model: str | None, upscaler_x4: str | None, swinir: str | None) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    base = GenerateRequest(sampler=SAMPLER, steps=STEPS, cfg=CFG, seed=7)
    out: list[tuple[str, list[tuple[np.ndarray, str]]]] = []
    t2i = [(engine.generate(base.replace(prompt=p, seed=7 + i)).images[0], c) for i, (p, c) in enumerate(PROMPTS.items())]
    out.append(("Text to image", t2i))

    scene = _scene("white", (("circle", "blue", 16.0, 18.0, 18.0),))
    hole = np.zeros((64, 64), np.uint8)
    hole[30:58, 28:58] = 255
    inp = InpaintOptions(mask_blur=2)
    star = engine.generate(base.replace(mode="inpaint", prompt="a yellow star on a white background", init_image=scene,
                                        mask=hole, strength=1.0, inpaint=inp)).images[0]
    removal_src = _scene("gray", (("square", "red", 40.0, 24.0, 20.0), ("circle", "green", 18.0, 46.0, 16.0)))
    rm = np.zeros((64, 64), np.uint8)
    rm[11:37, 27:53] = 255
    removed = engine.generate(base.replace(mode="inpaint", prompt="on a gray background", init_image=removal_src,
                                           mask=rm, strength=1.0, inpaint=inp)).images[0]
    out.append(("Inpainting", [(_mask_overlay(scene, hole), "hole (mask)"), (star, '"a yellow star"'),
                               (_mask_overlay(removal_src, rm), "mask over the square"), (removed, "removed")]))

    if control_model:
        lines = _outline(32, 32, 17)
        prompt = "a green circle on a white background"
        seen = 255 - lines  # the ControlNet sees white lines on black (ControlSpec)
        ctrl = ControlSpec(model=control_model, image=seen, module="scribble")
        with_c = engine.generate(base.replace(prompt=prompt, controls=(ctrl,))).images[0]
        without = engine.generate(base.replace(prompt=prompt)).images[0]
        out.append(("Scribble control", [(lines, "the scribble"), (with_c, "followed"), (without, "no control")]))

    truth_big = _scene("black", (("star", "yellow", 20.0, 22.0, 24.0), ("square", "cyan", 44.0, 44.0, 20.0)), 256)
    low = np.asarray(Image.fromarray(truth_big).resize((64, 64), Image.Resampling.BICUBIC))
    ups: list[tuple[np.ndarray, str]] = [(low, "64 px input")]
    ups.append((np.asarray(Image.fromarray(low).resize((256, 256), Image.Resampling.BICUBIC)), "bicubic x4"))
    if upscaler_x4:
        req = base.replace(mode="upscale", init_image=low, model=upscaler_x4, steps=10, sampler="DPM++ 2M",
                           upscale=UpscaleOptions(method="latent", scale=4.0))
        ups.append((engine.generate(req).images[0], "latent upscaler x4"))
    if swinir:
        req = base.replace(mode="upscale", init_image=low, upscale=UpscaleOptions(method="model", scale=4.0, upscaler=swinir))
        ups.append((engine.generate(req).images[0], "SwinIR x4"))
    ups.append((truth_big, "truth (256 px)"))
    out.append(("Upscale x4", ups))
    return out


def compose(table: list[tuple[str, list[tuple[np.ndarray, str]]]]) -> Image.Image:
    cols = max(len(r) for _, r in table)
    w, h = LABEL_W + cols * (CELL + 8), len(table) * (CELL + CAPTION_H + 10) + 8
    sheet = Image.new("RGB", (w, h), (38, 38, 42))
    draw = ImageDraw.Draw(sheet)
    y = 8
    for title, cells in table:
        draw.text((10, y + CELL // 2 - 6), title, fill=(235, 235, 235))
        for i, (img, caption) in enumerate(cells):
            x = LABEL_W + i * (CELL + 8)
            sheet.paste(_show(img), (x, y))
            draw.text((x + 2, y + CELL + 6), caption[:30], fill=(200, 200, 200))
        y += CELL + CAPTION_H + 10
    return sheet


def main_showcase(args: argparse.Namespace) -> None:
    import torch

    from ..engine.engine import Engine

    torch.set_num_threads(args.threads)
    models = Path(args.models)
    control = args.control or next((str(p) for p in sorted(models.glob("*scribble*")) if p.is_dir()), None)
    x4 = models / "latent-upscaler-x4"
    swin = models / "swinir-x4" / "swinir-x4.safetensors"
    engine = Engine()
    sheet = compose(rows(engine, control, str(x4) if x4.is_dir() else None, str(swin) if swin.is_file() else None))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
