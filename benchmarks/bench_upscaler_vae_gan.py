"""Benchmark (issue 27 item 1): the x4 latent upscaler with its adversarially retrained VAE decoder against today's,
as the studio runs it. PSNR, SSIM and edge sharpness against the sharp truth, and a side-by-side picture.

    cp -r models/latent-upscaler-x4 /tmp/up-new
    python -m studio.training export-upscaler-vae-gan --run-dir runs/upscaler-vae-gan --model /tmp/up-new
    .venv/bin/python benchmarks/bench_upscaler_vae_gan.py --old models/latent-upscaler-x4 --new /tmp/up-new \\
        --png models/latent-upscaler-x4/vae_gan_comparison.png

Held-out scenes (``sr_data.HELDOUT_SEED``, no training run draws from it), 64 -> 256 px. Rows: bicubic and Lanczos
(PIL), and each folder through the studio's own latent upscale (``upscale_mode="latent"`` at the request's defaults:
Euler a, 20 steps, its mirrored margin and tiling), and each folder's decoder on the true structured latent
(``evaluate_upscaler.decoder_scores``, what the training validates). Edge sharpness (``sr_data.edge_sharpness``,
1.0 = the truth's): the median over the scenes (as the VAE measurements take it) and the mean. The verdict applies
the built-in VAE's validation rule to the studio's rows: the new decoder ships if it loses at most 0.5 dB PSNR and
0.002 SSIM and its edge sharpness is nearer 1. The picture: rows of held-out scenes, a crop around an object
zoomed 3x, truth | old | new. No timing is asserted; it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def lanczos(img, size: int):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))


def side_by_side(path: Path, truths, cols, scenes, crop: int = 96, zoom: int = 3) -> Path:
    """Rows: a ``crop`` px square around each scene's first object (in the 256 px picture), ``zoom`` x nearest;
    columns: the truth, then each of ``cols``; a 4 px white gap."""
    import numpy as np
    from PIL import Image

    s, gap = crop * zoom, 4
    columns = [truths, *cols]
    sheet = Image.new("RGB", (len(columns) * (s + gap) - gap, len(truths) * (s + gap) - gap), (255, 255, 255))
    for r, (truth, scene) in enumerate(zip(truths, scenes, strict=True)):
        n = truth.shape[0]
        obj = scene.objects[0] if scene.objects else None
        cx, cy = (obj.cx * n / 64, obj.cy * n / 64) if obj else (n / 2, n / 2)
        x0 = int(np.clip(round(cx - crop / 2), 0, n - crop))
        y0 = int(np.clip(round(cy - crop / 2), 0, n - crop))
        for c, col in enumerate(columns):
            tile = Image.fromarray(col[r][y0 : y0 + crop, x0 : x0 + crop]).resize((s, s), Image.Resampling.NEAREST)
            sheet.paste(tile, (c * (s + gap), r * (s + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=str(ROOT / "models" / "latent-upscaler-x4"), help="today's upscaler folder")
    ap.add_argument("--new", required=True, help="the same folder with the retrained VAE (export-upscaler-vae-gan)")
    ap.add_argument("--n", type=int, default=16, help="held-out scenes")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--png", default=None, help="write the side-by-side picture here")
    ap.add_argument("--rows", default="0,2,5,9", help="held-out scenes in the picture (indices < --n)")
    ap.add_argument("--json", default=None, help="write the scores as JSON")
    a = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from studio.core import GenerateRequest
    from studio.engine.engine import Engine
    from studio.training.evaluate_upscaler import decoder_scores
    from studio.training.sr_data import bicubic, edge_sharpness, heldout_pairs, psnr, ssim
    from studio.training.vae_quality import load_vae_folder

    pairs = heldout_pairs(a.n)
    engine = Engine()

    def studio(folder: str):
        def run(lr, i, cap):
            req = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(Path(folder).resolve()),
                                              init_image=lr, scale=4.0, prompt=cap, steps=a.steps, sampler=a.sampler,
                                              seed=i)  # fmt: skip
            return np.asarray(engine.generate(req).images[0])

        return run

    methods = {"bicubic (PIL)": lambda lr, i, cap: bicubic(lr, 256), "Lanczos (PIL)": lambda lr, i, cap: lanczos(lr, 256),
               "today's VAE, in the studio": studio(a.old), "adversarial VAE, in the studio": studio(a.new)}  # fmt: skip
    rows, outs = {}, {}
    for name, fn in methods.items():
        outs[name] = [fn(lr, i, cap) for i, (hr, lr, cap) in enumerate(pairs)]
        es = [edge_sharpness(o, hr) for o, (hr, _lr, _c) in zip(outs[name], pairs, strict=True)]
        rows[name] = {"psnr": float(np.mean([psnr(hr, o) for o, (hr, _l, _c) in zip(outs[name], pairs, strict=True)])),
                      "ssim": float(np.mean([ssim(hr, o) for o, (hr, _l, _c) in zip(outs[name], pairs, strict=True)])),
                      "edge_median": float(np.nanmedian(es)), "edge_mean": float(np.nanmean(es))}  # fmt: skip
        print(f"  {name}: {rows[name]}", file=sys.stderr, flush=True)
    for label, folder in (("today's decoder on the true latent", a.old), ("adversarial decoder on the true latent", a.new)):
        d = decoder_scores(load_vae_folder(Path(folder) / "vae"), a.n)
        rows[label] = {"psnr": d["psnr"], "ssim": d["ssim"], "edge_median": d["edge_sharpness"], "edge_mean": float("nan")}
    print(f"\nx4, 64 -> 256 px, {a.n} held-out scenes; studio rows: {a.sampler}, {a.steps} steps; edge sharpness "
          "1.0 = the truth's\n")
    print("| method | PSNR (dB) | SSIM | edge sharpness (median) | (mean) |\n| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['edge_median']:.3f} | {r['edge_mean']:.3f} |")
    old, new = rows["today's VAE, in the studio"], rows["adversarial VAE, in the studio"]
    holds = (old["psnr"] - new["psnr"] <= 0.5 and old["ssim"] - new["ssim"] <= 0.002
             and abs(1 - new["edge_median"]) < abs(1 - old["edge_median"]))
    print(f"\nrule (PSNR -{old['psnr'] - new['psnr']:.3f} dB <= 0.5, SSIM {new['ssim'] - old['ssim']:+.4f} >= -0.002, "
          f"edge sharpness {old['edge_median']:.3f} -> {new['edge_median']:.3f} nearer 1): "
          f"{'holds: ship it' if holds else 'fails: do not ship'}")
    if a.png:
        picks = [int(v) for v in a.rows.split(",")]
        scenes = [heldout_scene(i) for i in picks]
        cols = [[outs[k][i] for i in picks] for k in ("today's VAE, in the studio", "adversarial VAE, in the studio")]
        print(f"wrote {side_by_side(Path(a.png), [pairs[i][0] for i in picks], cols, scenes)}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "holds": holds}, indent=2) + "\n")
    return 0


def heldout_scene(i: int):
    """The held-out scene ``i`` (its objects place the picture's crop)."""
    from studio.training.sr_data import HELDOUT_SEED, SRPairs

    return SRPairs(HELDOUT_SEED).ds.scene(i)


if __name__ == "__main__":
    raise SystemExit(main())
