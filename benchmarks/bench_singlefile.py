"""Benchmark: loading a real-size single-file checkpoint (SD 1.5 shapes, fp32, ~4.3 GB): time, peak RSS, bytes read.

    .venv/bin/python benchmarks/bench_singlefile.py                     # build the file once (cached), run all
    .venv/bin/python benchmarks/bench_singlefile.py --only studio,diffusers --json runs/sf-after.json
    .venv/bin/python benchmarks/bench_singlefile.py --fp16              # also an fp16 copy of the file, on the CPU
    .venv/bin/python benchmarks/bench_singlefile.py --work /tmp/sf --keep   # elsewhere; keep the diffusers folder

The model: ``studio.testing.tiny.build_tiny_pipeline(size="sd15")`` (random weights, the real SD 1.5 shapes: an
860M-param U-Net, the CLIP ViT-L text encoder, the VAE) written as an original LDM / A1111 single file by
``tests/ldm_layout.write_single_file`` in fp32. Made once under ``--work`` (default runs/bench-singlefile/) and
reused while ``sd15.safetensors`` is there (about a minute to remake); the diffusers folder it is made from is
deleted once the file is written, unless ``--keep``. ``--fp16`` also makes ``sd15-fp16.safetensors`` from it (what
most downloaded checkpoints are) and loads that in fp32 through the studio. ``--clean`` deletes the work folder at
the end (default: kept).

Each measurement runs in a fresh process (so its peak RSS, ``ru_maxrss``, is that path's own), with
HF_HUB_OFFLINE=1, sockets refused (any attempt is counted), and its own empty LATENT_STUDIO_DATA_DIR (so the
studio's on-disk hash cache starts empty: each child is a first load of the file, and hashes it):
- baseline: a bare ``import torch, diffusers``;
- studio: ``studio.engine.loader.load_model(path, cpu, float32)`` (header detection, then ``from_single_file``
  with the shipped config and tokenizer, then the A1111 hash of the file);
- diffusers: ``StableDiffusionPipeline.from_single_file(path, config=resources/configs/sd1, local_files_only=True,
  safety_checker=None, requires_safety_checker=False, tokenizer=CLIPTokenizer(resources/tokenizer))``;
- engine: ``Engine(device="cpu").generate`` 256x256, 2 steps, Euler, cfg 7, seed 1, from the file; then the same
  request again in the same process: ``engine.loads`` must stay 1, and the second call must read ~0 bytes.
The studio and diffusers children import the pipeline classes before the clock starts (the import time is
reported apart), load, then read every weight once ("+ touch"): both loads leave the weights in the file's mmap
and fault them in on first use, so the load alone says little about memory; the touched peak is the one to judge.

Bytes read come from /proc/self/io around the measured call: ``read_bytes`` (what reached the block device,
mmap faults included) and ``rchar`` (bytes through read()-like calls, page cache or not; this script's own reads
of /proc are taken off). A page of an mmap'ed file found in the page cache is in neither, so the child also
reports its page faults and how much of its RSS is file-backed (RssFile) or anonymous (RssAnon), sampled every
20 ms. Nothing is dropped from the page cache: how much of the file was cached before each child (fincore) is
reported; read_bytes is a warm-cache number past the first reader.

Peak RSS is compared with the file's size (the weights): the bar is peak <= 1.2x the file; (peak - baseline) / file
is the part the load itself adds. Results: a table, and JSON (``--json``, default runs/bench_singlefile.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "resources" / "configs" / "sd1"
TOKENIZER = ROOT / "resources" / "tokenizer"
GB = 1e9
BAR = 1.2
PATHS = ("baseline", "studio", "diffusers", "engine")

# -- measuring, inside a child -------------------------------------------------------------------------------
_own_reads = [0]  # bytes this script read from /proc (taken off rchar)
_own_lock = threading.Lock()


def _read_proc(name: str) -> str:
    with open(name, "rb") as f:
        raw = f.read()
    with _own_lock:
        _own_reads[0] += len(raw)
    return raw.decode()


def proc_io() -> dict[str, int]:
    out = {}
    for line in _read_proc("/proc/self/io").splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile... of this process, in bytes."""
    out = {}
    for line in _read_proc("/proc/self/status").splitlines():
        k, _, v = line.partition(":")
        if k.startswith(("Vm", "Rss")) and v.strip().endswith("kB"):
            out[k] = int(v.split()[0]) * 1024
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class Sampler:
    """RSS sampled every `every` s on a thread: the highest total, and its anonymous / file-backed split."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak = every, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.max_anon = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = proc_status()
            if s.get("VmRSS", 0) > self.peak["VmRSS"]:
                self.peak = {k: s.get(k, 0) for k in self.peak}
            self.max_anon = max(self.max_anon, s.get("RssAnon", 0))
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


class Measure:
    """Time, /proc/self/io and page-fault deltas, and the sampled RSS split, across a block."""

    def __enter__(self):
        self.own0 = _own_reads[0]
        self.io0, self.ru0 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
        self.sampler = Sampler().__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.sampler.__exit__()
        own = _own_reads[0] - self.own0  # the first /proc/self/io read and the sampler's: both in the rchar delta
        io1, ru1 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
        self.read_bytes = io1["read_bytes"] - self.io0["read_bytes"]
        self.rchar = io1["rchar"] - self.io0["rchar"] - own
        self.majflt, self.minflt = ru1.ru_majflt - self.ru0.ru_majflt, ru1.ru_minflt - self.ru0.ru_minflt
        self.peak_rss, self.after = peak_rss(), proc_status()

    def result(self) -> dict:
        s = self.sampler
        return {
            "seconds": round(self.seconds, 2),
            "read_bytes": self.read_bytes,
            "rchar": self.rchar,
            "major_faults": self.majflt,
            "minor_faults": self.minflt,
            "peak_rss": self.peak_rss,
            "after": self.after,
            "sampled_peak": s.peak,
            "sampled_max_anon": s.max_anon,
        }


def _tensors(pipe):
    seen = set()
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        for t in [*module.parameters(), *module.buffers()] if module is not None else []:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                yield t


def weights_report(pipe, file: Path) -> dict:
    """Bytes of the pipeline's parameters and buffers, and how many of them live in the file's mmap."""
    ranges, perms = [], set()
    target = str(file.resolve())
    for line in _read_proc("/proc/self/maps").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == target:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
            perms.add(parts[1])
    total = mapped = 0
    dtypes = set()
    for t in _tensors(pipe):
        n = t.numel() * t.element_size()
        total += n
        dtypes.add(str(t.dtype).replace("torch.", ""))
        if any(lo <= t.data_ptr() < hi for lo, hi in ranges):
            mapped += n
    return {"weights_bytes": total, "weights_in_file_mmap_bytes": mapped, "weights_dtypes": sorted(dtypes),
            "file_mappings": len(ranges), "file_mapping_perms": sorted(perms)}


def touch(pipe) -> None:
    """Read every weight once (what the first generation does), so that mmap'ed pages count in the RSS."""
    import torch

    with torch.no_grad():
        for t in _tensors(pipe):
            t.sum()


