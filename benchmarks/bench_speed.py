"""Benchmark: the speed modes against plain diffusers, on SD 1.5-layout random weights (the real shapes).

    .venv/bin/python benchmarks/bench_speed.py --prepare           # convert + compile turbo (minutes; once)
    .venv/bin/python benchmarks/bench_speed.py                     # the table (256 px, 20 steps, 3 samplers)
    .venv/bin/python benchmarks/bench_speed.py --size 512 --samplers "Euler a"
    .venv/bin/python benchmarks/bench_speed.py --lcm --size 512    # LCM 4 steps in turbo bf16 vs plain 50-step Euler
    .venv/bin/python benchmarks/bench_speed.py --calls --size 512 --modes plain,exact,fast   # one U-Net call each
    .venv/bin/python benchmarks/bench_speed.py --device cuda --size 512 --modes plain,exact,fast   # a GPU (fp16)

Modes, each a ratio against plain eager fp32 diffusers measured in the same process, runs interleaved (round 1 in
the order below, round 2 reversed: A B B A), so drift in the machine's load hits every mode alike:
  plain       eager fp32 diffusers, the U-Net as loaded
  exact       the studio's exact mode: OpenVINO f32 on turbo's cached IR when there is one (run --prepare first),
              else what "exact torch" is
  exact prepared  exact mode asked to prepare itself (Engine > Prepare Exact with OpenVINO): converts the U-Net
              first where it is not (--calls: its first-use cost is that conversion plus the size's compile)
  exact torch exact mode kept on torch (STUDIO_EXACT_OPENVINO=0): the U-Net in channels_last, fp32
  fast        the U-Net in bf16 (channels_last), scheduler and CFG in fp32, VAE decode in bf16 (the same latents
              are also decoded in fp32 once, outside the timing: the "fast, fp32 decode" row's PSNR)
  turbo f32   the U-Net compiled by OpenVINO, f32 (studio.engine.turbo)
  turbo bf16  the same with INFERENCE_PRECISION_HINT bf16, VAE decode in bf16
exact, fast and turbo bf16 run through the studio's own code path (studio.engine.speed: `prepare_model`, then
`plan_speed(mode).apply(pipe, model, ...)`, the decode under the plan's `decode_autocast`, `restore()` after), on a
minimal stand-in for the engine's LoadedModel (its pipeline, name and hash); turbo f32 calls `turbo_unet` (what
the plan calls) itself, since the plan picks bf16 on a bf16 CPU. Per step: the time between the first and the last step's callback over
steps - 1 (the encode and the first call's warm-up excluded); whole image: encode, steps and decode. PSNR and the
worst pixel are against plain diffusers' image with the same seed after the same steps (or, where a sampler runs
without plain, against exact's, then turbo f32's).

--device cuda (or mps): the same tables on a GPU, every mode in the engine's dtype there (fp16, plain diffusers
included, as its docs run it on a GPU), timestamps after a synchronize; exact is the U-Net in channels_last (and
torch.compile with STUDIO_COMPILE=1), fast the fp16 engine itself; turbo and exact prepared are OpenVINO, so
CPU-only, and are left out. `--dtype float16` on the CPU runs that half path here (slowly: the tests' check of it).

--prepare converts the U-Net for both precisions into the turbo cache (--cache-dir, outside the repo) and compiles
it for the benchmark's shape, recording the first-run costs (conversion, first compile, peak RSS) in a JSON file
there; a later run reads them and reports the compile from OpenVINO's cache it pays itself.

--lcm: the few-step case. The "LCM" preset (studio.core.fewstep: LCMScheduler, 4 steps, CFG 1.5) in turbo bf16,
whole image (prompt encode, steps, decode), against plain diffusers' default run of the same model at the same
size: EulerDiscreteScheduler, 50 steps, CFG 7.5, fp32. A 50-step plain run at 512 px takes over an hour on a
loaded CPU, so plain runs --plain-steps steps whole (encode, steps, decode) and its 50-step time is computed as
that run plus (50 - n) times its measured per-step time; the table says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's studio package, not an installed one

MODES = ("plain", "exact", "exact prepared", "exact torch", "fast", "turbo f32", "turbo bf16")
SAMPLERS = ("Euler a", "DPM++ 2M Karras", "DDIM")



def plan_for(mode: str, device, dtype=None):
    """The engine's plan for a benchmark mode ("exact torch": exact kept off OpenVINO) on `device` in the engine's
    `dtype` there (fp32 on a CPU, fp16 on a GPU); the environment as it was."""
    import torch

    from studio.engine import speed

    was = os.environ.get("STUDIO_EXACT_OPENVINO")
    if mode == "exact torch":
        os.environ["STUDIO_EXACT_OPENVINO"] = "0"
    try:
        return speed.plan_speed(mode.split()[0], device, dtype or torch.float32, prepare_exact=mode == "exact prepared")
    finally:
        if was is None:
            os.environ.pop("STUDIO_EXACT_OPENVINO", None)
        else:
            os.environ["STUDIO_EXACT_OPENVINO"] = was

def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device) -> None:
    """Waits for a GPU's queued work, so a timestamp means the work before it is done (a CPU runs synchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_line(device) -> str:
    import torch

    line = f"- this process's peak RSS: {rss_mb():.0f} MB"
    if device.type == "cuda":
        line += f"; peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
    return line


