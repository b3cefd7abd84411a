"""Benchmark: the speed modes against plain diffusers, on SD 1.5-layout random weights (the real shapes).

    .venv/bin/python benchmarks/bench_speed.py --prepare           # convert + compile turbo (minutes; once)
    .venv/bin/python benchmarks/bench_speed.py                     # the table (256 px, 20 steps, 3 samplers)
    .venv/bin/python benchmarks/bench_speed.py --size 512 --samplers "Euler a"

Modes, each a ratio against plain eager fp32 diffusers measured in the same process, runs interleaved (round 1 in
the order below, round 2 reversed: A B B A), so drift in the machine's load hits every mode alike:
  plain       eager fp32 diffusers, the U-Net as loaded
  exact       the U-Net in channels_last, fp32
  fast        the U-Net in bf16 (channels_last), scheduler and CFG in fp32, VAE decode in bf16
  turbo f32   the U-Net compiled by OpenVINO, f32 (studio.engine.turbo)
  turbo bf16  the same with INFERENCE_PRECISION_HINT bf16, VAE decode in bf16
`studio.engine.speed` (the exact/fast modes' own module) is not in this branch: exact and fast are built here as
DESIGN.md's Speed section describes them. Per step: the time between the first and the last step's callback over
steps - 1 (the encode and the first call's warm-up excluded); whole image: encode, steps and decode. PSNR and the
worst pixel are against plain diffusers' image with the same seed after the same steps.

--prepare converts the U-Net for both precisions into the turbo cache (--cache-dir, outside the repo) and compiles
it for the benchmark's shape, recording the first-run costs (conversion, first compile, peak RSS) in a JSON file
there; a later run reads them and reports the compile from OpenVINO's cache it pays itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

MODES = ("plain", "exact", "fast", "turbo f32", "turbo bf16")
SAMPLERS = ("Euler a", "DPM++ 2M Karras", "DDIM")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_pipe(family: str, seed: int = 0, tiny: bool = False):
    """SD 1.5 (or SDXL) layout with random weights, from the config folders shipped in resources/ (in memory);
    `tiny`: the test suite's tiny pipeline of the family instead (checks the benchmark itself in seconds)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from studio.paths import CONFIGS_DIR, TOKENIZER_DIR

    if tiny:
        import tempfile

        from studio.testing.tiny import build_tiny_pipeline

        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        folder = build_tiny_pipeline(Path(tempfile.mkdtemp()) / "m", seed=seed, family=family)
        pipe = cls.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    d = CONFIGS_DIR / family
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet")).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae")).eval()
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder")).eval()
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler

        text2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d / "text_encoder_2")).eval()
        sched = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(d / "scheduler"))
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text, text_encoder_2=text2, tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
            tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!"), unet=unet, scheduler=sched,
            add_watermarker=False,
        )
    else:
        sched = PNDMScheduler.from_config(PNDMScheduler.load_config(d / "scheduler"))
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR), unet=unet,
            scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def folder_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20 if p.exists() else 0.0


def turbo_key(a, precision: str) -> str:
    return f"bench-{a.family}{'-tiny' if a.tiny else ''}-random-seed0|no-loras|{precision}"


def latent_inputs(pipe, size: int):
    """Inputs of the U-Net's shape in a CFG run at `size` px (batch 2), to compile turbo ahead."""
    import torch

    u = pipe.unet.config
    side = size // pipe.vae_scale_factor
    args = [torch.randn(2, u.in_channels, side, side), torch.tensor(500.0), torch.randn(2, 77, u.cross_attention_dim)]
    kw = {}
    if u.addition_embed_type == "text_time":
        pooled = u.projection_class_embeddings_input_dim - 6 * u.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, 6)}
    return args, kw


def prepare(a) -> int:
    import torch

    from studio.engine import turbo
    from studio.engine.turbo import runtime

    pipe = build_pipe(a.family, tiny=a.tiny)
    out = {}
    for precision in ("f32", "bf16"):
        last = [0.0]

        def progress(f: float, msg: str, precision=precision, last=last) -> None:
            if f - last[0] >= 0.05 or f >= 1.0 or f == 0.0:
                last[0] = f
                print(f"[{time.strftime('%H:%M:%S')}] {precision}: {100 * f:.0f}% {msg}", flush=True)

        t = time.perf_counter()
        before = turbo.conversions
        unet = turbo.turbo_unet(pipe.unet, cache_key=turbo_key(a, precision), precision=precision,
                                on_progress=progress)
        conv = time.perf_counter() - t
        args, kw = latent_inputs(pipe, a.size)
        t = time.perf_counter()
        with torch.no_grad():
            unet(*args, **kw)
        comp = time.perf_counter() - t
        folder = turbo.entry_folder(turbo_key(a, precision))
        out[precision] = {
            "converted": turbo.conversions > before,
            "conversion_s": conv,
            f"first_compile_{a.size}_s": comp,
            "ir_mb": folder_mb(folder),
            "peak_rss_mb": rss_mb(),
        }
        print(json.dumps(out[precision]), flush=True)
        runtime.forget_stores()  # the f32 model's compiled copy is not needed for the bf16 conversion
    path = Path(os.environ["LATENT_STUDIO_CACHE_DIR"]) / f"prep-{a.family}{'-tiny' if a.tiny else ''}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for k, v in out.items():
        if v["converted"] or k not in old:
            old[k] = v
        else:
            old[k].update({k2: v2 for k2, v2 in v.items() if k2.startswith("first_compile")})
    path.write_text(json.dumps(old, indent=2))
    print(f"prepared: {path}")
    return 0