def block_network() -> list[str]:
    """Refuse every socket connection in this process; the list collects the attempts."""
    import socket

    attempts: list[str] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(repr(address))
        raise OSError("network blocked by bench_singlefile")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    return attempts


def child(name: str, file: Path, threads: int) -> dict:
    attempts = block_network()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    if name == "baseline":
        import diffusers  # noqa: F401 - the import is the measurement

        bare = proc_status()
        from diffusers import StableDiffusionPipeline  # noqa: F401 - what the loading paths import besides
        from transformers import CLIPTextModel  # noqa: F401

        return {"path": name, "after": bare, "with_pipeline_classes": proc_status(), "network_attempts": attempts}
    if name in ("studio", "diffusers"):
        from diffusers import StableDiffusionPipeline
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401 - imported before the clock

        from studio.core import metadata
        from studio.engine.loader import load_model

        imports_s = round(time.perf_counter() - t0, 2)
        hashing: dict = {}
        real_hash = metadata.model_hash

        def timed_hash(path):  # the loader imports it at call time: the hash's own share of the load
            io0, h0 = proc_io(), time.perf_counter()
            try:
                return real_hash(path)
            finally:
                io1 = proc_io()
                hashing.update(seconds=round(time.perf_counter() - h0, 2), rchar=io1["rchar"] - io0["rchar"],
                               read_bytes=io1["read_bytes"] - io0["read_bytes"])

        metadata.model_hash = timed_hash
        extra: dict = {}
        with Measure() as m:
            if name == "studio":
                loaded = load_model(file, torch.device("cpu"), torch.float32)
                pipe = loaded.base
                extra = {"arch": loaded.layout.arch, "model_hash": loaded.hash, "hash": hashing}
            else:
                tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
                pipe = StableDiffusionPipeline.from_single_file(
                    str(file), config=str(CONFIG), local_files_only=True, safety_checker=None,
                    requires_safety_checker=False, tokenizer=tokenizer)
        loaded_report = weights_report(pipe, file)
        with Measure() as t:
            touch(pipe)
        return {"path": name, "imports_s": imports_s, "load": m.result(), "touch": t.result(), **loaded_report,
                **extra, "network_attempts": attempts}
    if name == "engine":
        import numpy as np

        from studio.core import GenerateRequest
        from studio.engine.engine import Engine

        engine = Engine(device="cpu", threads=threads)
        req = GenerateRequest(prompt="a lighthouse on a cliff at dusk", model=str(file), width=256, height=256,
                              steps=2, sampler="Euler", cfg=7.0, seed=1)
        with Measure() as m1:
            r1 = engine.generate(req)
        first = {**m1.result(), "timings": {k: round(v, 2) for k, v in r1.timings.items()}, "loads": engine.loads}
        img = np.asarray(r1.images[0])
        check = {"shape": list(img.shape), "dtype": str(img.dtype), "min": int(img.min()), "max": int(img.max()),
                 "std": round(float(img.std()), 2), "unique_values": int(len(np.unique(img)))}
        check["ok"] = img.shape == (256, 256, 3) and img.dtype == np.uint8 and check["unique_values"] > 1
        with Measure() as m2:
            r2 = engine.generate(req)
        second = {**m2.result(), "timings": {k: round(v, 2) for k, v in r2.timings.items()}, "loads": engine.loads}
        same = bool(np.array_equal(img, np.asarray(r2.images[0])))
        return {"path": name, "first": first, "second": second, "image": check, "same_image_twice": same,
                "model_hash": r1.model_hash, "model_name": r1.model_name,
                **weights_report(engine._model.base, file), "network_attempts": attempts}
    raise SystemExit(f"unknown child {name!r}")


