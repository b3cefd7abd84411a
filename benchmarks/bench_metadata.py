"""Hostile-prompt benchmark (a script, not a test). Prints a table.

  .venv/bin/python benchmarks/bench_metadata.py [--sizes 100000,200000,400000,1000000] [--qt]

For each size, a prompt of that many characters in three shapes (one unbroken word; words without a comma;
`k: "\\", ` pairs, whose quoted values never close), timed through request_fields (the parser of a PNG's
`parameters` text) and, with --qt, shown in the prompt box (setPlainText and its layout). Both were
quadratic (a 200k-character word: 14 s, 1 MB: 335 s); each column should now grow with the size, and the
last column (time per character, ns) stay about flat.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from studio.core.metadata import request_fields  # noqa: E402

SHAPES = {
    "one word": lambda n: "a" * n,
    "words": lambda n: ("word " * (n // 5 + 1))[:n],
    "open quotes": lambda n: ('k: "\\", ' * (n // 8 + 1))[:n],
}


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,200000,400000,1000000")
    ap.add_argument("--qt", action="store_true", help="also time the prompt box (Qt)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    box = None
    if args.qt:
        from PySide6.QtWidgets import QApplication

        from studio.ui.prompt_panel import PromptEdit

        app = QApplication.instance() or QApplication([])
        box = PromptEdit("")
        box.resize(300, 120)
        box.show()

        def show(text: str) -> None:
            box.setPlainText(text)
            app.processEvents()

    print(f"{'shape':<12} {'chars':>9} {'parse s':>9} {'ns/char':>8}" + (f" {'box s':>8} {'ns/char':>8}" if box else ""))
    for name, make in SHAPES.items():
        for n in sizes:
            parse = timed(request_fields, make(n))  # the prompt alone: its line is read as a parameters line
            row = f"{name:<12} {n:>9} {parse:>9.3f} {parse / n * 1e9:>8.0f}"
            if box is not None:
                shown = timed(show, make(n))
                show("")
                row += f" {shown:>8.3f} {shown / n * 1e9:>8.0f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