class CastUNet:
    """fast mode's U-Net: the bf16 copy runs the network, the pipeline (scheduler, CFG) keeps fp32."""

    def __new__(cls, unet_bf16):
        import torch

        class _Cast(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.config = inner.config

            @property
            def dtype(self):
                return torch.float32

            @property
            def device(self):
                return torch.device("cpu")

            def __getattr__(self, name):
                try:
                    return super().__getattr__(name)
                except AttributeError:
                    return getattr(self.inner, name)

            def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None,
                        return_dict=True, **kw):
                bf = torch.bfloat16
                if added_cond_kwargs:
                    added_cond_kwargs = {k: v.to(bf) for k, v in added_cond_kwargs.items()}
                x = sample.to(bf, memory_format=torch.channels_last)
                out = self.inner(x, timestep, encoder_hidden_states.to(bf), added_cond_kwargs=added_cond_kwargs,
                                 return_dict=False, **kw)[0].float()
                return (out,) if not return_dict else type("O", (), {"sample": out})()

        return _Cast(unet_bf16)


def psnr(a, b) -> tuple[float, int]:
    import numpy as np

    a16, b16 = a.astype(np.int16), b.astype(np.int16)
    mse = float(((a16 - b16) ** 2).mean())
    worst = int(abs(a16 - b16).max())
    return (math.inf if mse == 0 else 10 * math.log10(255**2 / mse)), worst