# -- building the model, in a child --------------------------------------------------------------------------
def build(work: Path, keep: bool) -> None:
    import torch

    from studio.testing.tiny import build_tiny_pipeline

    sys.path.insert(0, str(ROOT / "tests"))
    from ldm_layout import write_single_file

    folder, out = work / "sd15", work / "sd15.safetensors"
    t0 = time.perf_counter()
    if not (folder / ".complete").exists():
        build_tiny_pipeline(folder, size="sd15")
        (folder / ".complete").write_text("")
        print(f"built {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    partial = work / "sd15.partial.safetensors"
    write_single_file(folder, partial, torch.float32)
    os.replace(partial, out)
    print(f"wrote {out} ({out.stat().st_size / GB:.2f} GB) in {time.perf_counter() - t1:.0f} s", flush=True)
    if not keep:
        shutil.rmtree(folder)


def build_fp16(src: Path, out: Path) -> None:
    """The fp32 file's tensors in fp16, same keys and metadata (as pruned community checkpoints ship)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        sd = {k: (t.half() if t.is_floating_point() else t) for k in f.keys() for t in (f.get_tensor(k),)}
    partial = out.with_name(out.stem + ".partial.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(partial), metadata=meta)
    os.replace(partial, out)
    assert all(v.dtype != torch.float32 for v in sd.values() if v.is_floating_point())


# -- the parent ----------------------------------------------------------------------------------------------
def run_child(args: list[str], data_dir: Path | None = None, timeout: float = 3600) -> dict | None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("LATENT_STUDIO_DATA_DIR", None)
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        env["LATENT_STUDIO_DATA_DIR"] = str(data_dir)
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=timeout)
    finally:
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    if r.returncode != 0:
        print(f"child {args} failed (rc {r.returncode}):\n{r.stderr[-4000:]}", file=sys.stderr)
        return None
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(r.stdout[-2000:])
    return None


def ensure_model(work: Path, keep: bool) -> Path:
    out = work / "sd15.safetensors"
    if out.is_file():
        print(f"reusing {out} ({out.stat().st_size / GB:.2f} GB)")
        return out
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the SD 1.5-shaped random model and {out} (a minute or more, once)...", flush=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--build", "--work", str(work)] + (["--keep"] if keep else [])
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    print(f"built in {time.perf_counter() - t0:.0f} s")
    return out


def page_cached(file: Path) -> int | None:
    """Bytes of `file` in the page cache (util-linux fincore), or None where it is missing."""
    try:
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(file)],
                           capture_output=True, text=True, timeout=60)
        return int(r.stdout.split()[0]) if r.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def gb(n: float | None) -> str:
    return "?" if n is None else f"{n / GB:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-singlefile",
                    help="where the model is made and cached (default runs/bench-singlefile)")
    ap.add_argument("--keep", action="store_true", help="keep the diffusers folder the single file is made from")
    ap.add_argument("--clean", action="store_true", help="delete the work folder at the end")
    ap.add_argument("--only", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--fp16", action="store_true", help="also load an fp16 copy of the file through the studio")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "bench_singlefile.json")
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build-fp16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = a.work.resolve()
    if a.build:
        build(work, a.keep)
        return 0
    if a.build_fp16:
        build_fp16(work / "sd15.safetensors", work / "sd15-fp16.safetensors")
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.file, a.threads)))
        return 0

    only = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in only if p not in PATHS]
    if bad:
        ap.error(f"unknown path(s) {bad}; choose from {PATHS}")
    file = ensure_model(work, a.keep)
    size = file.stat().st_size
    jobs = [(name, name, file) for name in only]
    fp16 = work / "sd15-fp16.safetensors"
    if a.fp16:
        if not fp16.is_file():
            print(f"making {fp16} from {file.name}...", flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-fp16", "--work", str(work)],
                           check=True, cwd=ROOT)
        jobs.append(("studio-fp16", "studio", fp16))
    results: dict[str, dict] = {}
    for key, name, path in jobs:
        cached = page_cached(path)
        print(f"running {key} (fresh process; {gb(cached)} of {gb(path.stat().st_size)} GB of the file in the page "
              "cache)...", flush=True)
        t0 = time.perf_counter()
        data_dir = work / f"data-{key}" if name in ("studio", "engine") else None
        r = run_child(["--child", name, "--file", str(path), "--threads", str(a.threads)], data_dir)
        print(f"  {key}: child took {time.perf_counter() - t0:.0f} s", flush=True)
        if r is not None:
            r["page_cached_before"] = cached
            r["file_bytes"] = path.stat().st_size
            results[key] = r
    base = results.get("baseline", {}).get("after", {}).get("VmHWM")

    def row(label: str, seconds: float | None, peak: int, m: dict | None, fsize: int = size) -> dict:
        return {"path": label, "seconds": None if seconds is None else round(seconds, 2),
                "peak_rss_gb": round(peak / GB, 2), "peak_per_file": round(peak / fsize, 3),
                "peak_minus_baseline_per_file": round((peak - base) / fsize, 3) if base else None,
                "read_bytes_gb": None if m is None else round(m["read_bytes"] / GB, 3),
                "rchar_gb": None if m is None else round(m["rchar"] / GB, 3)}

    def both(m1: dict, m2: dict) -> dict:
        return {"read_bytes": m1["read_bytes"] + m2["read_bytes"], "rchar": m1["rchar"] + m2["rchar"]}

    rows = []
    if base:
        rows.append(row("baseline: import torch, diffusers", None, base, None))
    labels = {"studio": "A studio: loader.load_model", "diffusers": "B diffusers: from_single_file",
              "studio-fp16": "A studio, fp16 file -> fp32: loader.load_model"}
    for key, label in labels.items():
        if key not in results:
            continue
        r = results[key]
        fsize = r["file_bytes"]
        ld, tc = r["load"], r["touch"]
        rows.append(row(label, ld["seconds"], ld["peak_rss"], ld, fsize))
        rows.append(row(f"{label.split(':')[0]}: + read every weight once", ld["seconds"] + tc["seconds"],
                        tc["peak_rss"], both(ld, tc), fsize))
    if "engine" in results:
        r = results["engine"]
        f, s = r["first"], r["second"]
        t = f["timings"]
        rows.append(row(f"engine generate #1: load {t.get('load', 0):.1f} s + 2 steps {t.get('sample', 0):.1f} s "
                        f"+ decode {t.get('decode', 0):.1f} s", f["seconds"], f["peak_rss"], f))
        rows.append(row(f"engine generate #2, same file (loads = {s['loads']})", s["seconds"], s["peak_rss"], s))

    print(f"\n{file.name}: {gb(size)} GB fp32 single file (SD 1.5 shapes, random weights); {a.threads} threads; "
          "each path in a fresh process; page cache not dropped\n")
    print("| path | seconds | peak RSS (GB) | peak/file | (peak-baseline)/file | bytes read (GB): disk / read() |")
    print("| --- | --- | --- | --- | --- | --- |")
    for d in rows:
        rb = "-" if d["read_bytes_gb"] is None else f"{d['read_bytes_gb']:.2f} / {d['rchar_gb']:.2f}"
        pb = "-" if d["peak_minus_baseline_per_file"] is None else f"{d['peak_minus_baseline_per_file']:.2f}"
        sec = "-" if d["seconds"] is None else f"{d['seconds']:.1f}"
        print(f"| {d['path']} | {sec} | {d['peak_rss_gb']:.2f} | {d['peak_per_file']:.2f} | {pb} | {rb} |")

    notes = [f"bar: peak RSS <= {BAR}x the file ({gb(BAR * size)} GB for the fp32 file)"]
    if "baseline" in results:
        notes.append("baseline: bare import torch, diffusers (diffusers imports lazily); with StableDiffusionPipeline "
                     f"and CLIPTextModel imported too: {gb(results['baseline']['with_pipeline_classes']['VmHWM'])} GB")
    for key in labels:
        if key not in results:
            continue
        r = results[key]
        ld, tc = r["load"], r["touch"]
        fsize = r["file_bytes"]
        verdict = "meets" if tc["peak_rss"] <= BAR * fsize else "MISSES"
        notes.append(
            f"{key}: {verdict} the bar once every weight is read (peak {tc['peak_rss'] / fsize:.2f}x the file); "
            f"imports before the clock {r['imports_s']} s; weights {gb(r['weights_bytes'])} GB "
            f"({'/'.join(r['weights_dtypes'])}), {gb(r['weights_in_file_mmap_bytes'])} GB of them in the file's mmap "
            f"({', '.join(r['file_mapping_perms']) or 'not mapped'}); after the load: anon "
            f"{gb(ld['after'].get('RssAnon'))} + file-backed {gb(ld['after'].get('RssFile'))} GB; at the sampled peak "
            f"of the load anon {gb(ld['sampled_peak']['RssAnon'])} + file {gb(ld['sampled_peak']['RssFile'])} GB (max "
            f"anon {gb(ld['sampled_max_anon'])}); after the touch: anon {gb(tc['after'].get('RssAnon'))} + file "
            f"{gb(tc['after'].get('RssFile'))} GB; faults in the load {ld['major_faults']} major / "
            f"{ld['minor_faults']} minor, in the touch {tc['major_faults']} / {tc['minor_faults']}; page cache before: "
            f"{gb(r['page_cached_before'])} GB")
        if r.get("hash"):
            h = r["hash"]
            notes.append(f"{key}: of its load, the A1111 file hash (empty hash cache) took {h['seconds']} s and read() "
                         f"{gb(h['rchar'])} GB (disk {gb(h['read_bytes'])}); arch {r['arch']}, hash {r['model_hash']}")
    if "engine" in results:
        r = results["engine"]
        f, s = r["first"], r["second"]
        notes.append(f"engine image: {r['image']} (ok: {r['image']['ok']}); same image on the second call: "
                     f"{r['same_image_twice']}")
        notes.append(f"engine second call: loads {s['loads']} (must be 1), read_bytes {s['read_bytes']} B, rchar "
                     f"{s['rchar']} B, {s['seconds']} s (hash {r['model_hash']}); timings {s['timings']}")
        notes.append(f"engine: at the peak of the first call anon {gb(f['sampled_peak']['RssAnon'])} + file-backed "
                     f"{gb(f['sampled_peak']['RssFile'])} GB; weights {gb(r['weights_in_file_mmap_bytes'])} of "
                     f"{gb(r['weights_bytes'])} GB in the file's mmap; page cache before: {gb(r['page_cached_before'])} GB")
    tried = {k: r.get("network_attempts") for k, r in results.items() if r.get("network_attempts")}
    notes.append(f"network: {'connection attempts ' + json.dumps(tried) if tried else 'no child tried to connect'}")
    notes.append("bytes read: /proc/self/io across the measured call; read_bytes is what reached the disk (nothing was "
                 "dropped from the page cache), rchar counts read() calls only; a cached page of an mmap'ed file is in "
                 "neither (see the faults and RssFile)")
    print()
    for n in notes:
        print(f"note: {n}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"file": str(file), "file_bytes": size, "threads": a.threads, "rows": rows,
                                  "notes": notes, "children": results}, indent=2) + "\n")
    print(f"\nwrote {a.json}")
    if a.clean:
        shutil.rmtree(work)
        print(f"deleted {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
