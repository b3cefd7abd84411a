"""Autosave: the document (image, mask and undo history) survives a crash.

`Autosaver(document, folder)` watches `document.changed`. Each change (re)starts a single-shot
timer (`delay_ms`, 1.5 s; a steady stream of changes still saves every `max_wait_ms`, 5 s). When it
fires, the document is snapshotted on the UI thread (cheap: QImages are shallow, copy-on-write
copies, masks are copied with numpy) and written on one background thread, "studio-autosave". A
save that comes while one is being written waits for it; saves that pile up meanwhile coalesce
into the newest, so there is never more than one writer and the UI thread never waits on the disk
(only `flush()` and `close()` do, on purpose). History entries are copied when they first appear
(on the `changed` that follows their push), so later in-place strokes cannot alter what is saved.

During a stroke the saved mask is the one from before the stroke (the stroke is not in the
history yet), so a kill -9 in the middle of a stroke or a run loses at most that stroke.

On disk (`folder` is `default_folder()` unless told otherwise)::

    folder/lock                  held (flock / msvcrt) by the live Autosaver of that folder
    folder/current/manifest.json the document: see below; written last, atomically
    folder/current/manifest.prev.json   the manifest before it (the fallback)
    folder/current/img-<hash>.png       an image, lossless PNG (any number of states share one)
    folder/current/mask-<hash>.npz      a mask or a stroke's patch: HxW uint8, `np.savez_compressed`
                                        under the key "mask"

Data files are content-addressed (`<hash>` is 24 hex digits of BLAKE2b over the pixels and their
shape/format), so they are immutable: a save writes only the files that do not exist yet, then the
previous manifest as manifest.prev.json, then the new manifest. Every file is written to a
`.<name>.<pid>.<thread>.tmp` file, fsynced and moved into place with `os.replace`, so a crash at any
moment leaves a complete manifest whose files all exist. After the manifest, files referenced by
neither manifest (and stale temp files) are deleted. A restored document therefore re-saves without
rewriting its images.

manifest.json (version 1)::

    {"format": "latent-studio-autosave", "version": 1, "saved_at": <time.time()>, "clean": false,
     "pid": 1234, "cursor": 3, "dropped": 0, "total": 3,
     "current": STATE,
     "entries": [{"kind": "mask", "label": "Brush stroke", "rect": [x, y, w, h] | null,
                  "before": "mask-....npz" | null, "after": "mask-....npz" | null},
                 {"kind": "image", "label": "Result", "before": STATE, "after": STATE}, ...]}
    STATE = {"image": "img-....png" | null, "format": <QImage.Format value>, "size": [w, h],
             "mask": "mask-....npz" | null, "path": "/a/b.png" | null, "caption": "..."}

`cursor` indexes `entries` (entries[:cursor] can be undone). `dropped` is how many older entries of
the history were not kept, `total` the history's length in memory. What is kept: a contiguous run of
at most `keep_entries` (50) entries around the cursor, as many undo steps as fit and then redo
steps, and at most `keep_bytes` (512 MiB, counted uncompressed, each distinct image once) of them:
over the budget the farthest redo steps go first, then the oldest undo steps. The current image and mask are always saved.

`close()` writes a last save with `"clean": true` (a clean shutdown) and releases the lock; the files
stay until the next session's first save replaces them. An unclean manifest means the session
crashed (or was killed): `pending_restore(folder)` describes it (`RestoreInfo`), `load(folder)`
reads it back as `(DocState, entries, cursor)` for `Document.restore`, `discard(folder)` removes it.
A corrupt manifest or a missing/broken file falls back to manifest.prev.json; failing that, to the
current image with the part of the history that loads; failing that, `load` returns None and logs
why. None of them raises. A document without an image saves nothing and removes an old save, so
call `pending_restore`/`load` before the Autosaver sees a change of an empty document.

The window asks `pending_restore(default_folder())` before it creates its Autosaver. A folder
locked by another running studio is not offered for restore (that studio is alive) and a second
Autosaver on it stays disabled (`enabled` is False) instead of overwriting the other's saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QImage

from studio.qtcompat import emit

from .document import DocState
from .history import ImageEdit, MaskEdit

log = logging.getLogger(__name__)

DATA_ENV = "LATENT_STUDIO_DATA_DIR"  # overrides the user data folder (tests, portable installs)
FORMAT = "latent-studio-autosave"
VERSION = 1
DOC_DIR = "current"
MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
LOCK = "lock"
KEEP_ENTRIES = 50
KEEP_BYTES = 512 * 1024 * 1024
PNG_QUALITY = 80  # Qt maps it to zlib level 1: lossless, about 3x faster than the default level
THREAD_NAME = "studio-autosave"

_NAME = re.compile(r"^(img-[0-9a-f]{24}\.png|mask-[0-9a-f]{24}\.npz)$")


def default_folder() -> Path:
    """Where the autosave lives: $LATENT_STUDIO_DATA_DIR/autosave, else the user data folder's."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser() / "autosave"
    from platformdirs import user_data_path

    return Path(user_data_path("latent-studio")) / "autosave"


