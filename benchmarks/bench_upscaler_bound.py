"""What a UNet can add to the built-in latent upscaler's VAE: its decoder on the copy start's latent (the low-res
picture, zero detail), on the encoder's true latent (the bound of a UNet trained on the latent), and on a latent
fitted to each picture through the frozen decoder (Adam on the picture's MSE, from the true latent: what a
UNet trained on the decoded picture could reach at most). Each picture mirrored 4 low-res px and that cut off,
as the studio runs the model.

    .venv/bin/python benchmarks/bench_upscaler_bound.py --n 4 --iters 60 --lr 1e-2   # the model card's row
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "latent-upscaler-x4"))
    ap.add_argument("--n", type=int, default=4, help="scenes")
    ap.add_argument("--seed", type=int, default=7_000_003, help="scene seed (default: the UNet stage's validation)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from studio.training.evaluate_upscaler import _mirror
    from studio.training.sr_data import heldout_pairs, psnr, ssim, to_pm1
    from studio.training.train_vae import to_uint8
    from studio.training.upscaler_models import decode_structured, structured_latent

    torch.set_num_threads(a.threads)
    vae = AutoencoderKL.from_pretrained(Path(a.model) / "vae", local_files_only=True).float().eval()
    vae.requires_grad_(False)
    e = 16
    rows: dict[str, list[tuple[float, float]]] = {"copy start": [], "true latent": [], "fitted latent": []}
    for hr, lr, _ in heldout_pairs(a.n, a.seed):
        x, lo = to_pm1([_mirror(hr, e)]), to_pm1([_mirror(lr, 4)])

        def cut(y):
            return to_uint8(y)[0][e:-e, e:-e]

        with torch.no_grad():
            z_true = structured_latent(vae, x, lo)
            z_copy = torch.cat([lo, torch.zeros_like(lo[:, :1])], 1)
        z = z_true.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=a.lr)
        for _ in range(a.iters):
            loss = (decode_structured(vae, z) - x)[..., e:-e, e:-e].pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for name, zz in (("copy start", z_copy), ("true latent", z_true), ("fitted latent", z.detach())):
                d = cut(decode_structured(vae, zz))
                rows[name].append((psnr(hr, d), ssim(hr, d)))
    print(f"\n{a.n} scenes (seed {a.seed}), the decoder of {a.model}:\n")
    print("| latent | PSNR (dB) | SSIM |\n| --- | --- | --- |")
    out = {}
    for name, v in rows.items():
        p, s = float(np.mean([r[0] for r in v])), float(np.mean([r[1] for r in v]))
        out[name] = {"psnr": p, "ssim": s}
        print(f"| {name} | {p:.2f} | {s:.4f} |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
