"""Measure the shipped model: colour / shape / position accuracy on held-out prompts, VAE PSNR.

Generation uses diffusers directly with the shipped folder (fixed seeds). A 9-channel (inpainting) model is
run as plain text-to-image the way the engine does it: mask all ones, the image irrelevant.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .analysis import analyse
from .data import IMAGE_SIZE, SHAPES, ShapesDataset, caption_for, held_out_triples
from .export import load_pipeline

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
}


def eval_prompts(n: int | None = None, seed: int = 0, repeats: int = 2) -> list[dict]:
    """Held-out single-object prompts: every held-out (colour, shape, position) triple ``repeats`` times, on
    a neutral background that differs from the colour, size unsaid ("medium") or "large" in turn."""
    rng = np.random.default_rng(seed)
    items = []
    for k, (color, shape, position) in enumerate(held_out_triples() * repeats):
        bgs = [b for b in ("white", "black", "gray") if b != color]
        bg = bgs[int(rng.integers(len(bgs)))]
        obj = ShapesDataset._place(rng, shape, color, ("medium", "large")[k % 2], position)
        prompt = caption_for((obj,), bg, say_size=True, say_position=True, say_background=True)
        items.append({"prompt": prompt, "color": color, "shape": shape, "position": position, "background": bg,
                      "object": obj})  # fmt: skip
    if n is not None:
        items = items[:n]
    return items


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    steps: int = 20,
    cfg: float = 6.0,
    batch: int = 16,
    images: list[np.ndarray] | None = None,
    masks: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Text-to-image, or inpainting of ``images`` where ``masks`` (64x64, 1 = repaint) are set."""
    from PIL import Image

    inpaint = pipe.unet.config.in_channels == 9
    out: list[np.ndarray] = []
    for s in range(0, len(prompts), batch):
        ps = prompts[s : s + batch]
        gens = [torch.Generator().manual_seed(int(x)) for x in seeds[s : s + batch]]
        kwargs = dict(num_inference_steps=steps, guidance_scale=cfg, generator=gens, height=IMAGE_SIZE, width=IMAGE_SIZE,
                      output_type="np")
        if masks is not None:
            assert images is not None
            kwargs["image"] = [Image.fromarray(im) for im in images[s : s + batch]]
            kwargs["mask_image"] = [Image.fromarray((m * 255).astype(np.uint8)) for m in masks[s : s + batch]]
            kwargs["strength"] = 1.0
        elif inpaint:
            kwargs["image"] = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (128, 128, 128))
            kwargs["mask_image"] = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 255)
            kwargs["strength"] = 1.0
        with torch.no_grad():
            imgs = pipe(prompt=ps, **kwargs).images
        out.extend([(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in imgs])
    return out


INPAINT_BOX = 32  # side of the square hole painted over the target cell, in pixels


def inpaint_cases(items: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each prompt: an empty picture of its background and a square hole over the cell the prompt names.

    Inpainting is then asked to draw the object into the hole: the analysis checks colour, shape and that it
    landed in the hole's cell, and the pixels outside the hole are compared with the picture's."""
    from .data import CELL_CENTERS, COLORS, POSITIONS

    images, masks = [], []
    for it in items:
        images.append(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), COLORS[it["background"]], np.uint8))
        col, row = POSITIONS[it["position"]]
        m = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        h = INPAINT_BOX // 2
        cx, cy = int(CELL_CENTERS[col]), int(CELL_CENTERS[row])
        m[max(0, cy - h) : cy + h, max(0, cx - h) : cx + h] = 1.0
        masks.append(m)
    return images, masks


REMOVE_GROW = 3  # px the "remove an object" mask reaches past the object's bounding box
REMOVED_FRACTION = 0.95  # an object counts as removed when this much of its hole is background-coloured


def background_prompt(background: str) -> str:
    """A prompt naming only the background, the way the captions name it: "on a white background"."""
    return caption_for((), background, say_size=False, say_position=False, say_background=True).strip()


def remove_cases(items: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """For each prompt: its object drawn on its background, a mask over the object (its bounding box grown
    by REMOVE_GROW px) and a prompt naming only the background. Inpainting is asked to remove the object."""
    from .data import COLORS, Scene, render

    images, masks, prompts = [], [], []
    for it in items:
        img = render(Scene(it["background"], (it["object"],), it["prompt"]))
        drawn = np.abs(img.astype(np.int16) - np.array(COLORS[it["background"]], np.int16)).max(axis=2) > 8
        ys, xs = np.nonzero(drawn)
        m = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        g = REMOVE_GROW
        m[max(0, ys.min() - g) : ys.max() + 1 + g, max(0, xs.min() - g) : xs.max() + 1 + g] = 1.0
        images.append(img)
        masks.append(m)
        prompts.append(background_prompt(it["background"]))
    return images, masks, prompts


def score_removal(painted: list[np.ndarray], src: list[np.ndarray], masks: list[np.ndarray],
                  items: list[dict]) -> dict:  # fmt: skip
    """How well objects were removed: per picture, the fraction of the hole's pixels whose nearest named colour
    (the analysis' own classifier) is the background's; "removed" = the share of pictures where that is at
    least REMOVED_FRACTION; and the mean change outside the hole."""
    from .analysis import nearest_color

    fractions, outside = [], []
    for p, s, m, it in zip(painted, src, masks, items, strict=True):
        hole = p[m >= 0.5].astype(np.float32)
        names = [nearest_color(px) for px in hole]
        fractions.append(sum(n == it["background"] for n in names) / max(1, len(names)))
        outside.append(float(np.abs(p.astype(np.float32) - s.astype(np.float32))[m < 0.5].mean()))
    f = np.array(fractions)
    bgs = np.array([it["background"] for it in items])
    by_bg = {b: round(float((f[bgs == b] >= REMOVED_FRACTION).mean()), 4) for b in sorted(set(bgs.tolist()))}
    return {
        "n": len(items),
        "removed": float((f >= REMOVED_FRACTION).mean()),
        "removed_by_background": by_bg,
        "hole_background_fraction": round(float(f.mean()), 4),
        "outside_mean_abs_change": round(float(np.mean(outside)), 2),
        "grow_px": REMOVE_GROW,
        "prompt": "on a <background> background",
    }


def evaluate_into_hole(pipe, steps: int = 20, cfg: float = 6.0, seed: int = 0, repeats: int = 1) -> dict:
    """The artist's way (``evaluate_hole``): random holes in held-out scenes, the object named without a place."""
    from .evaluate_hole import hole_cases, score_hole

    cases = hole_cases(repeats=repeats)
    painted = generate(pipe, [c["prompt"] for c in cases], [seed + k for k in range(len(cases))], steps, cfg,
                       images=[c["image"] for c in cases], masks=[c["mask"] for c in cases])  # fmt: skip
    return score_hole(painted, cases)


def set_sampler(pipe, name: str) -> None:
    import diffusers

    cls_name, overrides = SAMPLERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)


def score(images: list[np.ndarray], items: list[dict]) -> dict:
    ok = Counter()
    confusions = Counter()
    for img, it in zip(images, items, strict=True):
        a = analyse(img)
        for attr in ("color", "shape", "position"):
            got = getattr(a, attr)
            if got == it[attr]:
                ok[attr] += 1
            else:
                confusions[f"{attr}: {it[attr]} -> {got}"] += 1
        ok["all"] += a.color == it["color"] and a.shape == it["shape"] and a.position == it["position"]
    n = len(items)
    return {
        "n": n,
        "color": ok["color"] / n,
        "shape": ok["shape"] / n,
        "position": ok["position"] / n,
        "all_three": ok["all"] / n,
        "confusions": dict(confusions.most_common(12)),
    }


def analyser_self_check(n: int = 500, seed: int = 4242) -> dict:
    """The analysis on ground-truth data set images (single objects): must be ~100%."""
    ds = ShapesDataset(seed, two_object_prob=0.0)
    items, images = [], []
    for i in range(n):
        sc = ds.scene(i)
        o = sc.objects[0]
        items.append({"color": o.color, "shape": o.shape, "position": o.position})
        images.append(ds.sample(i)[0])
    r = score(images, items)
    r.pop("confusions", None) if not r["confusions"] else None
    return r


def vae_psnr(model_dir: Path, n: int = 256) -> float:
    from diffusers import AutoencoderKL

    from .train_vae import measure_psnr

    vae = AutoencoderKL.from_pretrained(Path(model_dir) / "vae", local_files_only=True, dtype=torch.float32)
    return measure_psnr(vae, n=n)


def evaluate(
    model_dir: str | Path,
    n: int | None = None,
    steps: int = 20,
    cfg: float = 6.0,
    sampler: str = "euler",
    seed: int = 0,
    repeats: int = 2,
    psnr_images: int = 256,
    save_grid: str | None = None,
    inpaint: bool = True,
    remove_n: int | None = None,
    hole_repeats: int = 1,
) -> dict:
    t0 = time.time()
    result: dict = {"model": str(model_dir), "steps": steps, "cfg": cfg, "sampler": sampler}
    result["analyser_on_dataset"] = analyser_self_check()
    result["vae_psnr_db"] = round(vae_psnr(Path(model_dir), psnr_images), 2)
    pipe = load_pipeline(model_dir)
    set_sampler(pipe, sampler)
    items = eval_prompts(n, repeats=repeats)
    prompts, seeds = [it["prompt"] for it in items], [seed + k for k in range(len(items))]
    images = generate(pipe, prompts, seeds, steps, cfg)
    result["held_out"] = score(images, items)
    if pipe.unet.config.in_channels == 9 and inpaint:
        src, masks = inpaint_cases(items)
        painted = generate(pipe, prompts, seeds, steps, cfg, images=src, masks=masks)
        r = score(painted, items)
        outside = [np.abs(p.astype(np.float32) - s.astype(np.float32))[m < 0.5].mean()
                   for p, s, m in zip(painted, src, masks, strict=True)]
        r["outside_mean_abs_change"] = round(float(np.mean(outside)), 2)
        result["inpaint"] = r
        rm_items = items[:remove_n] if remove_n is not None else items
        src, masks, rm_prompts = remove_cases(rm_items)
        painted = generate(pipe, rm_prompts, seeds[: len(rm_items)], steps, cfg, images=src, masks=masks)
        result["remove"] = score_removal(painted, src, masks, rm_items)
        result["into_hole"] = evaluate_into_hole(pipe, steps, cfg, seed, repeats=hole_repeats)
    result["shapes"] = list(SHAPES)
    result["seconds"] = round(time.time() - t0, 1)
    if save_grid:
        from PIL import Image

        cols = 10
        rows = (len(images) + cols - 1) // cols
        grid = np.zeros((rows * IMAGE_SIZE, cols * IMAGE_SIZE, 3), np.uint8)
        for k, im in enumerate(images):
            r, c = divmod(k, cols)
            grid[r * IMAGE_SIZE : (r + 1) * IMAGE_SIZE, c * IMAGE_SIZE : (c + 1) * IMAGE_SIZE] = im
        Image.fromarray(grid).save(save_grid)
    return result


def main_evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    r = evaluate(args.model, n=args.n, steps=args.steps, cfg=args.cfg, sampler=args.sampler, seed=args.seed,
                 repeats=args.repeats,
                 psnr_images=args.psnr_images, save_grid=args.grid,
                 inpaint=not args.no_inpaint, remove_n=args.remove_n, hole_repeats=args.hole_repeats)
    h = r["held_out"]
    print(json.dumps(r, indent=2))
    print(
        f"held-out single objects ({h['n']} prompts, {r['steps']} steps, {r['sampler']}, CFG {r['cfg']}): "
        f"colour {h['color']:.1%}  shape {h['shape']:.1%}  position {h['position']:.1%}  all three {h['all_three']:.1%}; "
        f"VAE PSNR {r['vae_psnr_db']} dB"
    )
    if "inpaint" in r:
        ip = r["inpaint"]
        print(
            f"inpainting the named object into an empty picture's hole over its cell: colour {ip['color']:.1%}  "
            f"shape {ip['shape']:.1%}  in the hole {ip['position']:.1%}; "
            f"mean change outside the hole {ip['outside_mean_abs_change']} / 255"
        )
    if "remove" in r:
        rm = r["remove"]
        by_bg = ", ".join(f"{b} {v:.1%}" for b, v in rm["removed_by_background"].items())
        print(
            f"removing the object (mask = its box + {rm['grow_px']} px, prompt naming only the background, "
            f"{rm['n']} pictures): removed {rm['removed']:.1%} (hole >= {REMOVED_FRACTION:.0%} background-coloured; "
            f"{by_bg}), hole background-coloured {rm['hole_background_fraction']:.1%} on average; "
            f"mean change outside the hole {rm['outside_mean_abs_change']} / 255"
        )
    if "into_hole" in r:
        from .evaluate_hole import hole_line

        print(hole_line(r["into_hole"]))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