@dataclass(frozen=True)
class RestoreInfo:
    """What an unclean session left behind (for the "restore your work?" question)."""

    folder: Path
    saved_at: float  # time.time() of the last save
    size: tuple[int, int]  # the image's width, height
    undo_steps: int
    redo_steps: int
    dropped_steps: int  # older steps of that session that were not kept
    has_mask: bool
    path: Path | None
    caption: str
    bytes_on_disk: int


# -- the folder lock: one live Autosaver per folder, across processes ----------------------------

_held_lock = threading.Lock()
_held: set[str] = set()  # folders whose lock an Autosaver of this process holds


def _key(folder: Path) -> str:
    return str(Path(folder).expanduser().resolve())


class _FolderLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._file = None

    def acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+b")  # noqa: SIM115 - held open for as long as the lock is
        except OSError as e:
            log.warning("autosave: cannot open %s: %s", self.path, e)
            return False
        try:
            if os.name == "nt":
                import msvcrt

                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            if os.name == "nt":
                import msvcrt

                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _locked_elsewhere(folder: Path) -> bool:
    """True when another process's Autosaver holds the folder (that studio is still running)."""
    with _held_lock:
        if _key(folder) in _held:
            return False
    if not (Path(folder) / LOCK).exists():
        return False
    probe = _FolderLock(folder)
    if probe.acquire():
        probe.release()
        return False
    return True


# -- writing helpers (background thread) ---------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _image_rows(img: QImage) -> np.ndarray:
    """The image's pixel bytes without the scanline padding, (h, row bytes), contiguous."""
    h, bpl = img.height(), img.bytesPerLine()
    row = (img.width() * img.depth() + 7) // 8
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)[:, :row]
    return np.ascontiguousarray(buf)


def _image_name(img: QImage) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"qimage:{img.format().value}:{img.width()}x{img.height()}:".encode())
    digest.update(_image_rows(img))
    return f"img-{digest.hexdigest()}.png"


def _mask_name(a: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"mask:{a.dtype.str}:{a.shape}:".encode())
    digest.update(np.ascontiguousarray(a))
    return f"mask-{digest.hexdigest()}.npz"


def _image_file_is(path: Path, name: str, like: QImage) -> bool:
    """True when the PNG at path decodes to the pixels that name hashes (in like's format)."""
    img = QImage()
    if not img.loadFromData(path.read_bytes(), "PNG") or img.isNull():
        return False
    if img.format() != like.format():
        img = img.convertToFormat(like.format())
    return _image_name(img) == name


def _mask_file_is(path: Path, name: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _mask_name(np.asarray(z["mask"])) == name
    except Exception:  # noqa: BLE001 - any unreadable file is simply rewritten
        return False


def _png_bytes(img: QImage) -> bytes:
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    ok = img.save(buf, "PNG", PNG_QUALITY)
    buf.close()
    if not ok:
        raise OSError(f"could not encode a {img.width()}x{img.height()} image as PNG")
    return data.data()


def _npz_bytes(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, mask=a)
    return out.getvalue()


# -- snapshots (UI thread) -----------------------------------------------------------------------


@dataclass
class _State:
    """A document state, detached from the live document: a COW image copy and a mask copy."""

    image: QImage | None
    mask: np.ndarray | None
    path: str | None
    caption: str


def _shallow(img: Any) -> QImage | None:
    if not isinstance(img, QImage) or img.isNull():
        return None
    return QImage(img)  # shares the pixels until either side is painted on (then it detaches)


def _copy(a: Any) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=np.uint8, copy=True)