def device_words(a) -> str:
    import torch

    if a.dev.type == "cuda":
        return f"{torch.cuda.get_device_name(a.dev)}, {str(a.dtype).removeprefix('torch.')}"
    return f"{a.dev.type}, {str(a.dtype).removeprefix('torch.')}, {torch.get_num_threads()} torch threads"


def pipe_for(a):
    """The benchmark's pipeline on --device, in the engine's dtype there (studio.engine.engine.pick_device: fp32 on
    a CPU, fp16 on CUDA and MPS; --dtype float16 runs a GPU's half path on the CPU)."""
    pipe = build_pipe(a.family, tiny=a.tiny, depth=a.depth)
    return pipe.to(device=a.dev, dtype=a.dtype)


def build_pipe(family: str, seed: int = 0, tiny: bool = False, depth: int = 0):
    """SD 1.5 (or SDXL) layout with random weights, from the config folders shipped in resources/ (in memory);
    `tiny`: the test suite's tiny pipeline of the family instead (checks the benchmark itself in seconds);
    `depth`: at most this many transformer layers per block (SDXL's are 1, 2, 10: a full SDXL U-Net is 10 GB in
    fp32), the blocks, channels, heads and resolutions as they are."""
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
    config = UNet2DConditionModel.load_config(d / "unet")
    if depth:
        layers = config.get("transformer_layers_per_block", 1)
        layers = [layers] * len(config["block_out_channels"]) if isinstance(layers, int) else layers
        config["transformer_layers_per_block"] = [min(n, depth) for n in layers]
    unet = UNet2DConditionModel.from_config(config).eval()
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


def tag(a) -> str:
    """The family and the options that change the model (names its turbo cache entry and --prepare's record)."""
    return f"{a.family}{'-tiny' if a.tiny else ''}{f'-depth{a.depth}' if a.depth else ''}"


def model_standin(a, pipe) -> SimpleNamespace:
    """What studio.engine.speed reads of the engine's LoadedModel: the pipeline (`base`), a name, and the hash
    and key its turbo cache key is made of (no LoRAs here)."""
    ident = f"bench-{tag(a)}-random-seed0"
    return SimpleNamespace(base=pipe, name=ident, hash=ident, key=(ident,))


def turbo_key(a, precision: str = "") -> str:
    """The key speed.turbo_cache_key gives the stand-in (so --prepare's conversion is the one a run finds); one
    f32 IR serves both precisions."""
    return f"bench-{tag(a)}-random-seed0|"


def latent_inputs(pipe, size: int):
    """Inputs of the U-Net's shape in a CFG run at `size` px (batch 2) on the pipeline's device and dtype (to
    compile turbo ahead, or for --calls)."""
    import torch

    u = pipe.unet.config
    side = size // pipe.vae_scale_factor
    put = {"device": pipe.unet.device, "dtype": pipe.unet.dtype}
    args = [torch.randn(2, u.in_channels, side, side, **put), torch.tensor(500.0, device=put["device"]),
            torch.randn(2, 77, u.cross_attention_dim, **put)]
    kw = {}
    if u.addition_embed_type == "text_time":
        pooled = u.projection_class_embeddings_input_dim - 6 * u.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, **put), "time_ids": torch.randn(2, 6, **put)}
    return args, kw


