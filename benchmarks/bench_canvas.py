"""Mask painting benchmark (a script, not a test). Prints a table.

  .venv/bin/python benchmarks/bench_canvas.py [--size 2048] [--moves 200] [--brushes 64,200]

A 2048x2048 image in a shown canvas (offscreen without a display), the brush tool, drags of
`--moves` mouse-move events across the image (about 4 widget px, 8 image px each), for each brush
size, two ways:
  * rect: the canvas as it is: each move paints a segment, the overlay is recomputed only in the
    touched rectangle and only the widget area over it is repainted;
  * full: the old way: every mask change rebuilds the whole tinted overlay from the document's
    mask (mask_image -> fill -> setAlphaChannel) and repaints the whole canvas.
Measured:
  * per move, sent back to back: the event's handling plus the repaint it causes (processEvents);
  * while dragging at 125 Hz (a mouse: one move every 8 ms from a timer), the longest event-loop
    stall, probed by a 1 ms timer (bar: 16 ms, one frame at 60 Hz).
Each is run --repeat times; the table shows the medians (a busy machine shows in "worst").

  .venv/bin/python benchmarks/bench_canvas.py --tool paint --layers 5

(--tool paint also prints, per stroke segment of the "rect" way, the median and p95 of the compositing of its dirty
rectangle (the document's flatten of that window) and of the canvas's paint event, against the 16 ms frame.)

paints colour on a layer of a --layers stack instead (the image, semi-transparent image layers, and the active
paint layer in the middle with layers above it), three ways:
  * rect: as the document does it: each move flattens only its dirty rectangle, over a cached flatten of the
    layers below the active one, and the canvas copies and repaints only that rectangle;
  * nocache: the dirty rectangle, but every layer composited from the background each time;
  * full: the whole stack flattened on every move and the whole image copied and repainted (20 moves, 1 run).
"""

from __future__ import annotations

import argparse
import math
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
os.environ.setdefault("LATENT_STUDIO_CONFIG_DIR", tempfile.mkdtemp(prefix="studio-bench-config-"))

import numpy as np  # noqa: E402
from PySide6.QtCore import QEvent, QEventLoop, QObject, QPointF, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QImage, QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from studio.qimage import array_to_qimage  # noqa: E402
from studio.session.document import Document  # noqa: E402
from studio.session.layers import composite  # noqa: E402
from studio.ui.canvas import Canvas  # noqa: E402

BAR_MS = 16.0
MOVE_INTERVAL_MS = 8  # a 125 Hz mouse
PROBE_MS = 1


# ms per call while a drag is timed: wall clock, and this thread's CPU time (what a busy shared machine inflates
# least: other processes' load shows in the wall clock, not in the CPU time)
SEGMENTS: dict[str, list[float]] = {"composite": [], "paint event": [], "move": []}
CPU: dict[str, list[float]] = {"composite": [], "paint event": [], "move": []}


class Clock:
    def __init__(self, key: str) -> None:
        self.key = key

    def __enter__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.thread_time()

    def __exit__(self, *exc) -> None:
        SEGMENTS[self.key].append((time.perf_counter() - self.t0) * 1000)
        CPU[self.key].append((time.thread_time() - self.c0) * 1000)


def _timed(fn, key: str):
    def wrapper(*a, **k):
        with Clock(key):
            return fn(*a, **k)

    return wrapper


class TimedCanvas(Canvas):
    """The canvas, its paint event timed (offscreen: the painting into the backing store, no screen)."""

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        with Clock("paint event"):
            super().paintEvent(event)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


class PaintCounter(QObject):
    def __init__(self, widget):
        super().__init__()
        self.count, self.area = 0, 0
        widget.installEventFilter(self)

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.Paint:
            self.count += 1
            r = event.rect()
            self.area += r.width() * r.height()
        return False