def _state_of(state: Any, mask_copies: dict[int, np.ndarray] | None = None) -> _State:
    mask = getattr(state, "mask", None)
    copied = None
    if mask is not None:
        if mask_copies is not None and id(mask) in mask_copies:
            copied = mask_copies[id(mask)]
        else:
            copied = _copy(mask)
            if mask_copies is not None:
                mask_copies[id(mask)] = copied
    path = getattr(state, "path", None)
    return _State(_shallow(getattr(state, "image", None)), copied, str(path) if path else None,
                  str(getattr(state, "caption", "") or ""))  # fmt: skip


def _known(entry: Any) -> bool:
    return isinstance(entry, (MaskEdit, ImageEdit))


def _capture(entry: Any) -> tuple:
    """A private copy of a history entry's data, taken on the UI thread."""
    if isinstance(entry, MaskEdit):
        return ("mask", entry.label, entry.rect, _copy(entry.before), _copy(entry.after))
    shared: dict[int, np.ndarray] = {}  # before and after often hold the same mask object
    return ("image", entry.label, None, _state_of(entry.before, shared), _state_of(entry.after, shared))


def _entry_sizes(entry: Any) -> list[tuple[Any, int]]:
    """(identity, bytes) of what an entry would write; images are identified by their cacheKey."""
    if isinstance(entry, MaskEdit):
        return [(("a", id(a)), a.nbytes) for a in (entry.before, entry.after) if a is not None]
    out = []
    for s in (entry.before, entry.after):
        img, mask = getattr(s, "image", None), getattr(s, "mask", None)
        if isinstance(img, QImage) and not img.isNull():
            out.append((("i", img.cacheKey()), img.sizeInBytes()))
        if mask is not None:
            out.append((("a", id(mask)), mask.nbytes))
    return out


def _window(entries: list, cursor: int, keep: int, budget: int) -> tuple[int, int]:
    """The contiguous run of entries to keep: it holds the cursor, at most `keep` entries and
    `budget` bytes, and no entry of an unknown kind."""
    n = len(entries)
    cursor = max(0, min(cursor, n))
    keep = max(0, keep)
    start = max(0, cursor - keep)  # as many undo steps as fit, then redo steps
    end = min(n, start + keep)
    for i in range(start, end):
        if not _known(entries[i]):
            if i < cursor:
                start = i + 1
            else:
                end = i
                break
    sizes = [_entry_sizes(e) for e in entries]

    def total(a: int, b: int) -> int:
        seen: dict[Any, int] = {}
        for i in range(a, b):
            seen.update(sizes[i])
        return sum(seen.values())

    while start < end and total(start, end) > budget:
        if end > cursor:
            end -= 1
        else:
            start += 1
    return start, max(start, end)


@dataclass(eq=False)
class _Rec:
    """One history entry as the autosave knows it. `payload` is its captured data until written;
    `files` is its manifest entry once its files are on disk. Guarded by Autosaver._cv."""

    entry: Any  # kept alive, so id(entry) stays unique while the record exists
    payload: tuple | None
    files: dict | None = None


@dataclass(eq=False)
class _Job:
    clear: bool = False
    clean: bool = False
    current: _State | None = None
    records: list[_Rec] = field(default_factory=list)
    cursor: int = 0
    dropped: int = 0
    total: int = 0
    saved_at: float = 0.0
    done: bool = False
    result: str = ""  # "ok", "cleared", "retry" (a file vanished: snapshot again), "error: ..."


_POSTPONE = object()


