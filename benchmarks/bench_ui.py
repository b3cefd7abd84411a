"""UI responsiveness benchmark (a script, not a test). Prints a table.

  .venv/bin/python benchmarks/bench_ui.py [--model PATH] [--size 256] [--steps 20] [--runs 3]

Measures, with the real engine:
  * time to a visible window: `python -m studio` launched in a subprocess with
    LATENT_STUDIO_EXIT_ON_SHOW=1, which prints and quits on first show (bar: <= 1.5 s);
  * the longest event-loop stall while the engine loads (torch import) and during runs,
    probed by a 5 ms QTimer (bar: <= 30 ms during a run);
  * the time from Cancel to the job's `cancelled` signal, against the mean step time
    (bar: <= one step).
Without a display it runs offscreen. Without --model it uses the built-in model if present,
else a tiny random-weight pipeline built in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LATENT_STUDIO_CONFIG_DIR", tempfile.mkdtemp(prefix="studio-bench-config-"))
os.environ.setdefault("LATENT_STUDIO_DATA_DIR", tempfile.mkdtemp(prefix="studio-bench-data-"))

PROBE_MS = 5


def time_to_window(runs: int) -> tuple[list[float], list[float]]:
    """Wall time from launching `python -m studio` to its first show; and what the app itself reports."""
    walls, inner = [], []
    env = {**os.environ, "LATENT_STUDIO_EXIT_ON_SHOW": "1"}
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "studio"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        line = ""
        for line in proc.stdout:
            if line.startswith("shown"):
                walls.append(time.perf_counter() - t0)
                inner.append(float(line.split()[1]))
                break
        proc.wait(60)
        if not line.startswith("shown"):
            raise SystemExit(f"the window never showed: {proc.stderr.read()[-2000:]}")
    return walls, inner


class Probe:
    """A 5 ms timer; the longest gap between ticks is the longest the event loop was blocked."""

    def __init__(self):
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last = 0.0

    def _tick(self):
        now = time.perf_counter()
        if self._last:
            self.gaps.append(now - self._last)
        self._last = now

    def start(self):
        self.gaps, self._last = [], time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return max(self.gaps, default=0.0) * 1000  # ms


def wait_for(signal, timeout_s: float = 600.0):
    from PySide6.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []

    def done(*args):
        got.append(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(done)
    if not got:
        raise SystemExit(f"timed out waiting for {signal}")
    return got[0]


def ui_only_row(steps: int, runs: int) -> tuple[str, str, str, str]:
    """The same runs with a fake engine (no compute): the UI's own work per step and per image."""
    import dataclasses

    import numpy as np

    from studio.app import build_window
    from studio.backends.fake import FakeBackend
    from studio.settings import Settings

    class Fake(FakeBackend):
        def generate(self, request, on_step=None, cancel=None):
            res = super().generate(request, on_step, cancel)
            rng = np.random.default_rng(0)
            return dataclasses.replace(res, images=[rng.integers(0, 255, (512, 512, 3), np.uint8) for _ in res.images])

        def preview_image(self, value):
            return np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)

    fake = Fake(auto=True, step_delay=0.02)
    window = build_window(Settings(), fake, output_dir=tempfile.mkdtemp(prefix="studio-bench-out-"))
    window.show()
    window.session.update_params(prompt="x", steps=steps, seed=1)
    probe, worst = Probe(), 0.0
    for _ in range(runs):
        probe.start()
        window.session.generate()
        wait_for(window.session.result_image)
        worst = max(worst, probe.stop())
    window.close()
    return ("same, fake engine (the UI's own work only)", f"{worst:.0f} ms",
            f"512x512 image, 64x64 previews, {steps} steps", "<= 30 ms")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: built-in, else a tiny random pipeline)")
    ap.add_argument("--size", type=int, default=0, help="width = height in pixels (default: native; 64 for tiny)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (OMP_NUM_THREADS); on a machine whose cores are busy with "
                         "other work, torch's default (all cores) can run 10-100x slower")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch is imported later, on the engine thread

    rows: list[tuple[str, str, str, str]] = []
    walls, inner = time_to_window(args.runs)
    rows.append(("time to visible window (python -m studio)", f"{statistics.median(walls):.2f} s",
                 f"min {min(walls):.2f} s, in-process {statistics.median(inner):.2f} s", "<= 1.5 s"))  # fmt: skip

    from PySide6.QtWidgets import QApplication

    from studio.app import build_window
    from studio.backends.local import LocalBackend
    from studio.paths import BUILTIN_MODEL
    from studio.settings import Settings
    from studio.ui.theme import apply_dark_theme

    app = QApplication.instance() or QApplication([sys.argv[0]])
    apply_dark_theme(app)
    out_dir = Path(tempfile.mkdtemp(prefix="studio-bench-out-"))
    model, size, label = args.model, args.size, ""
    if model is None and (BUILTIN_MODEL / "model_index.json").is_file():
        model, label = str(BUILTIN_MODEL), "built-in"
    probe = Probe()
    window = build_window(Settings(), LocalBackend(device=args.device), model=model, output_dir=str(out_dir))
    window.show()
    app.processEvents()

    probe.start()
    window.start_engine()
    wait_for(window.session.capabilities_changed)  # emitted once the backend has started
    rows.append(("longest stall while the engine loads (torch import)", f"{probe.stop():.0f} ms",
                 "once, in the background after the window shows", "-"))  # fmt: skip

    if model is None:
        from studio.testing.tiny import build_tiny_pipeline

        model = str(build_tiny_pipeline(Path(tempfile.mkdtemp(prefix="studio-bench-model-")) / "tiny"))
        size, label = size or 64, "tiny random"
        window.session.update_params(model=model)
    label = label or Path(model).name
    window.session.update_params(prompt="a lighthouse at dusk, oil painting", steps=args.steps, seed=1,
                                 width=size, height=size, sampler="Euler a")  # fmt: skip

    step_times: list[float] = []
    last_step: list[tuple[int, float]] = []
    window.session.progress.connect(lambda s, t, eta: last_step.append((s, time.perf_counter())))
    window.session.step_info.connect(lambda info: step_times.append(info.elapsed / info.step) if info.step else None)

    # First run: loads the weights; then warm runs.
    stalls = []
    for i in range(args.runs + 1):
        probe.start()
        window.session.generate()
        wait_for(window.session.result_image)
        app.processEvents()
        stall = probe.stop()
        if i == 0:
            rows.append(("longest stall, first run (loads weights)", f"{stall:.0f} ms", label, "-"))
        else:
            stalls.append(stall)
    per_step = statistics.median(step_times[-args.steps :]) * 1000 if step_times else float("nan")
    size_text = f"{size}x{size}" if size else "native size"
    rows.append(("longest event-loop stall during a run", f"{max(stalls):.0f} ms",
                 f"worst of {len(stalls)} runs, {args.steps} steps of {per_step:.0f} ms, {size_text}, {PROBE_MS} ms probe", "<= 30 ms"))  # fmt: skip

    # Cancel latency: cancel right after step 3 reaches the UI; time to the cancelled signal, in
    # units of that run's own step time (step 2 -> step 3 arrival): the machine's speed drifts.
    latencies, ratios = [], []
    window.session.update_params(steps=max(args.steps, 40))
    for _ in range(args.runs):
        last_step.clear()
        window.session.generate()
        while not any(s >= 3 for s, _t in last_step):
            app.processEvents()
            time.sleep(0.001)
        arrivals = {s: t for s, t in last_step}
        t0 = time.perf_counter()
        window.session.cancel()
        wait_for(window.session.job_cancelled)
        latency = time.perf_counter() - t0
        latencies.append(latency * 1000)
        if 2 in arrivals and 3 in arrivals:
            ratios.append(latency / (arrivals[3] - arrivals[2]))
    rows.append(("Cancel -> cancelled signal", f"{statistics.median(latencies):.0f} ms",
                 f"{statistics.median(ratios):.2f} steps (max {max(ratios):.2f}) of the same run" if ratios else "",
                 "<= one step"))  # fmt: skip
    window.close()
    rows.append(ui_only_row(args.steps, args.runs))

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\nLatent Studio UI benchmark ({label} model, device {args.device}, {os.cpu_count()} CPUs, {threads} threads, "
          f"Qt platform {app.platformName()})\n")  # fmt: skip
    print(f"{'measure':<{w0}}  {'value':>{w1}}  {'detail':<{w2}}  bar")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * w2}  ---")
    for name, value, detail, bar in rows:
        print(f"{name:<{w0}}  {value:>{w1}}  {detail:<{w2}}  {bar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
