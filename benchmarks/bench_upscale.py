"""Benchmark: x4 upscaling of held-out scenes of the built-in model's domain, 64x64 -> 256x256.

    .venv/bin/python benchmarks/bench_upscale.py             # 16 scenes, all methods, then peak RSS
    .venv/bin/python benchmarks/bench_upscale.py --n 32 --no-rss
    .venv/bin/python benchmarks/bench_upscale.py --only-latent --latent-upscaler runs/x/export   # a candidate

Scenes: ``studio.training.sr_data.heldout_pairs`` (a seed no training run draws from): the true image is
the scene drawn at 256 px, the input its bicubic downsampling to 64 px. Methods:
- bicubic (PIL);
- the built-in SwinIR x4 (models/swinir-x4, loaded through spandrel, whole picture);
- the built-in latent upscaler (models/latent-upscaler-x4) through diffusers' StableDiffusionUpscalePipeline
  directly: the noise level of its studio.json (0: a clean condition), DDIM, --steps steps (default 4), no
  guidance, the scene's caption as the prompt;
- the same model through the studio's own path (``upscale_mode="latent"``: Euler a, 20 steps, and DPM++ 2M,
  10 steps, the request's defaults otherwise; the engine mirrors a 4 px margin around the input);
- the engine's diffusion upscale with the built-in model (``Engine().generate(GenerateRequest.from_fields(mode="upscale",
  upscale_mode="diffusion", ...))``), where the engine has it; else skipped with a note.

PSNR on RGB; SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5, on the BT.601 luma) written in numpy
(``sr_data.ssim``), no scikit-image. Then the peak RSS of the SwinIR path, tiled (64 px input tiles, 8 px
overlap), on a 256x256 input grown 2x, 4x and 8x (8x: two x4 passes, then a resize), each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SWINIR = ROOT / "models" / "swinir-x4" / "swinir-x4.safetensors"
LATENT_UP = ROOT / "models" / "latent-upscaler-x4"
BUILTIN = ROOT / "models" / "builtin"


def load_swinir():
    from studio.training.train_swinir import load_swinir_file

    return load_swinir_file(SWINIR).model.eval()


def swinir_tiled(model, img, tile: int = 64, overlap: int = 8):
    """x4 by tiles of ``tile`` input px overlapping by ``overlap``: each tile's centre part is kept."""
    import numpy as np
    import torch

    h, w, _ = img.shape
    out = np.zeros((h * 4, w * 4, 3), dtype=np.uint8)
    step = tile - 2 * overlap
    for y in range(0, h, step):
        for x in range(0, w, step):
            y0, x0 = max(0, y - overlap), max(0, x - overlap)
            y1, x1 = min(h, y + step + overlap), min(w, x + step + overlap)
            t = torch.from_numpy(img[y0:y1, x0:x1].astype(np.float32) / 255).permute(2, 0, 1)[None]
            with torch.no_grad():
                r = model(t)[0].clamp(0, 1).permute(1, 2, 0).numpy()
            r = (r * 255 + 0.5).astype(np.uint8)
            ye, xe = min(h, y + step), min(w, x + step)
            out[y * 4 : ye * 4, x * 4 : xe * 4] = r[(y - y0) * 4 : (ye - y0) * 4, (x - x0) * 4 : (xe - x0) * 4]
    return out


def rss_child(factor: int) -> None:
    """One SwinIR upscale of a 256x256 picture by ``factor`` (2, 4, 8); prints peak RSS and time as JSON."""
    import numpy as np
    import torch
    from PIL import Image

    from studio.training.sr_data import heldout_pairs

    torch.set_num_threads(2)
    model = load_swinir()
    img = heldout_pairs(1)[0][0]  # 256x256
    t0 = time.time()
    out = img
    remaining = factor
    while remaining > 1:
        out = swinir_tiled(model, out)
        remaining /= 4
    target = 256 * factor
    if out.shape[0] != target:
        out = np.asarray(Image.fromarray(out).resize((target, target), Image.Resampling.LANCZOS))
    dt = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"factor": factor, "out": list(out.shape[:2]), "seconds": round(dt, 1), "peak_rss_mb": round(peak_mb)}))


def _engine():
    from studio.engine.engine import Engine

    global _ENGINE
    if "_ENGINE" not in globals():
        _ENGINE = Engine()
    return _ENGINE


def engine_latent_upscale(lr, caption: str, seed: int, steps: int, sampler: str):
    """The studio's own latent upscale path (its tiling, the request's sampler and steps) on the built-in
    latent upscaler, x4, with the request defaults otherwise (guidance 7: a no-op for a UNet without text)."""
    from studio.core import GenerateRequest

    req = GenerateRequest.from_fields(mode="upscale", upscale_mode="latent", model=str(LATENT_UP), init_image=lr, scale=4.0,
                          prompt=caption, steps=steps, sampler=sampler, seed=seed)
    return _engine().generate(req).images[0]