class Autosaver(QObject):
    """Saves `document` into `folder` a moment after each change; see the module docstring."""

    saved = Signal(float)  # time.time() of a save that reached the disk (UI thread)
    failed = Signal(str)  # why a save did not (the previous save stays valid)
    _job_done = Signal(object)  # writer thread -> UI thread

    def __init__(self, document, folder: Path, delay_ms: int = 1500, parent: QObject | None = None, *,
                 max_wait_ms: int = 5000, keep_entries: int = KEEP_ENTRIES,
                 keep_bytes: int = KEEP_BYTES) -> None:  # fmt: skip
        super().__init__(parent)
        self.document = document
        self.folder = Path(folder)
        self.delay_ms = max(0, int(delay_ms))
        self.max_wait_ms = max(self.delay_ms, int(max_wait_ms))
        self.keep_entries = keep_entries
        self.keep_bytes = keep_bytes
        self._timer = QTimer(self)
        self._timer.setObjectName("autosave")
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_timer)
        self._first_change = 0.0
        self._records: dict[int, _Rec] = {}
        self._cv = threading.Condition()
        self._pending: _Job | None = None
        self._thread: threading.Thread | None = None  # the writer, while it has work
        self._last_thread: threading.Thread | None = None  # joined by close(), even as it exits
        self._image_names: dict[int, str] = {}  # writer thread only: QImage.cacheKey() -> file name
        self._verified: set[str] = set()  # writer thread only: files known to hold what their name says
        self._closed = False
        self._lock = _FolderLock(self.folder)
        self.enabled = self._register()
        self._job_done.connect(self._on_job_done, Qt.ConnectionType.QueuedConnection)
        if self.enabled:
            document.changed.connect(self._on_changed)

    def _register(self) -> bool:
        key = _key(self.folder)
        with _held_lock:
            if key in _held:
                log.warning("autosave: %s already has an autosaver in this process; this one is off", self.folder)
                return False
            if not self._lock.acquire():
                log.warning("autosave: %s is in use by another running studio; autosave is off", self.folder)
                return False
            _held.add(key)
        return True

    def _unregister(self) -> None:
        with _held_lock:
            _held.discard(_key(self.folder))
        self._lock.release()

    # -- scheduling (UI thread) -----------------------------------------------------------------

    def _on_changed(self) -> None:
        if self._closed:
            return
        try:
            self._capture_new()
        except Exception:  # noqa: BLE001 - the autosave must never break an edit
            log.exception("autosave: could not copy the new history entries")
        now = time.monotonic()
        if not self._timer.isActive():
            self._first_change = now
        waited_ms = (now - self._first_change) * 1000.0
        self._timer.start(int(max(0.0, min(self.delay_ms, self.max_wait_ms - waited_ms))))

    def _capture_new(self) -> None:
        """Copy entries pushed since the last change now, before a later stroke paints into an
        array that an entry shares with the live mask."""
        entries = self.document.history.entries
        with self._cv:
            for e in entries[-self.keep_entries :] if self.keep_entries > 0 else []:
                if id(e) not in self._records and _known(e):
                    self._records[id(e)] = _Rec(e, _capture(e))

    def _on_timer(self) -> None:
        if self._closed:
            return
        try:
            job = self._snapshot()
        except Exception as e:  # noqa: BLE001
            log.exception("autosave: snapshot failed")
            emit(self.failed, f"snapshot failed: {e}")
            return
        if job is _POSTPONE:
            self._timer.start(250)
            return
        self._submit(job)

    def _stable_mask(self):
        """The mask to save: during a stroke, the one from before it (or _POSTPONE if unknown)."""
        in_stroke, before = self.document.stroke_base()
        return before if in_stroke else self.document.mask

    def _snapshot(self, clean: bool = False, postpone: bool = True):
        doc = self.document
        if not doc.has_image():
            return _Job(clear=True, clean=clean, saved_at=time.time())
        mask = self._stable_mask()
        if mask is _POSTPONE:
            if postpone:
                return _POSTPONE
            mask = doc.mask
        path = doc.path
        current = _State(_shallow(doc.image), _copy(mask), str(path) if path else None, str(doc.caption or ""))
        entries = list(doc.history.entries)
        cursor = max(0, min(doc.history.cursor, len(entries)))
        start, end = _window(entries, cursor, self.keep_entries, self.keep_bytes)
        live = {id(e) for e in entries}
        records = []
        with self._cv:
            for key in [k for k in self._records if k not in live]:  # a record holds its entry, so a
                del self._records[key]  # live id in `live` is that very entry
            for i, e in enumerate(entries):
                rec = self._records.get(id(e))
                if not start <= i < end:
                    if rec is not None:  # out of the kept run: captured again if it comes back
                        rec.files, rec.payload = None, None
                    continue
                if rec is None:
                    rec = self._records[id(e)] = _Rec(e, _capture(e))
                elif rec.files is None and rec.payload is None:
                    rec.payload = _capture(e)
                records.append(rec)
        return _Job(clean=clean, current=current, records=records, cursor=cursor - start, dropped=start,
                    total=len(entries), saved_at=time.time())  # fmt: skip

    # -- the writer thread ----------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        with self._cv:
            if self._pending is not None:  # not started yet: the newer save replaces it
                self._pending.result, self._pending.done = "superseded", True
            self._pending = job
            if self._thread is None:
                self._thread = self._last_thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                job, self._pending = self._pending, None
                if job is None:
                    self._thread = None
                    self._cv.notify_all()
                    return
            try:
                job.result = self._write(job)
            except Exception as e:  # noqa: BLE001 - reported, and the previous save stays valid
                log.exception("autosave: writing %s failed", self.folder)
                job.result = f"error: {e}"
            with self._cv:
                job.done = True
                self._cv.notify_all()
            with contextlib.suppress(RuntimeError):  # the autosaver was deleted without close()
                emit(self._job_done, job)

    def _write(self, job: _Job) -> str:
        """Write one snapshot (background thread). Returns "ok", "cleared" or "retry"."""
        doc_dir = self.folder / DOC_DIR
        if job.clear:
            _remove_save(self.folder)
            self._image_names.clear()
            return "cleared"
        doc_dir.mkdir(parents=True, exist_ok=True)
        job_images: dict[int, str] = {}

        def put_image(img: QImage | None) -> str | None:
            if img is None:
                return None
            key = img.cacheKey()
            name = job_images.get(key) or self._image_names.get(key) or _image_name(img)
            job_images[key] = name
            self._ensure(doc_dir / name, lambda: _png_bytes(img), lambda path: _image_file_is(path, name, img))
            return name

        job_masks: dict[int, str] = {}

        def put_mask(a: np.ndarray | None) -> str | None:
            if a is None:
                return None
            name = job_masks.get(id(a)) or _mask_name(a)
            job_masks[id(a)] = name
            self._ensure(doc_dir / name, lambda: _npz_bytes(a), lambda path: _mask_file_is(path, name))
            return name

        def put_state(s: _State) -> dict:
            img = s.image
            return {"image": put_image(img), "format": img.format().value if img is not None else None,
                    "size": [img.width(), img.height()] if img is not None else None,
                    "mask": put_mask(s.mask), "path": s.path, "caption": s.caption}  # fmt: skip

        entries = []
        for rec in job.records:
            with self._cv:
                files, payload = rec.files, rec.payload
            if files is not None:
                if all((doc_dir / n).exists() for n in _names_in(files)):
                    entries.append(files)
                    continue
                if payload is None:  # its files vanished (a discard): capture it again on the UI thread
                    with self._cv:
                        rec.files = None
                    return "retry"
            if payload is None:
                return "retry"
            kind, label, rect, before, after = payload
            if kind == "mask":
                files = {"kind": "mask", "label": label, "rect": list(rect) if rect is not None else None,
                         "before": put_mask(before), "after": put_mask(after)}  # fmt: skip
            else:
                files = {"kind": "image", "label": label, "before": put_state(before), "after": put_state(after)}
            with self._cv:
                rec.files = files
                if rec.payload is payload:
                    rec.payload = None  # on disk now; the copy is no longer needed
            entries.append(files)

        manifest = {"format": FORMAT, "version": VERSION, "saved_at": job.saved_at, "clean": job.clean,
                    "pid": os.getpid(), "cursor": job.cursor, "dropped": job.dropped, "total": job.total,
                    "current": put_state(job.current), "entries": entries}  # fmt: skip
        data = json.dumps(manifest, indent=1).encode()
        manifest_path, previous_path = doc_dir / MANIFEST, doc_dir / PREVIOUS
        previous = None
        with contextlib.suppress(OSError):
            previous = manifest_path.read_bytes()
        if previous is not None and previous != data:
            _atomic_write(previous_path, previous)
        _atomic_write(manifest_path, data)
        _fsync_dir(doc_dir)
        self._image_names = dict(job_images)
        _clean_up(doc_dir)
        return "ok"

    def _ensure(self, target: Path, encode, matches) -> None:
        """Write a content-addressed file unless it is there already. A file this writer did not
        write itself (a restored session's, or one left by an older run) is checked first."""
        name = target.name
        if not (target.exists() and (name in self._verified or matches(target))):
            _atomic_write(target, encode())
        self._verified.add(name)

    # -- results (UI thread) ----------------------------------------------------------------------

    def _on_job_done(self, job: _Job) -> None:
        if job.result == "ok":
            emit(self.saved, job.saved_at)
        elif job.result == "retry":
            if not self._closed:
                self._timer.start(0)
        elif job.result.startswith("error"):
            emit(self.failed, job.result)

    # -- public --------------------------------------------------------------------------------------

    def is_busy(self) -> bool:
        """True while a save is scheduled or being written."""
        with self._cv:
            return self._timer.isActive() or self._pending is not None or self._thread is not None

    def flush(self, timeout: float = 10.0, *, clean: bool = False) -> bool:
        """Save now and wait for it (up to timeout seconds). True when it reached the disk."""
        if not self.enabled:
            return True
        self._timer.stop()
        deadline = time.monotonic() + timeout
        for _ in range(3):
            try:
                job = self._snapshot(clean=clean, postpone=False)
            except Exception:  # noqa: BLE001 - e.g. the document is already deleted
                log.exception("autosave: snapshot failed")
                return False
            self._submit(job)
            with self._cv:
                while not job.done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cv.wait(left)
            if job.result != "retry":
                return job.result in ("ok", "cleared")
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Stop, write a last save marked as a clean shutdown, and wait for the writer.
        True when that last save reached the disk. Nothing of the autosaver runs afterwards."""
        if self._closed:
            return True
        self._timer.stop()
        ok = True
        if self.enabled:
            with contextlib.suppress(RuntimeError, TypeError):
                self.document.changed.disconnect(self._on_changed)
            ok = self.flush(timeout, clean=True)
        self._closed = True
        self._timer.stop()
        self._join(timeout)
        if self.enabled:
            self._unregister()
        with self._cv:
            self._records.clear()
        return ok

    def _join(self, timeout: float) -> None:
        with self._cv:
            thread = self._thread or self._last_thread
        if thread is not None:
            thread.join(timeout)

    def discard(self) -> None:
        """Remove the save now (the document is saved elsewhere); the next change saves afresh."""
        self._timer.stop()
        self._join(30.0)
        with self._cv:
            for rec in self._records.values():
                rec.files = None
        if self.enabled:
            _remove_save(self.folder)


def _names_in(obj: Any) -> list[str]:
    """The data file names a manifest (or a part of it) refers to."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("image", "mask", "before", "after") and isinstance(v, str):
                out.append(v)
            elif isinstance(v, (dict, list)):
                out.extend(_names_in(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(_names_in(v))
    return out


def _clean_up(doc_dir: Path) -> None:
    """Delete files that neither manifest refers to, and stale temp files."""
    keep = {MANIFEST, PREVIOUS}
    for name in (MANIFEST, PREVIOUS):
        m = _read_json(doc_dir / name)
        if m is None and (doc_dir / name).exists():
            log.warning("autosave: %s is unreadable", doc_dir / name)
        if m is not None:
            keep.update(_names_in(m))
    mine = f".{os.getpid()}."
    for p in doc_dir.iterdir():
        if p.name in keep or (p.name.endswith(".tmp") and mine in p.name):
            continue  # (this process's temp files are its writer's, in flight)
        with contextlib.suppress(OSError):
            if p.is_file():
                p.unlink()


def _remove_save(folder: Path) -> None:
    doc_dir = Path(folder) / DOC_DIR
    if not doc_dir.exists():
        return
    trash = Path(folder) / f".discarded-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(doc_dir, trash)  # atomic: the save is gone at once, whatever happens next
    shutil.rmtree(trash, ignore_errors=True)


def discard(folder: Path) -> bool:
    """Remove the save in folder (the artist declined to restore it). False when another running
    studio owns the folder or the removal failed; never raises."""
    try:
        if _locked_elsewhere(Path(folder)):
            log.warning("autosave: not discarding %s: another running studio uses it", folder)
            return False
        _remove_save(Path(folder))
        return True
    except Exception:  # noqa: BLE001
        log.exception("autosave: could not discard %s", folder)
        return False


# -- reading back (no torch; works without a QApplication) ---------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        m = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _check_manifest(m: dict) -> None:
    """ValueError unless m is a manifest of a version this reader knows, with sane fields."""
    if m.get("format") != FORMAT:
        raise ValueError("not an autosave manifest")
    if m.get("version") != VERSION:
        raise ValueError(f"unknown manifest version {m.get('version')!r}")
    if not isinstance(m.get("entries"), list) or not isinstance(m.get("cursor"), int):
        raise ValueError("no history in the manifest")
    if not 0 <= m["cursor"] <= len(m["entries"]):
        raise ValueError("the cursor is outside the history")
    current = m.get("current")
    if not isinstance(current, dict) or not isinstance(current.get("image"), str):
        raise ValueError("no current image in the manifest")
    for name in _names_in(m):
        if not _NAME.match(name):
            raise ValueError(f"bad file name {name!r} in the manifest")


def _pick_manifest(doc_dir: Path) -> tuple[Path, dict] | None:
    """The first of manifest.json, manifest.prev.json that parses and whose files all exist."""
    for name in (MANIFEST, PREVIOUS):
        path = doc_dir / name
        m = _read_json(path)
        if m is None:
            if path.exists():
                log.warning("autosave: %s is unreadable", path)
            continue
        try:
            _check_manifest(m)
        except ValueError as e:
            log.warning("autosave: %s: %s", path, e)
            continue
        missing = [n for n in _names_in(m) if not (doc_dir / n).is_file()]
        if missing:
            log.warning("autosave: %s refers to missing files: %s", path, ", ".join(missing[:3]))
            continue
        return path, m
    return None


def pending_restore(folder: Path) -> RestoreInfo | None:
    """What an unclean (crashed) session left in folder, or None: nothing, a clean shutdown, a
    save that does not load, or a folder that another running studio is using. Never raises."""
    try:
        folder = Path(folder)
        doc_dir = folder / DOC_DIR
        if not doc_dir.is_dir():
            return None
        if _locked_elsewhere(folder):
            log.info("autosave: %s belongs to a running studio", folder)
            return None
        found = _pick_manifest(doc_dir)
        if found is None:
            return None
        _, m = found
        if m.get("clean"):
            return None
        current = m["current"]
        size = current.get("size") or [0, 0]
        names = set(_names_in(m))
        nbytes = sum((doc_dir / n).stat().st_size for n in names)
        cursor, n = int(m["cursor"]), len(m["entries"])
        return RestoreInfo(folder=folder, saved_at=float(m.get("saved_at", 0.0)), size=(int(size[0]), int(size[1])),
                           undo_steps=cursor, redo_steps=n - cursor, dropped_steps=int(m.get("dropped", 0)),
                           has_mask=current.get("mask") is not None,
                           path=Path(current["path"]) if current.get("path") else None,
                           caption=str(current.get("caption") or ""), bytes_on_disk=nbytes)  # fmt: skip
    except Exception:  # noqa: BLE001 - the question is only asked when this works
        log.exception("autosave: could not read %s", folder)
        return None


class _Reader:
    """Reads one manifest's files, each once (images decoded in parallel)."""

    def __init__(self, doc_dir: Path, m: dict):
        self.doc_dir = doc_dir
        self.m = m
        self.images: dict[str, QImage | Exception] = {}
        self.masks: dict[str, np.ndarray | Exception] = {}
        names = sorted({n for n in _names_in(m) if n.startswith("img-")})
        if len(names) > 1:
            with ThreadPoolExecutor(max_workers=min(4, len(names)), thread_name_prefix="studio-autosave-load") as pool:
                for name, img in zip(names, pool.map(self._decode, names), strict=True):
                    self.images[name] = img
        else:
            for name in names:
                self.images[name] = self._decode(name)

    def _decode(self, name: str) -> QImage | Exception:
        try:
            img = QImage()
            if not img.loadFromData((self.doc_dir / name).read_bytes(), "PNG") or img.isNull():
                raise ValueError(f"{name} is not a readable PNG")
            return img
        except Exception as e:  # noqa: BLE001 - reported per state
            return e

    def image(self, name: str | None, fmt: Any, size: Any) -> QImage | None:
        if name is None:
            return None
        img = self.images.get(name)
        if img is None:
            img = self.images[name] = self._decode(name)
        if isinstance(img, Exception):
            raise img
        if isinstance(size, list) and len(size) == 2 and [img.width(), img.height()] != size:
            raise ValueError(f"{name} is {img.width()}x{img.height()}, the manifest says {size[0]}x{size[1]}")
        if isinstance(fmt, int) and fmt != img.format().value:
            with contextlib.suppress(ValueError):
                return img.convertToFormat(QImage.Format(fmt))
        return QImage(img)  # each state its own (copy-on-write) instance: painting one leaves the rest

    def mask(self, name: str | None, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        if name is None:
            return None
        a = self.masks.get(name)
        if a is None:
            try:
                with np.load(self.doc_dir / name, allow_pickle=False) as z:
                    a = np.asarray(z["mask"])
                if a.dtype != np.uint8 or a.ndim != 2:
                    raise ValueError(f"{name} is not an HxW uint8 mask")
            except Exception as e:  # noqa: BLE001
                a = e if isinstance(e, ValueError) else ValueError(f"{name}: {e}")
            self.masks[name] = a
        if isinstance(a, Exception):
            raise a
        if shape is not None and a.shape != shape:
            raise ValueError(f"{name} is {a.shape[1]}x{a.shape[0]}, expected {shape[1]}x{shape[0]}")
        return a.copy()  # every user gets its own array: the document paints into masks in place

    def state(self, s: Any) -> DocState:
        if not isinstance(s, dict):
            raise ValueError("a state is not an object")
        img = self.image(s.get("image"), s.get("format"), s.get("size"))
        shape = (img.height(), img.width()) if img is not None else None
        mask = self.mask(s.get("mask"), shape)
        if img is None and mask is not None:
            raise ValueError("a mask without an image")
        path = s.get("path")
        return DocState(img, mask, Path(path) if isinstance(path, str) and path else None, str(s.get("caption") or ""))

    def entry(self, e: Any):
        if not isinstance(e, dict) or not isinstance(e.get("label"), str):
            raise ValueError("an entry is not an object with a label")
        if e.get("kind") == "mask":
            rect = e.get("rect")
            if rect is not None:
                if not (isinstance(rect, list) and len(rect) == 4 and all(isinstance(v, int) for v in rect)):
                    raise ValueError(f"bad rect {rect!r}")
                rect = tuple(rect)
                shape = (rect[3], rect[2])
                before, after = self.mask(e.get("before"), shape), self.mask(e.get("after"), shape)
                if before is None or after is None:
                    raise ValueError("a patch without its pixels")
            else:
                before, after = self.mask(e.get("before")), self.mask(e.get("after"))
            return MaskEdit(e["label"], rect, before, after)
        if e.get("kind") == "image":
            return ImageEdit(e["label"], self.state(e.get("before")), self.state(e.get("after")))
        raise ValueError(f"unknown entry kind {e.get('kind')!r}")


def _build(doc_dir: Path, m: dict, strict: bool) -> tuple[DocState, list, int]:
    reader = _Reader(doc_dir, m)
    state = reader.state(m["current"])
    if state.image is None:
        raise ValueError("no current image")
    entries, bad = [], []
    for i, e in enumerate(m["entries"]):
        try:
            entries.append(reader.entry(e))
        except Exception as err:  # noqa: BLE001
            if strict:
                raise ValueError(f"history entry {i}: {err}") from err
            log.warning("autosave: history entry %d does not load: %s", i, err)
            entries.append(None)
            bad.append(i)
    cursor = m["cursor"]
    if bad:  # keep the run of good entries around the cursor
        start = max([i + 1 for i in bad if i < cursor], default=0)
        end = min([i for i in bad if i >= cursor], default=len(entries))
        entries, cursor = entries[start:end], cursor - start
    return state, entries, cursor


def load(folder: Path) -> tuple[DocState, list, int] | None:
    """The saved document as (state, history entries, cursor) for Document.restore, or None (logged).
    Prefers manifest.json, then manifest.prev.json, then the current image of either with the part
    of its history that loads. Never raises."""
    try:
        doc_dir = Path(folder) / DOC_DIR
        if not doc_dir.is_dir():
            return None
        manifests = []
        for name in (MANIFEST, PREVIOUS):
            m = _read_json(doc_dir / name)
            if m is None:
                if (doc_dir / name).exists():
                    log.warning("autosave: %s is unreadable", doc_dir / name)
                continue
            try:
                _check_manifest(m)
            except ValueError as e:
                log.warning("autosave: %s: %s", doc_dir / name, e)
                continue
            manifests.append((name, m))
        for strict in (True, False):
            for name, m in manifests:
                try:
                    return _build(doc_dir, m, strict)
                except Exception as e:  # noqa: BLE001
                    log.warning("autosave: %s does not load%s: %s", doc_dir / name,
                                "" if strict else " even without its history", e)  # fmt: skip
        if manifests:
            log.warning("autosave: nothing in %s loads", doc_dir)
        return None
    except Exception:  # noqa: BLE001
        log.exception("autosave: could not load %s", folder)
        return None


__all__ = ["Autosaver", "RestoreInfo", "default_folder", "discard", "load", "pending_restore"]
