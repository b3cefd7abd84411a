"""Benchmark (issue 23 item 7, issue 27 item 4): does a diffusion upscale on the built-in model keep the picture, and
does it add detail? PSNR, SSIM and edge sharpness against the truth.

    .venv/bin/python benchmarks/bench_upscale_truth.py [--n 8] [--size 256] [--strengths 0.15,0.3,0.5] [--steps 20]

Ground truth: held-out scenes of the built-in model's domain (``studio.training.sr_data``: a seed no training run
draws from), drawn sharp at --size px. Each is downscaled x2 (Lanczos) and upscaled back x2 by:
- Lanczos (PIL), what "Resize" does;
- the engine's diffusion upscale with the built-in model (``upscale_mode="diffusion"``: a resize, then img2img at the
  strength given, in tiles where the picture is large), once per --strengths value, the scene's caption as the prompt;
- the built-in SwinIR x4 then a Lanczos x0.5 (what "Upscaler model" does at x2), when models/swinir-x4 is there.
- a control (``--control``, strength 0.3 by default): the diffusion upscale with each tile's detail replaced by
  noise of the same size, through the same detail rule: what the model's detail is worth over any detail.
Printed: mean PSNR (RGB) and SSIM (luma) against the truth, the gain over Lanczos, the edge sharpness
(``sr_data.edge_sharpness``: the gradient energy at the truth's edges, 1.0 = as sharp as the truth, Lanczos's own
figure is the bar for "adds detail") and seconds per image. No timing is asserted anywhere; it is a measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUILTIN = ROOT / "models" / "builtin"
SWINIR = ROOT / "models" / "swinir-x4" / "swinir-x4.safetensors"


def lanczos(img, size: int):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))


def random_detail(run):
    """``run`` with every tile's detail (its decoded output minus its VAE round trip, above the detail rule's blur)
    replaced by Gaussian noise of the same spread, the rule otherwise unchanged: the control that says whether the
    model's detail is better than any detail of its size."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    import studio.engine.upscale as up

    real = up.transfer_detail
    rng = np.random.default_rng(0)

    def high(x, sigma):
        return x - gaussian_filter(x, (sigma, sigma, 0), mode="reflect") if sigma > 0 else x

    def noise_instead(diffused, round_trip, base, sigma, radius):
        rt = round_trip.astype(np.float32)
        spread = high(diffused.astype(np.float32) - rt, sigma).std()
        noise = high(rng.normal(0.0, 1.0, rt.shape).astype(np.float32), sigma)
        return real(rt + noise * (spread / max(float(noise.std()), 1e-6)), round_trip, base, sigma, radius)

    def controlled(*args):
        up.transfer_detail = noise_instead
        try:
            return run(*args)
        finally:
            up.transfer_detail = real

    return controlled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="held-out scenes")
    ap.add_argument("--size", type=int, default=256, help="the truth's side in px (the input is half)")
    ap.add_argument("--strengths", default="0.15,0.3,0.5", help="diffusion upscale strengths, comma-separated")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--control", type=float, default=0.3,
                    help="a control row at this strength: each tile's detail replaced by noise of the same size "
                         "(how much of the diffusion's gain is the model's, not the detail rule's); 0: none")  # fmt: skip
    a = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from studio.core import GenerateRequest
    from studio.engine.engine import Engine
    from studio.training.sr_data import HELDOUT_SEED, SRPairs, edge_sharpness, psnr, render, ssim

    src = SRPairs(HELDOUT_SEED)
    scenes = [src.ds.scene(i) for i in range(a.n)]
    truths = [render(s, a.size) for s in scenes]
    inputs = [lanczos(t, a.size // 2) for t in truths]
    engine = Engine()

    def diffusion(strength: float):
        def run(lr, i, caption):
            req = GenerateRequest.from_fields(mode="upscale", upscale_mode="diffusion", model=str(BUILTIN),
                                              init_image=lr, scale=2.0, prompt=caption, steps=a.steps,
                                              strength=strength, seed=i)  # fmt: skip
            return np.asarray(engine.generate(req).images[0])

        return run

    methods = {"Lanczos x2 (Resize)": lambda lr, i, cap: lanczos(lr, a.size)}
    for s in (float(v) for v in a.strengths.split(",")):
        methods[f"diffusion upscale, built-in model, strength {s:g}, {a.steps} steps"] = diffusion(s)
    if SWINIR.exists():
        def swinir(lr, i, cap):
            req = GenerateRequest.from_fields(mode="upscale", upscale_mode="model", upscaler=str(SWINIR), init_image=lr,
                                              scale=2.0)  # fmt: skip
            return np.asarray(engine.generate(req).images[0])

        methods["SwinIR x4 (built-in) to x2 (Upscaler model)"] = swinir
    if a.control:
        methods[f"control: strength {a.control:g}, the model's detail replaced by noise of its size"] = random_detail(
            diffusion(a.control))  # fmt: skip
    rows = {}
    for name, fn in methods.items():
        t0 = time.time()
        ps, ss, es = [], [], []
        for i, (hr, lr, scene) in enumerate(zip(truths, inputs, scenes, strict=True)):
            out = fn(lr, i, scene.caption)
            assert out.shape == hr.shape, (name, out.shape, hr.shape)
            ps.append(psnr(hr, out))
            ss.append(ssim(hr, out))
            es.append(edge_sharpness(out, hr))
            print(f"    {name} scene {i}: {ps[-1]:.2f} dB ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows[name] = (float(np.mean(ps)), float(np.mean(ss)), float(np.nanmean(es)), (time.time() - t0) / len(truths))
        print(f"  {name}: {rows[name][0]:.2f} dB", file=sys.stderr, flush=True)
    base = rows["Lanczos x2 (Resize)"][0]
    print(f"\nx2, {a.size // 2} -> {a.size} px, {a.n} held-out scenes, PSNR (RGB) and SSIM (luma) against the sharp truth;")
    print("edge sharpness: the gradient energy at the truth's edges, 1.0 = the truth's\n")
    print("| method | PSNR (dB) | vs Lanczos (dB) | SSIM | edge sharpness | s / image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (p, s, e, t) in rows.items():
        print(f"| {name} | {p:.2f} | {p - base:+.2f} | {s:.4f} | {e:.3f} | {t:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
