"""The autosave: the canvas, its mask and the undo history survive a crash (real files, real pixels)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from studio.qimage import array_to_qimage, qimage_to_array
from studio.session.autosave import Autosaver, default_folder, discard, load, pending_restore, writer
from studio.session.autosave.manifest import clean_up, names_in
from studio.session.autosave.writer import Writer
from studio.session.document import Document
from studio.session.history import ImageEdit, MaskEdit

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 120  # how long a test waits for an event before it calls it lost: a hang guard, not a speed bar
WAIT_MS = WAIT_S * 1000


def make_image(w: int, h: int, seed: int) -> QImage:
    return array_to_qimage(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels(img: QImage | None) -> np.ndarray | None:
    return None if img is None else qimage_to_array(img, alpha=True)


def paint(doc: Document, rect, value: int) -> None:
    """One brush stroke: in-place writes into the working mask, as the canvas does."""
    m = doc.begin_stroke()
    x, y, w, h = rect
    m[y : y + h, x : x + w] = value
    doc.stroke_updated(rect)
    doc.end_stroke()


def mask_copy(doc: Document) -> np.ndarray | None:
    return None if doc.mask is None else doc.mask.copy()


def manifest(folder: Path, name: str = "manifest.json") -> dict | None:
    try:
        return json.loads((folder / "current" / name).read_text())
    except (OSError, ValueError):
        return None


def saved_with(folder: Path, entries: int, cursor: int | None = None, clean: bool | None = None):
    def check() -> bool:
        m = manifest(folder) or {}
        assert len(m.get("entries", ())) == entries
        assert cursor is None or m.get("cursor") == cursor
        assert clean is None or m.get("clean") is clean

    return check


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool((a == b).all())


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))
    return default_folder()


@pytest.fixture
def savers(qtbot):
    """Autosavers, closed after the test (a test may leave one open: a simulated crash)."""
    made = []

    def make(doc, folder, **kw):
        made.append(s := Autosaver(doc, folder, **kw))
        return s

    yield make
    for s in made:
        s.close()


def test_default_folder_honours_the_data_dir_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "d"))
    assert default_folder() == tmp_path / "d" / "autosave"
    monkeypatch.delenv("LATENT_STUDIO_DATA_DIR")
    assert default_folder().name == "autosave" and "latent-studio" in str(default_folder())


def test_a_crash_restores_the_image_the_mask_and_the_undo_history(qtbot, folder, savers, tmp_path):
    doc = Document()
    saver = savers(doc, folder, delay_ms=100)
    img1, img2 = make_image(160, 120, 1), make_image(160, 120, 2)
    started = time.time()
    doc.set_image(img1, record="Open image")
    paint(doc, (20, 10, 40, 30), 255)  # creates the mask
    mask_a = mask_copy(doc)
    paint(doc, (50, 30, 60, 50), 128)  # a patch
    mask_ab = mask_copy(doc)
    doc.set_image(img2, path=tmp_path / "result.png", caption="a red fox", record="Result")
    qtbot.waitUntil(saved_with(folder, entries=4, cursor=4, clean=False), timeout=WAIT_MS)

    # No close(): as far as the disk knows, the studio died here.
    info = pending_restore(folder)
    assert info is not None
    assert (info.size, info.undo_steps, info.redo_steps, info.has_mask) == ((160, 120), 4, 0, True)
    assert info.path == tmp_path / "result.png" and info.caption == "a red fox"
    assert started <= info.saved_at <= time.time() and info.bytes_on_disk > 0

    state, entries, cursor = load(folder)
    fresh = Document()
    fresh.restore(state, entries, cursor)
    assert same(pixels(fresh.image), pixels(img2))
    assert same(fresh.mask, mask_ab)
    assert (fresh.path, fresh.caption) == (tmp_path / "result.png", "a red fox")
    assert [type(e) for e in fresh.history.entries] == [ImageEdit, MaskEdit, MaskEdit, ImageEdit]
    assert [e.label for e in fresh.history.entries] == ["Open image", "Brush stroke", "Brush stroke", "Result"]
    assert [getattr(e, "rect", "-") for e in fresh.history.entries] == ["-", None, (50, 30, 60, 50), "-"]
    assert fresh.history.cursor == 4

    # Undo walks back through the exact earlier arrays, and redo comes forward again.
    assert fresh.undo() == "Result"
    assert same(pixels(fresh.image), pixels(img1)) and same(fresh.mask, mask_ab) and fresh.caption == ""
    assert fresh.undo() == "Brush stroke"
    assert same(fresh.mask, mask_a)
    assert fresh.undo() == "Brush stroke"
    assert fresh.mask is None
    assert fresh.undo() == "Open image"
    assert fresh.image is None
    assert fresh.undo() == ""
    for _ in range(4):
        fresh.redo()
    assert same(pixels(fresh.image), pixels(img2)) and same(fresh.mask, mask_ab)

    # A clean shutdown: nothing to offer next time (the files stay until the next session saves).
    assert saver.close()
    assert manifest(folder)["clean"] is True
    assert pending_restore(folder) is None
    assert load(folder) is not None

    # The next session saves the restored document without rewriting its images (content-addressed).
    # A file damaged on disk since is checked and written again.
    images = {p.name: p.stat().st_ino for p in (folder / "current").glob("img-*.png")}
    patch_file = manifest(folder)["entries"][2]["after"]
    (folder / "current" / patch_file).write_bytes(b"damaged")
    again = savers(fresh, folder)
    assert again.enabled and again.flush()
    assert {p.name: p.stat().st_ino for p in (folder / "current").glob("img-*.png")} == images
    assert manifest(folder)["entries"][2]["after"] == patch_file
    assert same(load(folder)[1][2].after, entries[2].after)
    assert again.close() and pending_restore(folder) is None


def test_saves_are_written_on_the_autosave_thread_one_at_a_time(qtbot, folder, savers, monkeypatch):
    seen, active, most, submitted = [], [0], [0], []
    writing, disk = threading.Event(), threading.Event()  # the first write holds the disk until the test lets go
    real_write, real_submit = Writer.write, Writer.submit

    def write(self, job):
        seen.append(threading.current_thread().name)
        active[0] += 1
        most[0] = max(most[0], active[0])
        try:
            writing.set()
            assert disk.wait(WAIT_S)  # a slow disk: later saves must wait and coalesce
            return real_write(self, job)
        finally:
            active[0] -= 1

    def submit(self, job):
        submitted.append(job)
        real_submit(self, job)

    monkeypatch.setattr(Writer, "write", write)
    monkeypatch.setattr(Writer, "submit", submit)
    doc = Document()
    saves = []
    saver = savers(doc, folder, delay_ms=0)
    saver.saved.connect(saves.append)
    try:
        doc.set_image(make_image(64, 48, 3))
        paint(doc, (0, 0, 8, 8), 255)
        qtbot.waitUntil(writing.is_set, timeout=WAIT_MS)
        for i in range(1, 5):  # each stroke's save is taken while the first one is still being written
            paint(doc, (i * 10, 0, 8, 8), 255)
            qtbot.waitUntil(lambda n=i: len(submitted) > n, timeout=WAIT_MS)
    finally:
        disk.set()
    qtbot.waitUntil(saved_with(folder, entries=5), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    # `saved` reaches the UI thread as a queued event after the writer is idle: wait for it, not for idleness
    qtbot.waitUntil(lambda: len(saves) >= 2, timeout=WAIT_MS)
    assert set(seen) == {"studio-autosave"} and threading.current_thread().name not in seen
    assert most[0] == 1  # never two writers
    assert len(submitted) == 5 and [j.result for j in submitted[1:4]] == ["superseded"] * 3
    assert len(seen) == 2  # the first save, then only the newest of the four that queued up behind it
    assert len(saves) == 2 and saves == sorted(saves)
    state, entries, cursor = load(folder)
    assert len(entries) == 5 and same(state.mask, doc.mask)


def test_a_2048_document_saves_off_the_ui_thread(qtbot, folder, savers, monkeypatch):
    """The snapshot copies (no encode, no hash on the UI thread) and the event loop runs while the writer
    encodes and writes. How long each takes is a figure of benchmarks/bench_autosave.py."""
    threads: dict[str, set[str]] = {"write": set(), "encode": set(), "hash": set()}
    encoded, disk = threading.Event(), threading.Event()  # the writer holds its encoded PNG until the test lets go
    real_write = Writer.write

    def write(self, job):
        threads["write"].add(threading.current_thread().name)
        return real_write(self, job)

    def on_thread(kind, fn, hold=False):
        def spy(*a, **kw):
            threads[kind].add(threading.current_thread().name)
            out = fn(*a, **kw)
            if hold:
                encoded.set()
                assert disk.wait(WAIT_S)
            return out

        return spy

    monkeypatch.setattr(Writer, "write", write)
    monkeypatch.setattr(writer, "png_bytes", on_thread("encode", writer.png_bytes, hold=True))
    monkeypatch.setattr(writer, "npz_bytes", on_thread("encode", writer.npz_bytes))
    monkeypatch.setattr(writer, "image_name", on_thread("hash", writer.image_name))
    monkeypatch.setattr(writer, "mask_name", on_thread("hash", writer.mask_name))
    doc = Document()
    saver = savers(doc, folder, delay_ms=0)
    y, x = np.mgrid[0:2048, 0:2048]
    noise = np.random.default_rng(0).integers(-20, 20, (2048, 2048, 3))
    photo = np.clip(np.stack([x // 8 % 256, y // 8 % 256, (x + y) // 16 % 256], -1) + noise, 0, 255).astype(np.uint8)
    try:
        doc.set_image(array_to_qimage(photo))
        paint(doc, (300, 200, 900, 700), 255)
        qtbot.waitUntil(encoded.is_set, timeout=WAIT_MS)
        ticks = []  # the event loop runs while the writer is in the middle of the save
        QTimer.singleShot(0, lambda: ticks.append(disk.is_set()))
        qtbot.waitUntil(lambda: bool(ticks), timeout=WAIT_MS)
        assert ticks == [False] and manifest(folder) is None
    finally:
        disk.set()
    qtbot.waitUntil(lambda: manifest(folder) is not None and not saver.is_busy(), timeout=WAIT_MS)
    main = threading.current_thread().name
    assert threads["write"] == threads["encode"] == threads["hash"] == {"studio-autosave"} != {main}
    state, _, _ = load(folder)
    assert same(qimage_to_array(state.image), photo) and same(state.mask, doc.mask)


def test_a_broken_save_falls_back_to_the_last_valid_one_and_never_raises(qtbot, folder, savers, caplog):
    caplog.set_level(logging.WARNING, logger="studio.session.autosave")
    doc = Document()
    saver = savers(doc, folder, delay_ms=50)
    doc.set_image(make_image(80, 60, 4))
    paint(doc, (5, 5, 20, 20), 255)
    mask_a = mask_copy(doc)
    qtbot.waitUntil(saved_with(folder, entries=1), timeout=WAIT_MS)
    paint(doc, (30, 20, 30, 30), 77)
    qtbot.waitUntil(saved_with(folder, entries=2), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    current = folder / "current"
    good = (current / "manifest.json").read_bytes()
    assert manifest(folder, "manifest.prev.json")["entries"] == manifest(folder)["entries"][:1]

    # A manifest cut short (a crash of the disk mid-write): the previous one is used.
    (current / "manifest.json").write_bytes(good[: len(good) // 2])
    state, entries, cursor = load(folder)
    assert (len(entries), cursor) == (1, 1) and same(state.mask, mask_a)
    assert pending_restore(folder).undo_steps == 1
    assert "manifest.json is unreadable" in caplog.text

    # A file of the newest save missing: the previous save, which does not need it.
    (current / "manifest.json").write_bytes(good)
    newest = set(names_in(json.loads(good))) - set(names_in(manifest(folder, "manifest.prev.json")))
    assert newest
    for name in newest:
        (current / name).unlink()
    state, entries, cursor = load(folder)
    assert (len(entries), cursor) == (1, 1) and same(state.mask, mask_a)

    # The newest stroke's patch broken and no previous manifest: the current image and mask, without
    # the history that led to them (undo would need that patch).
    (current / "manifest.prev.json").unlink()
    (current / "manifest.json").write_bytes(good)
    for name in newest:
        (current / name).unlink(missing_ok=True)
    assert load(folder) is None  # the current mask is among the newest files: nothing sound to restore
    entry_files = set(names_in(json.loads(good)["entries"][1])) - set(names_in(json.loads(good)["current"]))
    saver.flush()  # puts every file back (and a manifest.prev.json)
    (current / "manifest.prev.json").unlink()
    (current / "manifest.json").write_bytes(good)
    for name in entry_files:
        (current / name).write_bytes(b"not a zip file")
    state, entries, cursor = load(folder)
    assert same(pixels(state.image), pixels(doc.image)) and same(state.mask, doc.mask)
    assert (entries, cursor) == ([], 0)
    assert "history entry 1 does not load" in caplog.text
    for name in entry_files:
        (current / name).unlink()

    # The image itself gone, or garbage everywhere: None, logged, no exception.
    for p in current.glob("img-*.png"):
        p.unlink()
    assert load(folder) is None
    (current / "manifest.json").write_text('{"format": "latent-studio-autosave", "version": 99}')
    assert load(folder) is None and pending_restore(folder) is None
    assert "unknown manifest version" in caplog.text
    assert load(folder / "nowhere") is None and pending_restore(folder / "nowhere") is None

    # The live autosaver repairs it all with its next save (its files vanished: it copies them again).
    (current / ".manifest.json.999999.1.tmp").write_text("half a manifest from a crashed writer")
    paint(doc, (0, 40, 10, 10), 255)
    qtbot.waitUntil(saved_with(folder, entries=3), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    state, entries, cursor = load(folder)
    assert same(pixels(state.image), pixels(doc.image)) and same(state.mask, doc.mask) and len(entries) == 3
    assert not list(current.glob("*.tmp"))
    referenced = {"manifest.json", "manifest.prev.json", *names_in(manifest(folder))}
    referenced |= set(names_in(manifest(folder, "manifest.prev.json") or {}))
    assert {p.name for p in current.iterdir()} <= referenced


def test_the_clean_up_spares_the_temporary_files_of_writes_in_flight(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"current": {"image": "img-" + "a" * 24 + ".png"}}))
    kept = ["manifest.json", "img-" + "a" * 24 + ".png", ".mask-x.npz.0123456789ab.tmp"]
    for name in [*kept, "mask-" + "b" * 24 + ".npz", ".manifest.json.999999.1.tmp", ".img-y.png.ba9876543210.tmp"]:
        (tmp_path / name).touch()
    clean_up(tmp_path, in_flight={"mask-x.npz"})  # this process is writing mask-x.npz now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_failed_write_keeps_the_previous_save_and_reports_it(qtbot, folder, savers, monkeypatch):
    doc = Document()
    saver = savers(doc, folder, delay_ms=0)
    failures = []
    saver.failed.connect(failures.append)
    doc.set_image(make_image(40, 30, 5))
    paint(doc, (0, 0, 10, 10), 255)
    qtbot.waitUntil(saved_with(folder, entries=1), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    real = writer.write_file
    calls = []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(writer, "write_file", full_disk)
    paint(doc, (10, 10, 10, 10), 255)
    qtbot.waitUntil(lambda: bool(failures), timeout=WAIT_MS)
    assert "No space left" in failures[0]
    assert len(manifest(folder)["entries"]) == 1 and load(folder) is not None
    paint(doc, (20, 10, 10, 10), 255)  # the next change saves everything
    qtbot.waitUntil(saved_with(folder, entries=3), timeout=WAIT_MS)
    assert same(load(folder)[0].mask, doc.mask)


def test_an_empty_document_saves_nothing_and_clears_an_old_save(qtbot, folder, savers):
    doc = Document()
    saver = savers(doc, folder, delay_ms=0)
    doc.set_image(None)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    assert not (folder / "current").exists()
    doc.set_image(make_image(32, 32, 6))
    paint(doc, (0, 0, 4, 4), 255)
    qtbot.waitUntil(saved_with(folder, entries=1), timeout=WAIT_MS)
    doc.set_image(None)  # the canvas closed: no image, nothing to keep
    qtbot.waitUntil(lambda: not (folder / "current").exists(), timeout=WAIT_MS)
    assert pending_restore(folder) is None and load(folder) is None


def test_a_steady_stream_of_strokes_still_saves_every_few_seconds(qtbot, folder, savers):
    doc = Document()
    saver = savers(doc, folder, delay_ms=300, max_wait_ms=600)
    saves = []
    saver.saved.connect(saves.append)
    doc.set_image(make_image(64, 64, 7))
    for i in range(20):  # a stroke every 100 ms for 2 s (longer on a slow machine): the 300 ms quiet never comes
        paint(doc, (i % 8 * 8, i // 8 * 8, 6, 6), 255)
        qtbot.wait(100)
    stream_end = time.time()
    qtbot.waitUntil(saved_with(folder, entries=20), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    during = [t for t in saves if t < stream_end]  # snapshots taken while the strokes kept coming
    assert len(during) >= 2, saves


def test_the_history_on_disk_is_bounded(qtbot, folder, savers):
    doc = Document()
    savers(doc, folder, delay_ms=0, keep_entries=5)
    doc.set_image(make_image(100, 20, 8))
    masks = []
    for i in range(8):
        paint(doc, (i * 12, 2, 10, 10), 100 + i)
        masks.append(mask_copy(doc))
    qtbot.waitUntil(saved_with(folder, entries=5, cursor=5), timeout=WAIT_MS)
    m = manifest(folder)
    assert (m["dropped"], m["total"]) == (3, 8)
    info = pending_restore(folder)
    assert (info.undo_steps, info.dropped_steps) == (5, 3)
    fresh = Document()
    fresh.restore(*load(folder))
    for k in range(7, 2, -1):
        assert same(fresh.mask, masks[k])
        assert fresh.undo() == "Brush stroke"
    assert same(fresh.mask, masks[2]) and fresh.undo() == ""

    # After undoing, the kept run moves with the cursor and keeps the redo steps too.
    for _ in range(4):
        doc.undo()
    qtbot.waitUntil(saved_with(folder, entries=5, cursor=4), timeout=WAIT_MS)

    # A byte budget: each entry is two 10x10 patches (200 bytes); 600 bytes keep three.
    budget = Document()
    folder2 = folder.parent / "budget"
    savers(budget, folder2, delay_ms=0, keep_bytes=600)
    budget.set_image(make_image(100, 20, 9))
    paint(budget, (0, 0, 100, 20), 1)  # the whole new mask: 2000 bytes, over the budget alone
    for i in range(5):
        paint(budget, (i * 12, 2, 10, 10), 50 + i)
    qtbot.waitUntil(saved_with(folder2, entries=3, cursor=3), timeout=WAIT_MS)
    assert manifest(folder2)["dropped"] == 3


def test_close_during_a_stroke_keeps_the_mask_from_before_it(qtbot, folder, savers):
    doc = Document()
    saver = savers(doc, folder, delay_ms=10_000)
    doc.set_image(make_image(50, 50, 10))
    paint(doc, (0, 0, 10, 10), 255)
    before = mask_copy(doc)
    m = doc.begin_stroke()
    m[20:40, 20:40] = 255
    doc.stroke_updated((20, 20, 20, 20))
    assert saver.close()
    doc.end_stroke()
    assert manifest(folder)["clean"] is True
    state, entries, cursor = load(folder)
    assert same(state.mask, before) and len(entries) == cursor == 1


def test_a_discard_removes_the_save(qtbot, folder, savers):
    doc = Document()
    saver = savers(doc, folder, delay_ms=0)
    doc.set_image(make_image(20, 20, 11))
    paint(doc, (0, 0, 5, 5), 255)
    qtbot.waitUntil(saved_with(folder, entries=1), timeout=WAIT_MS)
    saver.discard()
    assert load(folder) is None and pending_restore(folder) is None
    paint(doc, (5, 5, 5, 5), 255)  # the autosaver writes everything again
    qtbot.waitUntil(saved_with(folder, entries=2), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not saver.is_busy(), timeout=WAIT_MS)
    assert same(load(folder)[0].mask, doc.mask)
    assert saver.close()
    assert discard(folder) and not (folder / "current").exists() and load(folder) is None


# -- a real kill -9 --------------------------------------------------------------------------------

KILLED = textwrap.dedent(
    """
    import os, signal, sys, time
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    import numpy as np
    from PySide6.QtWidgets import QApplication
    app = QApplication([])
    from studio.qimage import array_to_qimage
    from studio.session.autosave import Autosaver
    from studio.session.document import Document

    folder, mode = sys.argv[1], sys.argv[2]
    doc = Document()
    saver = Autosaver(doc, folder, delay_ms=100)
    saves = []
    saver.saved.connect(saves.append)
    doc.set_image(array_to_qimage(np.random.default_rng(7).integers(0, 256, (96, 128, 3), dtype=np.uint8)),
                  record="Open image")
    m = doc.begin_stroke(); m[10:40, 20:60] = 255; doc.stroke_updated((20, 10, 40, 30)); doc.end_stroke()
    if mode == "stroke":  # the next stroke starts before the save fires, and is still going at the kill
        m = doc.begin_stroke(); m[50:90, 70:120] = 200; doc.stroke_updated((70, 50, 50, 40))
    deadline = time.monotonic() + 300  # a hang guard
    while not saves:
        assert time.monotonic() < deadline, "no autosave"
        app.processEvents()
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def run_killed(folder: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(folder), mode], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -9, proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("mode", ["idle", "stroke"])
def test_kill_9_loses_at_most_the_stroke_in_progress(qtbot, folder, mode):
    run_killed(folder, mode)
    info = pending_restore(folder)
    assert info is not None and (info.size, info.undo_steps) == ((128, 96), 2)
    state, entries, cursor = load(folder)
    expected = np.zeros((96, 128), np.uint8)
    expected[10:40, 20:60] = 255  # the finished stroke; the one in progress at the kill is not there
    image = np.random.default_rng(7).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert same(qimage_to_array(state.image), image) and same(state.mask, expected)
    assert [e.label for e in entries] == ["Open image", "Brush stroke"] and cursor == 2
    doc = Document()
    doc.restore(state, entries, cursor)
    assert doc.undo() == "Brush stroke" and doc.mask is None
    assert doc.undo() == "Open image" and doc.image is None


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_folder_in_use_by_another_studio_is_left_alone(qtbot, folder, savers):
    import fcntl

    run_killed(folder, "idle")  # an unclean save, whose process is gone
    with open(folder / "lock", "a+b") as other:  # another running studio holds the folder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert pending_restore(folder) is None
        assert not discard(folder)
        doc = Document()
        saver = savers(doc, folder, delay_ms=0)
        assert not saver.enabled
        doc.set_image(None)  # would clear the save if this autosaver wrote
        QApplication.processEvents()
        assert not saver.is_busy() and load(folder) is not None
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    assert pending_restore(folder) is not None
    assert discard(folder) and pending_restore(folder) is None


def test_loading_imports_no_torch(qtbot, folder):
    run_killed(folder, "idle")
    code = (
        "import sys; from studio.session.autosave import load, pending_restore; "
        f"r = load({str(folder)!r}); i = pending_restore({str(folder)!r}); "
        "assert r is not None and i is not None and len(r[1]) == 2; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
