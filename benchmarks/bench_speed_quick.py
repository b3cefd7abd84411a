"""Speed modes, quickly (a script, not a test): one U-Net call and one VAE decode per mode, interleaved
A B C C B A against plain diffusers in the same process. Prints ratios; the full benchmark (samplers, 512 px, SDXL,
turbo) is bench_speed's.

  .venv/bin/python benchmarks/bench_speed_quick.py [--size sd15|tiny] [--latent 32] [--rounds 2] [--device cpu]

plain: the U-Net as diffusers loads it (fp32, contiguous); exact: channels_last (the studio's exact mode);
fast: a bf16 copy in channels_last, fp32 in and out (studio.engine.speed.HalfPrecisionUNet; a CPU with native bf16).
Random weights in the SD 1.5 shapes; the result's difference from plain is printed beside each ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402

from studio.engine.speed import HalfPrecisionUNet, half_copy, native_bf16  # noqa: E402

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)  # fmt: skip
TINY_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=32,
                 block_out_channels=(32, 64), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))  # fmt: skip
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip


def timed(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("sd15", "tiny"), default="sd15")
    ap.add_argument("--latent", type=int, default=32, help="latent side (32: 256 px)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SD15_UNET if args.size == "sd15" else TINY_UNET)).eval().to(dev)
    ctx = 768 if args.size == "sd15" else 32
    sample = torch.randn(2, 4, args.latent, args.latent, device=dev)
    cond = torch.randn(2, 77, ctx, device=dev)
    t = torch.tensor(500, device=dev)
    half = torch.bfloat16 if dev.type == "cpu" else torch.float16
    can_fast = dev.type != "cpu" or native_bf16()

    def set_format(fmt):
        unet.to(memory_format=fmt)

    variants = {
        "plain": (torch.contiguous_format, lambda: unet(sample, t, cond, return_dict=False)[0]),
        "exact": (torch.channels_last, lambda: unet(sample, t, cond, return_dict=False)[0]),
    }
    if can_fast:
        unet.to(memory_format=torch.channels_last)
        fast = HalfPrecisionUNet(half_copy(unet, half), half)
        variants["fast"] = (torch.channels_last, lambda: fast(sample, t, cond, return_dict=False)[0])
    names = list(variants)
    order = (names + names[::-1]) * args.rounds
    times: dict[str, list[float]] = {n: [] for n in names}
    outs: dict[str, torch.Tensor] = {}
    for name in names:  # warm-up: first calls allocate
        set_format(variants[name][0])
        timed(variants[name][1])
    for name in order:
        set_format(variants[name][0])
        s, out = timed(variants[name][1])
        times[name].append(s)
        outs[name] = out.float()
    print(f"U-Net ({args.size}, latent 2x4x{args.latent}x{args.latent}, {dev}, {torch.get_num_threads()} threads, "
          f"native bf16: {native_bf16()}), median of {len(times['plain'])} interleaved calls")  # fmt: skip
    base = statistics.median(times["plain"])
    for name in names:
        med = statistics.median(times[name])
        diff = (outs[name] - outs["plain"]).abs().max().item()
        print(f"  {name:6s} {med:7.3f} s  {base / med:5.2f}x  max |diff| vs plain {diff:.2e}")

    variants.clear()  # the closures keep the U-Net alive until the end: fine beside a VAE
    vae = AutoencoderKL(**SD15_VAE).eval().to(dev)
    lat = torch.randn(1, 4, args.latent, args.latent, device=dev)
    decode = {"plain": lambda: vae.decode(lat, return_dict=False)[0]}
    if can_fast:
        def fast_decode():
            with torch.autocast(dev.type, dtype=half):
                return vae.decode(lat, return_dict=False)[0].float()

        decode["fast"] = fast_decode
    for fn in decode.values():
        timed(fn)
    dtimes: dict[str, list[float]] = {n: [] for n in decode}
    dout: dict[str, torch.Tensor] = {}
    for name in (list(decode) + list(decode)[::-1]) * args.rounds:
        s, out = timed(decode[name])
        dtimes[name].append(s)
        dout[name] = out.float()
    print(f"VAE decode (SD 1.5 shapes, {args.latent * 8} px)")
    dbase = statistics.median(dtimes["plain"])
    for name in decode:
        med = statistics.median(dtimes[name])
        a = ((dout[name].clamp(-1, 1) + 1) * 127.5).round()
        b = ((dout["plain"].clamp(-1, 1) + 1) * 127.5).round()
        mse = ((a - b) ** 2).mean().item()
        psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()
        print(f"  {name:6s} {med:7.3f} s  {dbase / med:5.2f}x  {psnr:.1f} dB vs plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
