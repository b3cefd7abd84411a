"""Soak: many generations in one process, watching memory, threads, file handles and temp files (a script).

    .venv/bin/python benchmarks/bench_soak.py                 # 200 local + 50 switching + 50 on a fake server
    .venv/bin/python benchmarks/bench_soak.py --local 40 --switch 10 --server 10   # a quick look

Phases, in one process:
  1. local: consecutive generations on the built-in model (the local backend, as the window and CLI run it);
  2. switch: alternating between the built-in model and a second model (a tiny random SD pipeline), the second
     with a LoRA (a random kohya-format file for it), so weights load and LoRA adapters attach and detach;
  3. server: generations on the fake ComfyUI server (tests/fake_comfyui.py), its socket dropped every 10th job.
Resident memory is sampled every 10 runs; the table shows it per phase and whether it stays flat within 5% after
the phase's warm-up (its first 10 runs). Threads, open file handles and files in the temp folder are counted
before and after: nothing may be left behind.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def open_files() -> int:
    try:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))
    except OSError:
        import psutil

        return len(psutil.Process().open_files())


def temp_files() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def kohya_lora(pipe, path: Path) -> str:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {}
    for prefix, part in (("lora_unet_", pipe.unet), ("lora_te_text_model_", pipe.text_encoder)):
        for name, m in part.named_modules():
            if isinstance(m, torch.nn.Linear) and (".attn1.to_" in name or ".attn2.to_" in name
                                                   or ".self_attn." in name):  # fmt: skip
                k = prefix + name.replace(".", "_")
                sd[k + ".lora_down.weight"] = torch.randn(4, m.in_features, generator=g) * 0.3
                sd[k + ".lora_up.weight"] = torch.randn(m.out_features, 4, generator=g) * 0.3
                sd[k + ".alpha"] = torch.tensor(2.0)
    save_file(sd, str(path))
    return str(path)


def phase_stats(samples: list[float]) -> tuple[str, str]:
    after = samples[1:] if len(samples) > 1 else samples
    lo, hi = min(after), max(after)
    drift = (hi - lo) / lo * 100 if lo else 0.0
    return " ".join(f"{s:.0f}" for s in samples), f"{drift:.1f}% ({'flat' if drift <= 5 else 'GROWS'})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", type=int, default=200)
    ap.add_argument("--switch", type=int, default=50)
    ap.add_argument("--server", type=int, default=50)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    # A temp folder of this run alone: other processes' temp files must not count.
    tempfile.tempdir = tempfile.mkdtemp(prefix="studio-soak-tmp-")
    os.environ["TMPDIR"] = tempfile.tempdir
    import studio.engine  # noqa: F401  (the hub offline before diffusers is imported)
    from studio.backends.local import LocalBackend
    from studio.core.requests import GenerateRequest
    from studio.paths import BUILTIN_MODEL
    from studio.testing.tiny import build_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="studio-soak-"))
    second = str(build_tiny_pipeline(work / "tiny-sd", "txt2img", seed=0))
    threads0, files0, temps0 = set(threading.enumerate()), open_files(), temp_files()

    rows: list[tuple[str, int, str, str]] = []
    backend = LocalBackend(device="cpu")
    base = GenerateRequest(prompt="a red circle in the top left on a white background", steps=args.steps, seed=1)

    samples: list[float] = []
    for i in range(args.local):
        assert backend.generate(base.replace(seed=i)).images
        if i % 10 == 9:
            gc.collect()
            samples.append(rss_mb())
    if samples:
        rows.append(("local, built-in model", args.local, *phase_stats(samples)))

    if args.switch:
        from diffusers import StableDiffusionPipeline

        lora = kohya_lora(StableDiffusionPipeline.from_pretrained(second, local_files_only=True), work / "lora.safetensors")
        samples = []
        for i in range(args.switch):
            if i % 2:
                req = base.replace(model=second, seed=i, width=64, height=64, loras=((lora, 0.8),))
            else:
                req = base.replace(model=str(BUILTIN_MODEL), seed=i)
            assert backend.generate(req).images
            if i % 10 == 9:
                gc.collect()
                samples.append(rss_mb())
        if samples:
            rows.append(("switching: built-in / tiny + LoRA", args.switch, *phase_stats(samples)))
    backend.close()

    if args.server:
        from fake_comfyui import FakeComfy, allow_loopback

        from studio.backends.comfyui.backend import ComfyUIBackend

        samples = []
        with allow_loopback():
            server = FakeComfy(cache=False, step_delay=0.002).start()
            remote = ComfyUIBackend(server.url)
            try:
                remote.start()
                for i in range(args.server):
                    server.drop_socket_at_step = 2 if i % 10 == 5 else None
                    assert remote.generate(base.replace(seed=i, width=64, height=64)).images
                    if i % 10 == 9:
                        gc.collect()
                        samples.append(rss_mb())
            finally:
                remote.close()
                server.stop()
        if samples:
            rows.append(("fake ComfyUI server, a socket drop every 10", args.server, *phase_stats(samples)))

    gc.collect()
    threads1, files1 = set(threading.enumerate()), open_files()
    # tqdm's one monitor thread (a daemon, started by the first progress bar a library makes) is not ours.
    new_threads = sorted(t.name for t in threads1 - threads0 if t.name != "tqdm_monitor")
    left = sorted(temp_files() - temps0 - {work.name})

    print(f"\nSoak ({args.steps} steps a run, 2 CPUs, pid {os.getpid()})\n")
    print("| phase | runs | RSS every 10 runs (MB) | spread after the first sample |")
    print("|---|---|---|---|")
    for name, n, series, drift in rows:
        print(f"| {name} | {n} | {series} | {drift} |")
    print(f"\nthreads {len(threads0)} -> {len(threads1)} (new: {new_threads or 'none'}), open files {files0} -> {files1}, "
          f"new temp entries: {left or 'none'}")
    ok = not new_threads and files1 <= files0 and not left and all("flat" in r[3] for r in rows)
    print("verdict:", "nothing left behind, memory flat" if ok else "LEAK (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
