"""Benchmark: DeepCache (reuse of the U-Net's deep features every N steps) against the uncached run.

    .venv/bin/python benchmarks/bench_deepcache.py                 # the built-in model, through the engine
    .venv/bin/python benchmarks/bench_deepcache.py --sd15          # an SD 1.5-layout random U-Net, 256 px, CFG

Each interval runs against the uncached run in the same process, interleaved A B B A, at each step count; the
table gives the median time ratio (uncached / cached: above 1 is faster) and the image's PSNR and worst pixel
against the uncached run. The built-in model goes through `Engine.generate` (whole image: encode, steps, decode;
PSNR on the decoded pixels). The SD 1.5-layout U-Net has random weights, so it runs alone in a plain Euler loop
with CFG (batch 2, latent 32x32) and its PSNR is of the final latent through SD 1.5's linear latent-to-RGB map:
random weights have none of the smoothness across steps that a trained model has, so its PSNR is a floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def builtin_runner(sampler: str):
    import studio.engine  # noqa: F401  (first: puts the hub offline before diffusers is imported)
    from studio.core import GenerateRequest
    from studio.engine.engine import Engine

    engine = Engine()
    engine.load(None)

    def run(steps: int, interval: int) -> tuple[float, np.ndarray]:
        req = GenerateRequest(prompt="a red house by a lake, blue sky", sampler=sampler, steps=steps, seed=7,
                              deep_cache=interval, preview="none")  # fmt: skip
        t = time.perf_counter()
        r = engine.generate(req)
        return time.perf_counter() - t, r.images[0]

    return run, f"built-in model, native size, {sampler}, whole image"


def sd15_runner(size: int):
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    from studio.engine.deepcache import deep_cache_plan
    from studio.engine.preview import SD15_BIAS, SD15_FACTORS, latent_to_rgb

    cfg_dir = ROOT / "resources" / "configs" / "sd1"
    torch.manual_seed(0)
    print("building an SD 1.5-layout U-Net (random weights)...", file=sys.stderr)
    unet = UNet2DConditionModel.from_config(json.loads((cfg_dir / "unet" / "config.json").read_text())).eval()
    sched_cfg = json.loads((cfg_dir / "scheduler" / "scheduler_config.json").read_text())
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 77, 768, generator=g)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=g)
    factors, bias = np.asarray(SD15_FACTORS, np.float32), np.asarray(SD15_BIAS, np.float32)

    def run(steps: int, interval: int) -> tuple[float, np.ndarray]:
        sched = EulerDiscreteScheduler.from_config(sched_cfg)
        sched.set_timesteps(steps)
        x = noise * sched.init_noise_sigma
        cache, _note = deep_cache_plan(unet, interval, steps)
        t0 = time.perf_counter()
        with torch.inference_mode(), cache:
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps = unet(inp, t, encoder_hidden_states=cond, return_dict=False)[0]
                uncond, text = eps.chunk(2)
                x = sched.step(uncond + 7.0 * (text - uncond), t, x, return_dict=False)[0]
        return time.perf_counter() - t0, latent_to_rgb(x[0].numpy(), factors, bias)

    return run, f"SD 1.5-layout random U-Net, {size}x{size}, Euler, CFG 7 (U-Net loop only)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd15", action="store_true", help="an SD 1.5-layout random U-Net instead of the built-in model")
    ap.add_argument("--size", type=int, default=256, help="--sd15: width = height in pixels (default 256)")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 30])
    ap.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument("--repeats", type=int, default=2, help="A B B A rounds (default 2)")
    ap.add_argument("--sampler", default="Euler a", help="the built-in model's sampler")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    run, what = sd15_runner(a.size) if a.sd15 else builtin_runner(a.sampler)
    run(2, 0)  # warm-up: first-call allocations
    print(f"{what}, {torch.get_num_threads()} threads", file=sys.stderr)
    print("| steps | interval | uncached s | cached s | speed | PSNR dB | worst pixel |")
    print("|---|---|---|---|---|---|---|")
    for steps in a.steps:
        for interval in a.intervals:
            plain, cached, ref, img = [], [], None, None
            for i in range(a.repeats):
                for side in (0, interval) if i % 2 == 0 else (interval, 0):
                    t, image = run(steps, side)
                    if side:
                        cached.append(t)
                        img = image
                    else:
                        plain.append(t)
                        ref = image
            assert ref is not None and img is not None
            mp, mc = statistics.median(plain), statistics.median(cached)
            worst = int(np.abs(ref.astype(int) - img.astype(int)).max())
            print(f"| {steps} | {interval} | {mp:.2f} | {mc:.2f} | {mp / mc:.2f}x | {psnr(ref, img):.1f} | {worst} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
