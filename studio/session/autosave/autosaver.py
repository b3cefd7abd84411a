"""The Autosaver: watches a document and schedules its saves (UI thread); the writer thread writes them."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from studio.qtcompat import emit

from .folder import remove_save
from .lock import claim, unclaim
from .snapshot import (
    POSTPONE,
    Job,
    Rec,
    State,
    arrays_of,
    capture,
    copy_mask,
    kept_records,
    known,
    layer_desc,
    shallow,
    window,
)
from .writer import Writer

log = logging.getLogger(__package__)

KEEP_ENTRIES = 50
KEEP_BYTES = 512 * 1024 * 1024


class Autosaver(QObject):
    """Saves `document` into `folder` a moment after each change; see the package docstring."""

    saved = Signal(float)  # time.time() of a save that reached the disk (UI thread)
    failed = Signal(str)  # why a save did not (the previous save stays valid)
    _job_done = Signal(object)  # writer thread -> UI thread

    def __init__(self, document, folder: Path, delay_ms: int = 1500, parent: QObject | None = None, *,
                 max_wait_ms: int = 5000, keep_entries: int = KEEP_ENTRIES,
                 keep_bytes: int = KEEP_BYTES, staging=None) -> None:  # fmt: skip
        super().__init__(parent)
        self.document = document
        self.staging = staging  # studio.session.staging.Staging: its candidates are saved with the document
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
        self._records: dict[int, Rec] = {}  # guarded by self._writer.cv
        self._writer = Writer(self.folder, self._job_finished)
        self._closed = False
        self._lock = claim(self.folder)
        self.enabled = self._lock is not None
        self._job_done.connect(self._on_job_done, Qt.ConnectionType.QueuedConnection)
        if self.enabled:
            document.changed.connect(self._on_changed)
            if staging is not None:
                staging.changed.connect(self._on_changed)

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
        with self._writer.cv:
            for e in entries[-self.keep_entries :] if self.keep_entries > 0 else []:
                if id(e) not in self._records and known(e):
                    self._records[id(e)] = Rec(e, capture(e))

    def _on_timer(self) -> None:
        if self._closed:
            return
        try:
            job = self._snapshot()
        except Exception as e:  # noqa: BLE001
            log.exception("autosave: snapshot failed")
            emit(self.failed, f"snapshot failed: {e}")
            return
        if job is POSTPONE:
            self._timer.start(250)
            return
        self._writer.submit(job)

    def _stable_mask(self):
        """The mask to save: during a stroke, the one from before it (or POSTPONE if unknown)."""
        in_stroke, before = self.document.stroke_base()
        return before if in_stroke else self.document.mask

    def _snapshot(self, clean: bool = False, postpone: bool = True):
        doc = self.document
        if not doc.has_image():
            return Job(clear=True, clean=clean, saved_at=time.time())
        mask = self._stable_mask()
        if doc.in_paint():  # a colour stroke paints a layer in place: save once it is in the history
            mask = POSTPONE
        if mask is POSTPONE:
            if postpone:
                return POSTPONE
            mask = doc.mask
        path = doc.path
        current = State(shallow(doc.image), copy_mask(mask), str(path) if path else None, str(doc.caption or ""),
                        [layer_desc(la) for la in doc.layers], doc.active)  # fmt: skip
        entries = list(doc.history.entries)
        cursor = max(0, min(doc.history.cursor, len(entries)))
        start, end = window(entries, cursor, self.keep_entries, self.keep_bytes)
        with self._writer.cv:
            records = kept_records(self._records, entries, start, end)
        layers = None if doc.single_layer() else [(n, v, o, shallow(img), *c) for n, v, o, img, *c in doc.layer_images()]
        st = self.staging
        staged = [(shallow(c.image), c.label, c.seed) for c in st.candidates] if st is not None else []
        return Job(clean=clean, current=current, records=records, cursor=cursor - start, dropped=start,
                   total=len(entries), saved_at=time.time(), layers=layers, active=doc.active, staged=staged,
                   staged_index=st.index if st is not None else 0,
                   arrays=doc.array_images(arrays_of(doc.layers, [rec.entry for rec in records])))  # fmt: skip

    # -- results ------------------------------------------------------------------------------------

    def _job_finished(self, job: Job) -> None:  # writer thread
        with contextlib.suppress(RuntimeError):  # the autosaver was deleted without close()
            emit(self._job_done, job)

    def _on_job_done(self, job: Job) -> None:
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
        return self._timer.isActive() or self._writer.busy()

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
            self._writer.submit(job)
            if not self._writer.wait(job, deadline):
                return False
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
        self._writer.join(timeout)
        if self._lock is not None:
            unclaim(self.folder, self._lock)
        with self._writer.cv:
            self._records.clear()
        return ok

    def discard(self) -> None:
        """Remove the save now (the document is saved elsewhere); the next change saves afresh."""
        self._timer.stop()
        self._writer.join(30.0)
        with self._writer.cv:
            for rec in self._records.values():
                rec.files = None
        if self.enabled:
            remove_save(self.folder)