def test_image(size: int) -> QImage:
    ys, xs = np.mgrid[0:size, 0:size]
    rgb = np.stack([(xs * 255 // size), (ys * 255 // size), ((xs ^ ys) & 255)], axis=-1).astype(np.uint8)
    return array_to_qimage(rgb)


def path(canvas: Canvas, size: int, moves: int) -> list[QPointF]:
    """A wavy drag across the middle 80% of the image, one widget point per move."""
    pts = []
    for i in range(moves + 1):
        t = i / moves
        x = size * (0.1 + 0.8 * t)
        y = size * (0.5 + 0.1 * math.sin(t * 2 * math.pi))
        pts.append(canvas.from_image(x, y))
    return pts


def mouse(kind: QEvent.Type, pos: QPointF, button: Qt.MouseButton, buttons: Qt.MouseButton) -> QMouseEvent:
    return QMouseEvent(kind, pos, pos, button, buttons, Qt.KeyboardModifier.NoModifier)


def use_old_way(canvas: Canvas, doc: Document, old: bool) -> None:
    """Swap the canvas's rectangle update for the old full rebuild (or back)."""

    def full_rebuild(_rect=None):
        mask = doc.mask_image()
        if mask is None:
            canvas._overlay = None
        else:
            overlay = QImage(mask.size(), QImage.Format.Format_ARGB32_Premultiplied)
            overlay.fill(Canvas.MASK_TINT)
            overlay.setAlphaChannel(mask)
            canvas._overlay = overlay
        canvas.update()

    if old:
        doc.mask_changed.disconnect(canvas._on_mask_changed)
        doc.mask_changed.connect(full_rebuild)
        canvas._bench_old = full_rebuild
    else:
        doc.mask_changed.disconnect(canvas._bench_old)
        doc.mask_changed.connect(canvas._on_mask_changed)


def use_way(canvas: Canvas, doc: Document, way: str) -> None:
    """Colour painting: the document's dirty-rectangle redraw ("rect"), or a slower one for comparison."""
    doc.__dict__.pop("_redraw", None)  # back to the method
    if way == "nocache":
        plain = doc._redraw
        doc._redraw = lambda rect, layers, base: plain(rect, doc.layers, None)  # type: ignore[method-assign]
    elif way == "full":
        w, h = doc.size()

        def full(rect, layers, base):
            doc._flat[...] = composite(doc.layers, (w, h))
            doc.pixels_changed.emit((0, 0, w, h))

        doc._redraw = full  # type: ignore[method-assign]


def layered(size: int, n: int) -> Document:
    """An image and n - 1 layers over it: half-transparent gradients, and the paint layer (active) in the middle."""
    doc = Document()
    doc.set_image(test_image(size))
    ys, xs = np.mgrid[0:size, 0:size]
    for i in range(1, n):
        if i == n // 2:
            doc.add_layer("Paint")
            continue
        rgba = np.empty((size, size, 4), np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = (xs * (i + 1)) % 256, (ys * 3) % 256, 40 * i
        rgba[..., 3] = ((xs + ys) // 16 % 2) * 160  # a checkerboard of half-covered tiles
        doc.add_image_layer(array_to_qimage(rgba), name=f"Layer {i}")
        doc.set_layer_opacity(doc.active, 0.8)
    doc.set_active(next(i for i, la in enumerate(doc.layers) if la.name == "Paint"))
    doc.history.clear()
    return doc


def reset(doc: Document, filled: bool) -> None:
    """No mask for the brush; a full one for the eraser to erase. Colour painting: the strokes undone."""
    if doc.layers and len(doc.layers) > 1:
        while doc.history.undo_label() in ("Paint", "Erase paint"):
            doc.undo()
        doc.history.clear()
        QApplication.processEvents()
        return
    w, h = doc.size()
    doc.set_mask(np.full((h, w), 255, np.uint8) if filled else None)
    doc.history.clear()
    QApplication.processEvents()


def back_to_back(canvas: Canvas, doc: Document, pts: list[QPointF], counter: PaintCounter) -> dict:
    reset(doc, canvas.tool() == "eraser")
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseButtonPress, pts[0], left, left))
    QApplication.processEvents()
    counter.count = counter.area = 0
    for v in (*SEGMENTS.values(), *CPU.values()):
        v.clear()
    for p in pts[1:]:
        with Clock("move"):
            QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseMove, p, none, left))
            QApplication.processEvents()  # the repaint the move asked for
    times = list(SEGMENTS["move"])
    QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseButtonRelease, pts[-1], left, none))
    QApplication.processEvents()
    assert doc.history.can_undo() and doc.history.undo_label() in ("Brush stroke", "Erase", "Paint", "Erase paint")
    times.sort()
    return {
        "segments": {k: list(v) for k, v in SEGMENTS.items()},
        "cpu": {k: list(v) for k, v in CPU.items()},
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "p95": times[int(0.95 * (len(times) - 1))],
        "max": times[-1],
        "paints": counter.count / len(times),
        "area": counter.area / max(1, counter.count),
    }