def prepare(a) -> int:
    import torch

    from studio.engine import turbo
    from studio.engine.turbo import runtime

    pipe = build_pipe(a.family, tiny=a.tiny, depth=a.depth)
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
    path = Path(os.environ["LATENT_STUDIO_CACHE_DIR"]) / f"prep-{tag(a)}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for k, v in out.items():
        if v["converted"] or k not in old:
            old[k] = v
        else:
            old[k].update({k2: v2 for k2, v2 in v.items() if k2.startswith("first_compile")})
    path.write_text(json.dumps(old, indent=2))
    print(f"prepared: {path}")
    return 0


def psnr(a, b) -> tuple[float, int]:
    import numpy as np

    a16, b16 = a.astype(np.int16), b.astype(np.int16)
    mse = float(((a16 - b16) ** 2).mean())
    worst = int(abs(a16 - b16).max())
    return (math.inf if mse == 0 else 10 * math.log10(255**2 / mse)), worst


def generate(pipe, size: int, steps: int, cfg: float, on_step, autocast=None, keep: dict | None = None):
    """One whole image: the pipeline's prompt encode and steps (latents out), then the VAE decode as the engine
    does it (under `autocast`, the plan's decode_autocast, pixels back in fp32). HxWx3 uint8. `keep`: gets the
    latents ("latents"), to decode them again outside the timing."""
    import torch

    with torch.inference_mode():
        lat = pipe(prompt="a red circle on a white background", num_inference_steps=steps, guidance_scale=cfg,
                   width=size, height=size, generator=torch.Generator("cpu").manual_seed(1), output_type="latent",
                   callback_on_step_end=on_step).images
        if keep is not None:
            keep["latents"] = lat
        return decode(pipe, lat, autocast)


