"""Autosave benchmark (a script, not a test). Prints a table.

  .venv/bin/python benchmarks/bench_autosave.py [--sizes 1024,2048] [--runs 3]

A photo-like image of each size with a painted mask, saved by a real Autosaver into a fresh folder each
run (so every file is written). Measured, the figures tests/ui/test_autosave.py used to bound by wall clock:
  * snapshot: the copy taken on the UI thread when the timer fires (bar: 250 ms at 2048: a copy of the
    mask, not an encode);
  * save: from the stroke's end to the `saved` signal (the snapshot, the encode, hashing and the atomic
    writes on the "studio-autosave" thread);
  * UI gap: the longest event-loop stall meanwhile, probed by a 5 ms timer (bar: 250 ms at 2048);
  * load: reading the save back (`load`), as a restore after a crash does.
Each is run --runs times; the table shows the medians and, for the UI gap, the worst.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6.QtCore import QEventLoop, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from studio.qimage import array_to_qimage  # noqa: E402
from studio.session.autosave import Autosaver, load  # noqa: E402
from studio.session.document import Document  # noqa: E402

PROBE_MS = 5


def photo(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    noise = np.random.default_rng(0).integers(-20, 20, (size, size, 3))
    return np.clip(np.stack([x // 8 % 256, y // 8 % 256, (x + y) // 16 % 256], -1) + noise, 0, 255).astype(np.uint8)


def paint(doc: Document, rect: tuple[int, int, int, int], value: int) -> None:
    m = doc.begin_stroke()
    x, y, w, h = rect
    m[y : y + h, x : x + w] = value
    doc.stroke_updated(rect)
    doc.end_stroke()


def one_run(size: int, folder: Path) -> dict[str, float]:
    doc = Document()
    saver = Autosaver(doc, folder, delay_ms=0)
    snapshot = Autosaver._snapshot
    took: dict[str, float] = {}

    def timed_snapshot(*a, **kw):
        t = time.perf_counter()
        try:
            return snapshot(saver, *a, **kw)
        finally:
            took["snapshot"] = time.perf_counter() - t

    saver._snapshot = timed_snapshot  # this instance only
    loop, gaps, last = QEventLoop(), [], [0.0]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    probe = QTimer()
    probe.setTimerType(Qt.TimerType.PreciseTimer)
    probe.setInterval(PROBE_MS)
    probe.timeout.connect(tick)
    failures: list[str] = []
    saver.saved.connect(lambda _: loop.quit())
    saver.failed.connect(lambda text: (failures.append(text), loop.quit()))
    QTimer.singleShot(600_000, loop.quit)
    doc.set_image(array_to_qimage(photo(size)))
    paint(doc, (size // 8, size // 10, size * 7 // 16, size // 3), 255)
    t0 = last[0] = time.perf_counter()
    probe.start()
    loop.exec()
    probe.stop()
    if failures:
        sys.exit(f"the save failed: {failures[0]}")
    took["save"] = time.perf_counter() - t0
    took["gap"] = max(gaps, default=0.0)
    t = time.perf_counter()
    if load(folder) is None:
        sys.exit("the save does not load")
    took["load"] = time.perf_counter() - t
    saver.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    QApplication.instance() or QApplication([])
    print(f"{'size':>6} {'snapshot ms':>12} {'save ms':>9} {'UI gap ms (worst)':>18} {'load ms':>9}")
    with tempfile.TemporaryDirectory(prefix="studio-bench-autosave-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            rows = [one_run(size, Path(tmp) / f"{size}-{i}") for i in range(args.runs)]

            def ms(key: str, rows=rows) -> float:
                return statistics.median(r[key] for r in rows) * 1000

            worst_gap = max(r["gap"] for r in rows) * 1000
            print(f"{size:>6} {ms('snapshot'):>12.1f} {ms('save'):>9.0f} {ms('gap'):>9.1f} ({worst_gap:>6.1f}) "
                  f"{ms('load'):>9.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
