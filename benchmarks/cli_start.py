"""How fast the CLI starts: `studio --help`, an argument error, and `studio generate` on the built-in model, in this
process (--no-server) and on the warm engine, against `python -c "import torch"`. Interleaved rounds (the order
flips each round), min and median wall time of each, and for generate its split (imports, load, steps, decode,
save) and its overhead: wall - torch's import - the work (load, steps, decode, save).

    .venv/bin/python benchmarks/cli_start.py [--rounds 5] [--before DIR]

--before DIR: also time the same commands in another checkout (e.g. `git archive <commit> | tar -x -C DIR`; it
needs a .venv link), for a before/after table. The warm engine is this script's own (a private temporary runtime
folder), stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ["generate", "--prompt", "a red circle", "--seed", "1", "--timings"]
SPLIT = re.compile(r"(start|imports|load|steps|decode|save|total) ([\d.]+) s")


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, dict[str, float], str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = next((ln for ln in p.stderr.splitlines() if "timings" in ln), "")
    return wall, {k: float(v) for k, v in SPLIT.findall(line)}, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", type=Path, default=None, help="another checkout to time too")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="cli-start-"))
    rt = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    env = {**os.environ, "STUDIO_RUNTIME_DIR": str(rt), "STUDIO_SERVER_IDLE": "900"}
    env.pop("STUDIO_NO_SERVER", None)
    py = sys.executable
    studio = [py, "-m", "studio"]
    cases: dict[str, tuple[list[str], Path]] = {
        "import torch": ([py, "-c", "import torch"], ROOT),
        "--help": ([*studio, "--help"], ROOT),
        "argument error": ([*studio, "generate", "--prompt", "x", "--steps", "0"], ROOT),
        "generate, this process": ([*studio, *GEN, "--no-server", "--out", str(out)], ROOT),
        "generate, warm engine": ([*studio, *GEN, "--out", str(out)], ROOT),
    }
    if args.before:
        for name in ("--help", "argument error"):
            cases[f"{name} (before)"] = (cases[name][0], args.before)
        gen_before = [*studio, *[a for a in GEN if a != "--timings"], "--out", str(out)]
        cases["generate (before)"] = (gen_before, args.before)
    first = timed([*studio, *GEN, "--out", str(out)], ROOT, env)  # the first use: starts the engine
    walls: dict[str, list[float]] = {k: [] for k in cases}
    splits: dict[str, list[dict]] = {k: [] for k in cases}
    try:
        for r in range(args.rounds):
            for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
                cmd, cwd = cases[name]
                wall, split, err = timed(cmd, cwd, env)
                walls[name].append(wall)
                splits[name].append(split)
    finally:
        subprocess.run([*studio, "serve", "--stop"], cwd=ROOT, env=env, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
    torch_s = min(walls["import torch"])
    print(f"{args.rounds} interleaved rounds; wall seconds (min / median); overhead = wall - import torch - work")
    print(f"first use (starts the engine): {first[0]:.2f} s  {first[1]}")
    print("| command | min | median | split (min round) | overhead |")
    print("| --- | --- | --- | --- | --- |")
    work_direct = None
    for name, ws in walls.items():
        i = ws.index(min(ws))
        split = splits[name][i]
        work = sum(split.get(k, 0.0) for k in ("load", "steps", "decode", "save"))
        if name == "generate, this process":
            work_direct = sum(split.get(k, 0.0) for k in ("steps", "decode", "save"))
        over = ""
        if name.startswith("generate"):
            if not split and work_direct is not None:  # before: no split; its steps are the direct run's
                work = work_direct
            over = f"{ws[i] - torch_s - work:+.2f} s"
        text = ", ".join(f"{k} {v:.2f}" for k, v in split.items() if k != "total")
        print(f"| {name} | {min(ws):.2f} | {statistics.median(ws):.2f} | {text} | {over} |")


if __name__ == "__main__":
    main()