def measure(a) -> int:
    import numpy as np
    import torch

    from studio.engine import turbo
    from studio.engine.schedulers import build_scheduler
    from studio.engine.turbo import runtime

    runtime.KEEP_MODELS = 2  # f32 and bf16 side by side (a run keeps one)
    samplers = [s.strip() for s in a.samplers.split(",")]
    pipe = build_pipe(a.family, tiny=a.tiny)
    base_config = pipe.scheduler.config
    unet = pipe.unet
    vae32 = pipe.vae
    vae16 = copy.deepcopy(vae32).to(torch.bfloat16)
    def pick(arg: str) -> list[str]:
        return [m for m in MODES if m in arg.split(",")] if arg else list(MODES)

    modes_first, modes_other = pick(a.modes), pick(a.other_modes or a.modes)
    unet16 = None
    if "fast" in modes_first + modes_other:
        unet16 = copy.deepcopy(unet).to(torch.bfloat16, memory_format=torch.channels_last)
    first: dict[str, float] = {}
    turbos = {}
    for precision in ("f32", "bf16"):
        t = time.perf_counter()
        before = turbo.conversions
        turbos[precision] = turbo.turbo_unet(unet, cache_key=turbo_key(a, precision), precision=precision)
        if turbo.conversions > before:
            first[f"conversion {precision} (not prepared), s"] = time.perf_counter() - t
        args, kw = latent_inputs(pipe, a.size)
        t = time.perf_counter()
        with torch.no_grad():
            turbos[precision](*args, **kw)
        first[f"turbo {precision}: compile {a.size}px in this process (OpenVINO cache), s"] = time.perf_counter() - t

    def run(mode: str, sampler: str, steps: int = a.steps) -> tuple[np.ndarray, float, float]:
        if mode == "exact":
            unet.to(memory_format=torch.channels_last)
        else:
            unet.to(memory_format=torch.contiguous_format)
        pipe.unet = {"fast": lambda: CastUNet(unet16), "turbo f32": lambda: turbos["f32"],
                     "turbo bf16": lambda: turbos["bf16"]}.get(mode, lambda: unet)()
        name, schedule = (sampler[: -len(" Karras")], "Karras") if sampler.endswith(" Karras") else (sampler, "Normal")
        pipe.scheduler = build_scheduler(base_config, name, schedule, 1)
        stamps: list[float] = []

        def on_step(_p, _i, _t, kw):
            stamps.append(time.perf_counter())
            return kw

        t0 = time.perf_counter()
        with torch.inference_mode():
            lat = pipe(prompt="a red circle on a white background", num_inference_steps=steps, guidance_scale=7.0,
                       width=a.size, height=a.size, generator=torch.Generator("cpu").manual_seed(1),
                       output_type="latent", callback_on_step_end=on_step).images
            vae = vae16 if mode in ("fast", "turbo bf16") else vae32
            img = vae.decode(lat.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0].float()
        whole = time.perf_counter() - t0
        img = ((img[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return img, per_step, whole

    pipe.unet = unet
    results: dict[tuple[str, str], dict] = {}
    plain_step: list[float] = []  # per-step cost does not depend on the sampler: the first one's plain runs
    for si, sampler in enumerate(samplers):
        modes = modes_first if si == 0 else modes_other
        run(modes[0], sampler, steps=2)  # warm-up: first-call allocations
        step: dict[str, list[float]] = {m: [] for m in modes}
        whole: dict[str, list[float]] = {m: [] for m in modes}
        images: dict[str, np.ndarray] = {}
        for r in range(a.rounds):
            for mode in modes if r % 2 == 0 else reversed(modes):
                img, s, w = run(mode, sampler)
                images.setdefault(mode, img)
                step[mode].append(s)
                whole[mode].append(w)
                print(f"[{time.strftime('%H:%M:%S')}] {sampler} {mode}: {s:.3f} s/step, {w:.1f} s", file=sys.stderr,
                      flush=True)
        ref = "plain" if "plain" in images else "turbo f32"
        if "plain" in step:
            plain_step += step["plain"]
        ref_s = statistics.median(plain_step) if plain_step else math.nan
        ref_w = statistics.median(whole["plain"]) if "plain" in whole else math.nan
        for mode in modes:
            p, worst = psnr(images[mode], images[ref])
            ms, mw = statistics.median(step[mode]), statistics.median(whole[mode])
            results[(sampler, mode)] = dict(step=ms, whole=mw, rs=ref_s / ms, rw=ref_w / mw, psnr=p, worst=worst,
                                            ref=ref)
            print(f"[{time.strftime('%H:%M:%S')}] {sampler} {mode}: {ref_s / ms:.2f}x per step, "
                  f"PSNR {p:.1f} dB vs {ref}, worst {worst}/255", file=sys.stderr, flush=True)
    pipe.unet = unet

    prep_path = Path(os.environ["LATENT_STUDIO_CACHE_DIR"]) / f"prep-{a.family}{'-tiny' if a.tiny else ''}.json"
    prep = json.loads(prep_path.read_text()) if prep_path.exists() else {}
    print(f"\n{a.family}-layout random weights, {a.size}x{a.size}, {a.steps} steps, CFG 7, batch 1, "
          f"{torch.get_num_threads()} torch threads, {a.rounds} rounds interleaved")
    print("| sampler | mode | s/step | per-step vs plain | whole image s | whole vs plain | PSNR | worst px |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (sampler, mode), r in results.items():
        p = ("identical" if r["psnr"] == math.inf else f"{r['psnr']:.1f} dB") + f" vs {r['ref']}"
        rs = "-" if math.isnan(r["rs"]) else f"{r['rs']:.2f}x"
        rw = "-" if math.isnan(r["rw"]) else f"{r['rw']:.2f}x"
        print(f"| {sampler} | {mode} | {r['step']:.3f} | {rs} | {r['whole']:.1f} | {rw} | {p} | "
              f"{r['worst']}/255 |")
    print("\nfirst-run costs and memory")
    for precision, v in prep.items():
        for k, val in v.items():
            if k != "converted":
                print(f"- turbo {precision} (--prepare run): {k} = {val:.1f}" if isinstance(val, float)
                      else f"- turbo {precision}: {k} = {val}")
    for k, v in first.items():
        print(f"- {k} = {v:.1f}")
    print(f"- OpenVINO compiled-blob cache: {folder_mb(Path(os.environ['LATENT_STUDIO_CACHE_DIR']) / 'turbo' / 'compiled'):.0f} MB")
    print(f"- this process's peak RSS (torch U-Net + bf16 copy + both turbo models): {rss_mb():.0f} MB")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--modes", default="", help=f"comma-separated subset of {', '.join(MODES)} (plain always runs)")
    ap.add_argument("--other-modes", default="", help="modes for the samplers after the first (default: --modes); "
                    "without plain, PSNR is against turbo f32 and per-step ratios against the first sampler's plain")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "latent-studio-bench"),
                    help="the turbo cache (GBs: outside the repo)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny pipeline (checks this script in seconds)")
    ap.add_argument("--prepare", action="store_true", help="convert and compile turbo only, recording the costs")
    a = ap.parse_args()
    if a.modes and "plain" not in a.modes:
        a.modes = "plain," + a.modes
    if a.other_modes and "plain" not in a.other_modes and "turbo f32" not in a.other_modes:
        a.other_modes = "turbo f32," + a.other_modes
    os.environ["LATENT_STUDIO_CACHE_DIR"] = a.cache_dir

    import studio.engine  # noqa: F401  (first: puts the hub offline before diffusers is imported)

    return prepare(a) if a.prepare else measure(a)


if __name__ == "__main__":
    raise SystemExit(main())