def engine_diffusion_upscale(lr, caption: str, seed: int, steps: int):
    """The engine's diffusion upscale (resize, then low-strength img2img) of the built-in model, x4."""
    from studio.core import GenerateRequest

    req = GenerateRequest.from_fields(mode="upscale", upscale_mode="diffusion", model=str(BUILTIN), init_image=lr, scale=4.0,
                          prompt=caption, steps=steps, strength=0.3, seed=seed)
    return _engine().generate(req).images[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="held-out scenes")
    ap.add_argument("--steps", type=int, default=4, help="latent upscaler steps")
    ap.add_argument("--noise-level", type=int, default=None, help="default: the model folder's studio.json")
    ap.add_argument("--engine-steps", type=int, default=20, help="the engine's diffusion upscale steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--json", default=None, help="write the results as JSON")
    ap.add_argument("--latent-upscaler", default=None, help="another x4 latent upscaler folder (a candidate)")
    ap.add_argument("--only-latent", action="store_true", help="bicubic and the latent upscaler rows only")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.latent_upscaler:
        global LATENT_UP
        LATENT_UP = Path(a.latent_upscaler).resolve()
    if a.only_latent:
        a.no_rss = True
    if a.rss_child:
        rss_child(a.rss_child)
        return 0

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from studio.training.sr_data import bicubic, heldout_pairs, psnr, ssim

    pairs = heldout_pairs(a.n)
    methods = {"bicubic": lambda lr, i, cap: bicubic(lr, 256)}
    notes = []
    if a.only_latent:
        pass
    elif SWINIR.exists():
        model = load_swinir()
        methods["SwinIR x4 (built-in)"] = lambda lr, i, cap: swinir_tiled(model, lr, tile=64)
    else:
        notes.append(f"SwinIR skipped: {SWINIR} missing")
    if (LATENT_UP / "model_index.json").exists():
        from studio.engine.upscale import x4_noise_level
        from studio.training.evaluate_upscaler import upscale_with_pipeline
        from studio.training.export_upscaler import load_upscale_pipeline

        pipe = load_upscale_pipeline(LATENT_UP)
        if a.noise_level is None:
            a.noise_level = x4_noise_level(LATENT_UP)
        methods[f"latent upscaler x4 (built-in, {a.steps} DDIM steps, noise {a.noise_level})"] = (
            lambda lr, i, cap: upscale_with_pipeline(pipe, lr, cap, steps=a.steps, noise_level=a.noise_level, seed=i))
        if not a.no_engine:
            methods["the studio's latent upscale (built-in latent upscaler, Euler a, 20 steps)"] = (
                lambda lr, i, cap: engine_latent_upscale(lr, cap, i, 20, "Euler a"))
            methods["the studio's latent upscale (the same, DPM++ 2M, 10 steps)"] = (
                lambda lr, i, cap: engine_latent_upscale(lr, cap, i, 10, "DPM++ 2M"))
    else:
        notes.append(f"latent upscaler skipped: {LATENT_UP} missing")
    if not a.no_engine and not a.only_latent:
        try:
            engine_diffusion_upscale(pairs[0][1], pairs[0][2], 0, a.engine_steps)
            methods[f"engine diffusion upscale (built-in model, {a.engine_steps} steps, strength 0.3)"] = (
                lambda lr, i, cap: engine_diffusion_upscale(lr, cap, i, a.engine_steps))
        except Exception as e:  # noqa: BLE001 - not in the engine yet, or it fails: say so
            notes.append(f"engine diffusion upscale skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}")

    rows = {}
    for name, fn in methods.items():
        t0 = time.time()
        ps, ss = [], []
        for i, (hr, lr, cap) in enumerate(pairs):
            out = fn(lr, i, cap)
            assert out.shape == hr.shape, (name, out.shape)
            ps.append(psnr(hr, out))
            ss.append(ssim(hr, out))
        rows[name] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "s_per_image": (time.time() - t0) / len(pairs)}
    print(f"\nx4, 64x64 -> 256x256, {a.n} held-out scenes (PSNR on RGB, SSIM on luma; mean per image)\n")
    print("| method | PSNR (dB) | SSIM | s / image |\n| --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['s_per_image']:.2f} |")
    for n in notes:
        print(f"\nnote: {n}")
    rss = []
    if not a.no_rss and SWINIR.exists():
        print("\nSwinIR x4, tiled (64 px input tiles, 8 px overlap), 256x256 input, fresh process each:\n")
        print("| output | size | seconds | peak RSS (MB) |\n| --- | --- | --- | --- |")
        for f in (2, 4, 8):
            r = subprocess.run([sys.executable, __file__, "--rss-child", str(f)], capture_output=True, text=True,
                               check=True, cwd=ROOT)
            d = json.loads(r.stdout.strip().splitlines()[-1])
            rss.append(d)
            print(f"| {f}x | {d['out'][1]}x{d['out'][0]} | {d['seconds']} | {d['peak_rss_mb']} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "notes": notes, "rss": rss}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
