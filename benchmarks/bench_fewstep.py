"""Few-step presets against a 20-step run (a script, not a test). Prints a table.

  .venv/bin/python benchmarks/bench_fewstep.py [--model PATH] [--rounds 5] [--size 0]
  (STUDIO_THREADS=1 on a crowded machine: fewer threads than cores keeps steps steady)

Whole images (encode, steps, decode) through the studio's engine, the runs interleaved (A B C ... C B A, every
round) so a busy machine slows all alike; the table shows each preset's median time and its speed-up against
the 20-step Euler a run at CFG 7. The built-in model is not distilled: the few-step images are not good on it,
only the time is measured (a distilled model runs the same U-Net, so its time is the same).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.core import GenerateRequest  # noqa: E402
from studio.core.fewstep import PRESETS  # noqa: E402

RUNS = {
    "20 steps, Euler a, CFG 7": {"sampler": "Euler a", "schedule": "Normal", "steps": 20, "cfg": 7.0},
    PRESETS["LCM"].label: PRESETS["LCM"].fields(),
    PRESETS["Lightning 4-step"].label: PRESETS["Lightning 4-step"].fields(),
    PRESETS["SD Turbo"].label: PRESETS["SD Turbo"].fields(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="a model folder or file (default: the built-in model)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=0, help="width and height (0: the model's native size)")
    args = ap.parse_args()
    from studio.engine.engine import Engine

    engine = Engine()
    times: dict[str, list[float]] = {k: [] for k in RUNS}
    cpu: dict[str, list[float]] = {k: [] for k in RUNS}  # CPU seconds: steadier than wall time on a shared machine

    def run(name: str, seed: int) -> None:
        r = GenerateRequest.from_fields(prompt="a red circle on a white background", model=args.model, seed=seed,
                                        width=args.size or None, height=args.size or None, preview="none", **RUNS[name])  # fmt: skip
        t, c = time.perf_counter(), time.process_time()
        engine.generate(r)
        times[name].append(time.perf_counter() - t)
        cpu[name].append(time.process_time() - c)

    for name in RUNS:  # warm-up: load the model once, first-call costs out of the table
        run(name, 0)
        times[name].clear()
        cpu[name].clear()
    order = list(RUNS)
    for i in range(args.rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            run(name, i)
    base, base_cpu = statistics.median(times[order[0]]), statistics.median(cpu[order[0]])
    print(f"{'run':<32} {'wall s':>8} {'speed-up':>9} {'CPU s':>8} {'speed-up':>9}")
    for name in order:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"{name:<32} {med:>8.3f} {base / med:>8.2f}x {med_cpu:>8.3f} {base_cpu / med_cpu:>8.2f}x")


if __name__ == "__main__":
    main()