def decode(pipe, lat, autocast=None):
    import torch

    with torch.inference_mode():
        vae = pipe.vae
        with torch.autocast(lat.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            img = vae.decode(lat / vae.config.scaling_factor, return_dict=False)[0]
        img = img.float()
    return ((img[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def measure(a) -> int:
    import numpy as np
    import torch

    from studio.engine import speed, turbo
    from studio.engine.schedulers import build_scheduler
    from studio.engine.turbo import runtime

    runtime.KEEP_MODELS = 2  # f32 and bf16 side by side (a run keeps one)
    samplers = [s.strip() for s in a.samplers.split(",")]
    pipe = pipe_for(a)
    base_config = pipe.scheduler.config
    unet = pipe.unet
    model = model_standin(a, pipe)
    dev = a.dev

    def pick(arg: str) -> list[str]:
        return [m for m in MODES if m in arg.split(",") and m in a.runnable] if arg else list(a.runnable)

    modes_first, modes_other = pick(a.modes), pick(a.other_modes or a.modes)
    first: dict[str, float] = {}
    turbos = {}
    for precision in ("f32", "bf16"):
        if f"turbo {precision}" not in modes_first + modes_other:
            continue
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

    extra_images: dict[tuple[str, str], np.ndarray] = {}

    def run(mode: str, sampler: str, steps: int = a.steps) -> tuple[np.ndarray, float, float]:
        # plain: the U-Net as loaded (contiguous); the studio's modes: its load step (channels_last), then the plan.
        unet.__dict__.pop("_studio_prepared", None)
        unet.to(memory_format=torch.contiguous_format)
        plan = None
        if mode == "turbo f32":
            pipe.unet = turbos["f32"]  # what the plan's turbo does, at f32 (the plan itself picks bf16 here)
        elif mode != "plain":
            speed.prepare_model(model, dev)
            plan = plan_for(mode, dev, a.dtype)
            plan.apply(pipe, model, dev)
            if mode == "exact" and steps == a.steps and plan.backend == "torch" and dev.type == "cpu":
                print("exact ran on torch (no turbo conversion cached: run --prepare first)", file=sys.stderr)
        name, schedule = (sampler[: -len(" Karras")], "Karras") if sampler.endswith(" Karras") else (sampler, "Normal")
        pipe.scheduler = build_scheduler(base_config, name, schedule, 1)
        stamps: list[float] = []

        def on_step(_p, _i, _t, kw):
            sync(dev)
            stamps.append(time.perf_counter())
            return kw

        autocast = plan.decode_autocast if plan is not None else None
        keep: dict = {}
        t0 = time.perf_counter()
        try:
            img = generate(pipe, a.size, steps, 7.0, on_step, autocast, keep)
        finally:
            if plan is not None:
                plan.restore()
            pipe.unet = unet
        sync(dev)
        whole = time.perf_counter() - t0
        if autocast is not None and steps == a.steps and (sampler, mode) not in extra_images:
            extra_images[(sampler, mode)] = decode(pipe, keep["latents"])  # the same latents, decoded in fp32
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return img, per_step, whole

    pipe.unet = unet
    results: dict[tuple[str, str], dict] = {}
    plain_step: list[float] = []  # per-step cost does not depend on the sampler: the first one's plain runs
    for si, sampler in enumerate(samplers):
        modes = modes_first if si == 0 else modes_other
        for mode in modes:  # warm-up: first-call allocations, the bf16 copy, OpenVINO's compile for this size
            if mode != "turbo f32" and (si == 0 or mode != "plain"):  # turbo f32 compiled above
                t = time.perf_counter()
                run(mode, sampler, steps=2)
                if si == 0 and mode != "plain":
                    first[f"{mode}: first 2-step run in this process (compile from OpenVINO's cache or the bf16 "
                          f"copy), s"] = time.perf_counter() - t
        step: dict[str, list[float]] = {m: [] for m in modes}
        whole: dict[str, list[float]] = {m: [] for m in modes}
        images: dict[str, np.ndarray] = {}
        for r in range(a.rounds if si == 0 or not a.other_rounds else a.other_rounds):
            for mode in modes if r % 2 == 0 else reversed(modes):
                img, s, w = run(mode, sampler)
                images.setdefault(mode, img)
                step[mode].append(s)
                whole[mode].append(w)
                print(f"[{time.strftime('%H:%M:%S')}] {sampler} {mode}: {s:.3f} s/step, {w:.1f} s", file=sys.stderr,
                      flush=True)
        ref = next(m for m in ("plain", "exact", "turbo f32", *modes) if m in images)
        if "plain" in step:
            plain_step += step["plain"]
        ref_s = statistics.median(plain_step) if plain_step else math.nan
        ref_w = statistics.median(whole["plain"]) if "plain" in whole else math.nan
        for mode in modes:
            p, worst = psnr(images[mode], images[ref])
            ms, mw = statistics.median(step[mode]), statistics.median(whole[mode])
            vs_exact = psnr(images[mode], images["exact"]) if "exact" in images and ref != "exact" else None
            results[(sampler, mode)] = dict(step=ms, whole=mw, rs=ref_s / ms, rw=ref_w / mw, psnr=p, worst=worst,
                                            ref=ref, vs_exact=vs_exact)
            if (sampler, mode) in extra_images:
                p2, worst2 = psnr(extra_images[(sampler, mode)], images[ref])
                e2 = psnr(extra_images[(sampler, mode)], images["exact"]) if vs_exact else None
                results[(sampler, f"{mode}, fp32 decode")] = dict(step=ms, whole=math.nan, rs=ref_s / ms,
                                                                  rw=math.nan, psnr=p2, worst=worst2, ref=ref,
                                                                  vs_exact=e2)
            print(f"[{time.strftime('%H:%M:%S')}] {sampler} {mode}: {ref_s / ms:.2f}x per step, "
                  f"PSNR {p:.1f} dB vs {ref}, worst {worst}/255", file=sys.stderr, flush=True)
    pipe.unet = unet

    prep_path = Path(os.environ["LATENT_STUDIO_CACHE_DIR"]) / f"prep-{tag(a)}.json"
    prep = json.loads(prep_path.read_text()) if prep_path.exists() else {}
    layers = pipe.unet.config.transformer_layers_per_block
    print(f"\n{a.family}-layout random weights{f' (transformer layers per block {list(layers)}: --depth {a.depth})' if a.depth else ''}, "
          f"U-Net {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f}M parameters, "
          f"{a.size}x{a.size}, {a.steps} steps, CFG 7, batch 1, {device_words(a)}, "
          f"{a.rounds} rounds interleaved")
    print("| sampler | mode | s/step | per-step vs plain | whole image s | whole vs plain | PSNR | worst px |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (sampler, mode), r in results.items():
        p = ("identical" if r["psnr"] == math.inf else f"{r['psnr']:.1f} dB") + f" vs {r['ref']}"
        if r.get("vs_exact"):
            p += f"; {r['vs_exact'][0]:.1f} dB ({r['vs_exact'][1]}/255) vs exact"
        rs = "-" if math.isnan(r["rs"]) else f"{r['rs']:.2f}x"
        rw = "-" if math.isnan(r["rw"]) else f"{r['rw']:.2f}x"
        wh = "-" if math.isnan(r["whole"]) else f"{r['whole']:.1f}"
        print(f"| {sampler} | {mode} | {r['step']:.3f} | {rs} | {wh} | {rw} | {p} | "
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
    print(memory_line(dev) + " (the torch U-Net, fast's half copy and the turbo models)")
    return 0


def measure_calls(a) -> int:
    """--calls: one U-Net call with CFG (batch 2) per mode, through the studio's plans, interleaved A B C C B A;
    each mode's output against plain's. For a loaded machine where a 20-step run at 512 px takes hours."""
    import torch

    from studio.engine import speed
    from studio.engine.turbo import runtime

    runtime.KEEP_MODELS = 2  # exact's f32 and turbo's bf16 side by side: else each call would evict the other's
    pipe = pipe_for(a)
    unet, model, dev = pipe.unet, model_standin(a, pipe), a.dev
    modes = [m.strip() for m in (a.modes or "plain,exact,fast").split(",") if m.strip() in a.runnable]
    args, kw = latent_inputs(pipe, a.size)
    times: dict[str, list[float]] = {m: [] for m in modes}
    outs: dict[str, torch.Tensor] = {}
    first: dict[str, float] = {}

    def call(mode: str) -> float:
        unet.__dict__.pop("_studio_prepared", None)
        unet.to(memory_format=torch.contiguous_format)
        plan = None
        if mode != "plain":
            speed.prepare_model(model, dev)
            plan = plan_for(mode, dev, a.dtype)
            t = time.perf_counter()
            plan.apply(pipe, model, dev)
            if mode not in first:
                first[mode] = time.perf_counter() - t
        try:
            with torch.inference_mode():
                if mode not in outs and plan is not None and plan.backend != "torch":
                    t = time.perf_counter()
                    pipe.unet(*args, **kw)  # the first call compiles this size (from OpenVINO's cache or fresh)
                    first[mode] += time.perf_counter() - t
                sync(dev)
                t = time.perf_counter()
                out = pipe.unet(*args, **kw, return_dict=False)[0].float()
                sync(dev)
                dt = time.perf_counter() - t
        finally:
            if plan is not None:
                print(f"[{time.strftime('%H:%M:%S')}] {mode}: U-Net on {plan.backend}", file=sys.stderr, flush=True)
                plan.restore()
            pipe.unet = unet
        outs.setdefault(mode, out)
        return dt

    for r in range(a.rounds):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            dt = call(mode)
            times[mode].append(dt)
            print(f"[{time.strftime('%H:%M:%S')}] {mode}: {dt:.2f} s", file=sys.stderr, flush=True)
    base = statistics.median(times["plain"])
    depth = f" (at most {a.depth} transformer layers per block)" if a.depth else ""
    print(f"\n{a.family}-layout random weights{depth}, U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M "
          f"parameters, {a.size}x{a.size}, one U-Net call with CFG (batch 2), "
          f"{device_words(a)}, {a.rounds} rounds interleaved (A B C C B A), load average {os.getloadavg()[0]:.1f}")
    print("| mode | s/call (median) | calls | vs plain | max abs diff vs plain | first-use cost s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in modes:
        med = statistics.median(times[m])
        diff = float((outs[m] - outs["plain"]).abs().max())
        print(f"| {m} | {med:.2f} | {', '.join(f'{t:.1f}' for t in times[m])} | {base / med:.2f}x | {diff:.1e} | "
              f"{first.get(m, 0.0):.1f} |")
    print(memory_line(dev))
    return 0


def measure_lcm(a) -> int:
    """The LCM preset in turbo bf16 against plain diffusers' default 50-step Euler run, whole image (see --lcm)."""
    import torch

    from studio.core.fewstep import PRESETS
    from studio.engine import speed, turbo
    from studio.engine.schedulers import build_scheduler

    lcm = PRESETS["LCM"]
    pipe = build_pipe(a.family, tiny=a.tiny, depth=a.depth)
    base_config, unet, cpu = pipe.scheduler.config, pipe.unet, torch.device("cpu")
    model = model_standin(a, pipe)
    first: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def lcm_run() -> tuple[float, list[float]]:
        """One LCM image in turbo bf16 the way the engine runs it: prepare, plan, apply, steps, decode, restore."""
        speed.prepare_model(model, cpu)
        plan = speed.plan_speed("turbo", cpu, torch.float32)
        before = turbo.conversions
        t = time.perf_counter()
        plan.apply(pipe, model, cpu)
        if turbo.conversions > before:
            first["turbo bf16 conversion (not prepared), s"] = time.perf_counter() - t
        if plan.notice:
            log(plan.notice)
        pipe.scheduler = build_scheduler(base_config, lcm.sampler, lcm.schedule, 1)
        stamps: list[float] = []

        def on_step(_p, _i, _t, kw):
            stamps.append(time.perf_counter())
            return kw

        t0 = time.perf_counter()
        try:
            generate(pipe, a.size, lcm.steps, lcm.cfg, on_step, plan.decode_autocast)
        finally:
            plan.restore()
        return time.perf_counter() - t0, [b - c for b, c in zip(stamps[1:], stamps, strict=False)]

    def plain_run(steps: int) -> tuple[float, list[float], float]:
        """Plain diffusers' default sampler (Euler), CFG 7.5, fp32, the U-Net as loaded; (whole, step gaps, encode)."""
        unet.__dict__.pop("_studio_prepared", None)
        unet.to(memory_format=torch.contiguous_format)
        pipe.scheduler = build_scheduler(base_config, "Euler", "Normal", 1)
        stamps: list[float] = []

        def on_step(_p, _i, _t, kw):
            stamps.append(time.perf_counter())
            return kw

        t0 = time.perf_counter()
        generate(pipe, a.size, steps, 7.5, on_step)
        whole = time.perf_counter() - t0
        t = time.perf_counter()
        with torch.inference_mode():
            pipe.encode_prompt("a red circle on a white background", cpu, 1, True, "")
        return whole, [b - c for b, c in zip(stamps[1:], stamps, strict=False)], time.perf_counter() - t

    # The first LCM run pays turbo's first-run costs (conversion unless --prepare'd, the compile for this size).
    t = time.perf_counter()
    w, _ = lcm_run()
    first[f"first LCM image in this process (incl. compile {a.size}px from OpenVINO's cache or fresh), s"] = (
        time.perf_counter() - t)  # fmt: skip
    log(f"LCM turbo bf16 first image: {w:.1f} s")
    lcm_whole: list[float] = []
    lcm_steps: list[float] = []
    plain_whole: list[float] = []
    plain_steps: list[float] = []
    encodes: list[float] = []
    for r in range(a.rounds):  # A B B A
        for which in ("lcm", "plain") if r % 2 == 0 else ("plain", "lcm"):
            if which == "lcm":
                w, gaps = lcm_run()
                lcm_whole.append(w)
                lcm_steps += gaps
                log(f"LCM turbo bf16, {lcm.steps} steps: {w:.1f} s whole")
            else:
                w, gaps, enc = plain_run(a.plain_steps)
                plain_whole.append(w)
                plain_steps += gaps
                encodes.append(enc)
                log(f"plain Euler, {a.plain_steps} steps: {w:.1f} s whole, {statistics.median(gaps):.2f} s/step")
    lw = statistics.median(lcm_whole)
    ps = statistics.median(plain_steps)
    pw = statistics.median(plain_whole)
    plain50 = pw + (50 - a.plain_steps) * ps
    ls = statistics.median(lcm_steps) if lcm_steps else math.nan
    print(f"\n{a.family}-layout random weights, {a.size}x{a.size}, batch 1, {torch.get_num_threads()} torch threads, "
          f"{a.rounds} rounds interleaved (A B B A)")
    print("| run | sampler, steps, CFG | s/step | whole image s | vs plain 50-step |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| plain diffusers fp32 (measured) | Euler, {a.plain_steps}, 7.5 | {ps:.2f} | {pw:.1f} | - |")
    print(f"| plain diffusers fp32 (COMPUTED: the {a.plain_steps}-step run + {50 - a.plain_steps} x its s/step) | "
          f"Euler, 50, 7.5 | {ps:.2f} | {plain50:.1f} | 1.00x |")
    print(f"| LCM preset, turbo bf16 (measured) | LCM, {lcm.steps}, {lcm.cfg:g} | {ls:.2f} | {lw:.1f} | "
          f"{plain50 / lw:.1f}x |")
    print(f"\nper step turbo bf16 vs plain: {ps / ls:.2f}x; steps 50 -> {lcm.steps}: {50 / lcm.steps:.1f}x; "
          f"plain's prompt encode (CFG) {statistics.median(encodes):.2f} s")
    print("\nfirst-run costs and memory")
    for k, v in first.items():
        print(f"- {k} = {v:.1f}")
    prep_path = Path(os.environ["LATENT_STUDIO_CACHE_DIR"]) / f"prep-{tag(a)}.json"
    for precision, v in (json.loads(prep_path.read_text()) if prep_path.exists() else {}).items():
        for k, val in v.items():
            if k != "converted":
                print(f"- turbo {precision} (--prepare run): {k} = {val:.1f}")
    print(f"- this process's peak RSS: {rss_mb():.0f} MB")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    ap.add_argument("--depth", type=int, default=0, help="at most this many transformer layers per block (a "
                    "smaller SDXL-layout U-Net: 2 gives SDXL's blocks with 1, 2, 2 layers; the table says so)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--modes", default="", help=f"comma-separated subset of {', '.join(MODES)} (plain always runs)")
    ap.add_argument("--other-modes", default="", help="modes for the samplers after the first (default: --modes); "
                    "without plain, PSNR is against exact (else turbo f32), per-step ratios against the first "
                    "sampler's plain")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--other-rounds", type=int, default=0, help="rounds for the samplers after the first "
                    "(default: --rounds)")
    ap.add_argument("--cache-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "latent-studio-bench"),
                    help="the turbo cache (GBs: outside the repo)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny pipeline (checks this script in seconds)")
    ap.add_argument("--prepare", action="store_true", help="convert and compile turbo only, recording the costs")
    ap.add_argument("--lcm", action="store_true", help="LCM 4 steps in turbo bf16 vs plain 50-step Euler, whole image")
    ap.add_argument("--calls", action="store_true", help="one U-Net call per mode, interleaved (a loaded machine)")
    ap.add_argument("--plain-steps", type=int, default=3, help="--lcm: plain's measured steps (50 are computed)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or mps: plain and the studio's modes run there in the "
                    "engine's dtype (fp16 on a GPU, plain diffusers too); turbo (OpenVINO) is CPU-only and is left "
                    "out elsewhere")
    ap.add_argument("--dtype", dest="dtype_name", choices=("float32", "float16"), default=None,
                    help="override the engine's dtype for --device (float16 on cpu: a GPU's half path, slowly)")
    a = ap.parse_args()
    if a.modes and "plain" not in a.modes:
        a.modes = "plain," + a.modes
    if a.other_modes and not {"plain", "exact", "turbo f32"} & {m.strip() for m in a.other_modes.split(",")}:
        a.other_modes = "turbo f32," + a.other_modes
    os.environ["LATENT_STUDIO_CACHE_DIR"] = a.cache_dir

    import studio.engine  # noqa: F401  (first: puts the hub offline before diffusers is imported)
    from studio.core.errors import RequestError
    from studio.engine.engine import pick_device

    try:
        a.dev, a.dtype = pick_device(a.device)
    except RequestError as e:
        print(f"bench_speed: {e}", file=sys.stderr)
        return 2
    if a.dtype_name:
        import torch

        a.dtype = getattr(torch, a.dtype_name)
    on_cpu = a.dev.type == "cpu"
    a.runnable = MODES if on_cpu else tuple(m for m in MODES if not m.startswith(("turbo", "exact prepared")))
    if not on_cpu and (a.prepare or a.lcm):
        print(f"bench_speed: --{'prepare' if a.prepare else 'lcm'} measures turbo, which runs on the CPU (OpenVINO): "
              "use --device cpu", file=sys.stderr)
        return 2
    if not on_cpu:
        print(f"bench_speed: on {a.dev.type} the modes are {', '.join(a.runnable)} (turbo runs on the CPU)",
              file=sys.stderr)

    if a.prepare:
        return prepare(a)
    if a.calls:
        return measure_calls(a)
    return measure_lcm(a) if a.lcm else measure(a)


if __name__ == "__main__":
    raise SystemExit(main())
