"""Benchmark: the studio engine against plain diffusers on the same model and settings.

    .venv/bin/python benchmarks/bench_engine.py            # tiny random model (seconds)
    .venv/bin/python benchmarks/bench_engine.py --sd15     # SD 1.5-shaped random model (slow on a CPU)

Runs are interleaved (engine, plain, engine, plain...) so drift in machine load hits both alike;
the table reports the median and the best per-step time of each, their ratios, the preview cost
per step, and the process's peak RSS. Ratios, measured in one run, are what to compare.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd15", action="store_true", help="SD 1.5-shaped random model instead of the tiny one")
    ap.add_argument("--model", help="an existing diffusers folder to use instead")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="width = height in pixels")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()

    import numpy as np
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    import studio.engine  # noqa: F401  (first: puts the hub offline before diffusers is imported)
    from studio.core import GenerateRequest
    from studio.engine.engine import Engine
    from studio.engine.schedulers import build_scheduler
    from studio.testing.tiny import build_tiny_pipeline

    steps = a.steps or (10 if a.sd15 else 30)
    size = a.size or (256 if a.sd15 else 64)
    tmp = tempfile.TemporaryDirectory()
    if a.model:
        model = a.model
    else:
        print(f"building a random {'SD 1.5' if a.sd15 else 'tiny'}-shaped model...", file=sys.stderr)
        model = str(build_tiny_pipeline(Path(tmp.name) / "m", size="sd15" if a.sd15 else "tiny"))

    engine = Engine()
    loaded = engine.load(model)
    # Plain diffusers: the same weights through a separately built pipeline object, no callback.
    plain = type(loaded.base).from_pipe(loaded.base)
    plain.set_progress_bar_config(disable=True)

    req = GenerateRequest(prompt="a red circle on a white background", model=model, sampler=a.sampler,
                          steps=steps, seed=1, width=size, height=size, cfg=7.0, preview="x0")

    def run_engine() -> tuple[float, float]:
        got = []
        t = time.perf_counter()
        r = engine.generate(req, on_step=got.append)
        return time.perf_counter() - t, r.timings["preview"]

    def run_plain() -> float:
        plain.scheduler = build_scheduler(loaded.scheduler_config, a.sampler, "Normal", 1)
        extra = {}
        if loaded.inpainting_unet:  # a 9-channel model does txt2img with a full mask, as the engine does
            from PIL import Image

            extra = dict(image=Image.new("RGB", (size, size)), mask_image=Image.new("L", (size, size), 255))
        t = time.perf_counter()
        with torch.inference_mode():
            plain(prompt=req.prompt, num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
                  generator=torch.Generator("cpu").manual_seed(1), output_type="np", **extra)
        return time.perf_counter() - t

    run_engine(), run_plain()  # warm-up: first-call allocations, kernels
    ours, theirs, preview = [], [], []
    for i in range(a.repeats):
        # ABBA order: neither side always runs first after the other.
        for side in ("engine", "plain") if i % 2 == 0 else ("plain", "engine"):
            if side == "engine":
                t, p = run_engine()
                ours.append(t / steps)
                preview.append(p / steps)
            else:
                theirs.append(run_plain() / steps)

    # The preview itself, measured alone: the linear map on one latent, per call.
    lat = np.random.default_rng(0).normal(size=(4, size // loaded.vae_scale_factor, size // loaded.vae_scale_factor))
    lat = lat.astype(np.float16)
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        engine.latent_preview(model, lat)
    map_cost = (time.perf_counter() - t) / n

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med_o, med_t = statistics.median(ours), statistics.median(theirs)
    best_o, best_t = min(ours), min(theirs)
    rows = [
        ("model", (a.model or f"{'SD1.5-shaped' if a.sd15 else 'tiny'} random")
         + f", {size}x{size}, {steps} steps, {a.sampler}, {engine.device.type}, {torch.get_num_threads()} threads"),
        ("studio engine, s/step (median)", f"{med_o:.4f}"),
        ("plain diffusers, s/step (median)", f"{med_t:.4f}"),
        ("ratio studio/plain (median)", f"{med_o / med_t:.3f}"),
        ("studio engine, s/step (best)", f"{best_o:.4f}"),
        ("plain diffusers, s/step (best)", f"{best_t:.4f}"),
        ("ratio studio/plain (best)", f"{best_o / best_t:.3f}"),
        ("preview + latent keeping, ms/step", f"{1000 * statistics.median(preview):.3f}"),
        ("preview share of a step", f"{100 * statistics.median(preview) / med_o:.2f}%"),
        ("linear-map preview alone, ms", f"{1000 * map_cost:.3f}"),
        ("peak RSS, MB", f"{peak_mb:.0f}"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(w)} | value |")
    print(f"|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(w)} | {v} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