def timed_drag(canvas: Canvas, doc: Document, pts: list[QPointF]) -> float:
    """Moves from a timer every 8 ms while a 1 ms probe records the longest gap of the event loop."""
    reset(doc, canvas.tool() == "eraser")
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseButtonPress, pts[0], left, left))
    loop = QEventLoop()
    state = {"i": 1, "last": time.perf_counter(), "stall": 0.0}

    def probe():
        now = time.perf_counter()
        state["stall"] = max(state["stall"], (now - state["last"]) * 1000)
        state["last"] = now

    def step():
        i = state["i"]
        if i >= len(pts):
            QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseButtonRelease, pts[-1], left, none))
            mover.stop()
            prober.stop()
            loop.quit()
            return
        QApplication.sendEvent(canvas, mouse(QEvent.Type.MouseMove, pts[i], none, left))
        state["i"] = i + 1

    mover, prober = QTimer(), QTimer()
    mover.setTimerType(Qt.TimerType.PreciseTimer)
    prober.setTimerType(Qt.TimerType.PreciseTimer)
    mover.timeout.connect(step)
    prober.timeout.connect(probe)
    prober.start(PROBE_MS)
    mover.start(MOVE_INTERVAL_MS)
    state["last"] = time.perf_counter()
    loop.exec()
    return state["stall"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="image width and height")
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--brushes", default="64,200", help="brush sizes in image px, comma-separated")
    ap.add_argument("--widget", default="1100x1000", help="canvas size WxH")
    ap.add_argument("--tool", default="brush", choices=["brush", "eraser", "paint", "paint_eraser"],
                    help="the eraser erases a filled mask; paint: colour on a layer of a --layers stack")
    ap.add_argument("--layers", type=int, default=5, help="with --tool paint: the layers in the stack")
    ap.add_argument("--ways", default="rect,nocache,full", help="with --tool paint: which ways to run (rect first)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the table shows their medians")
    args = ap.parse_args()

    app = QApplication.instance() or QApplication(sys.argv)
    colour = args.tool in ("paint", "paint_eraser")
    if colour:
        doc = layered(args.size, args.layers)
    else:
        doc = Document()
        doc.set_image(test_image(args.size))
    if colour:  # the dirty rectangle's flatten, timed (the document calls composite once per segment)
        import studio.session.document as document_module

        document_module.composite = _timed(document_module.composite, "composite")  # type: ignore[assignment]
    canvas = TimedCanvas()
    ww, wh = (int(v) for v in args.widget.split("x"))
    canvas.resize(ww, wh)
    canvas.set_image(doc.image)
    canvas.set_document(doc)
    canvas.set_tool(args.tool)
    canvas.show()
    for _ in range(5):
        app.processEvents()
    counter = PaintCounter(canvas)
    pts = path(canvas, args.size, args.moves)
    scale = canvas.image_rect().width() / args.size
    step = statistics.fmean(math.hypot(b.x() - a.x(), b.y() - a.y()) for a, b in zip(pts, pts[1:], strict=False))
    print(
        f"{args.tool}: {args.size}x{args.size} image in a {ww}x{wh} canvas ({os.environ.get('QT_QPA_PLATFORM') or 'native'}), "
        f"shown at {scale:.3f}x; {args.moves} moves of {step:.1f} widget px ({step / scale:.1f} image px); "
        f"bar {BAR_MS:.0f} ms" + (f"; {len(doc.layers)} layers, painting layer {doc.active + 1}" if colour else "")
    )
    header = (
        f"{'brush':>6} {'way':>5} {'mean ms':>8} {'p95 ms':>7} {'max ms':>7} {'paints':>7} {'px/paint':>9} "
        f"{'stall@125Hz':>12} {'worst':>6} {'<= bar':>7}"
    )
    print(header)
    print("-" * len(header))
    ratios: list = []
    seg_rows: list = []
    for size in (int(s) for s in args.brushes.split(",")):
        canvas.set_brush_size(size)
        rows = {}
        for way in args.ways.split(",") if colour else ("rect", "full"):
            if colour:
                use_way(canvas, doc, way)
            elif way == "full":
                use_old_way(canvas, doc, True)
            few = colour and way == "full"  # seconds per move: a short drag, once
            moves = pts[:21] if few else pts
            back_to_back(canvas, doc, pts[:20] if not few else pts[:3], counter)  # warm up
            runs = []
            for _ in range(1 if few else args.repeat):
                r = back_to_back(canvas, doc, moves, counter)
                r["stall"] = timed_drag(canvas, doc, moves)
                runs.append(r)
            segs = {k: [t for run in runs for t in run["segments"][k]] for k in SEGMENTS}
            segs.update({f"cpu {k}": [t for run in runs for t in run["cpu"][k]] for k in CPU})
            r = {k: statistics.median(run[k] for run in runs) for k in runs[0] if k not in ("segments", "cpu")}
            if way == "rect":
                rows["segments"] = segs
            r["worst"] = max(run["stall"] for run in runs)
            if colour:
                use_way(canvas, doc, "rect")
            elif way == "full":
                use_old_way(canvas, doc, False)
            rows[way] = r
            ok = "yes" if max(r["max"], r["stall"]) <= BAR_MS else "NO"
            print(
                f"{size:>6} {way:>5} {r['mean']:>8.2f} {r['p95']:>7.2f} {r['max']:>7.2f} {r['paints']:>7.2f} "
                f"{r['area']:>9.0f} {r['stall']:>12.1f} {r['worst']:>6.1f} {ok:>7}"
            )
        if "full" in rows:
            ratios.append(
                (size, rows["full"]["mean"] / rows["rect"]["mean"], rows["full"]["stall"] / rows["rect"]["stall"])
            )
        seg_rows.append((size, rows["rect"], rows.pop("segments")))
    print(f"(medians of {args.repeat} runs; worst: the longest stall of any run; px/paint: widget px per repaint)")
    for size, mean_ratio, stall_ratio in ratios:
        print(
            f"brush {size}: the full rebuild costs {mean_ratio:.1f}x per move, its stalls are {stall_ratio:.1f}x longer"
        )
    if colour:
        print(f"\nper stroke segment (the rect way, all runs): ms against the {BAR_MS:.0f} ms frame")
        head = (f"{'brush':>6} {'part':>22} {'n':>5} {'median':>7} {'p95':>7} {'max':>7} {'<= bar':>7} "
                f"{'cpu med':>8} {'cpu p95':>8}")  # fmt: skip
        print(head)
        print("-" * len(head))
        names = {"move": "move (event + repaint)", "composite": "composite dirty rect", "paint event": "paint event"}
        for size, _r, segs in seg_rows:
            for key, name in names.items():
                v, c = segs[key], segs[f"cpu {key}"]
                med, p95, mx = statistics.median(v) if v else float("nan"), pct(v, 0.95), max(v or [0])
                print(f"{size:>6} {name:>22} {len(v):>5} {med:>7.2f} {p95:>7.2f} {mx:>7.2f} "
                      f"{'yes' if p95 <= BAR_MS else 'NO':>7} {statistics.median(c) if c else 0:>8.2f} "
                      f"{pct(c, 0.95):>8.2f}")  # fmt: skip
    canvas.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
