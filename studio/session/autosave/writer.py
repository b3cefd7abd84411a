"""The writer: one background thread ("studio-autosave") per Autosaver that puts snapshots on disk.

A save that comes while one is being written waits for it; saves that pile up meanwhile coalesce into
the newest, so there is never more than one writer and the UI thread never waits on the disk. Data files
are written only when missing (content-addressed), then manifest.prev.json, then manifest.json, each
through studio.core.atomic; files neither manifest refers to are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage

from studio.core.atomic import write_bytes

from .content import image_file_is, image_name, mask_file_is, mask_name, npz_bytes, png_bytes
from .folder import DOC_DIR, remove_save
from .manifest import FORMAT, MANIFEST, PREVIOUS, VERSION, clean_up, names_in
from .snapshot import Job, State

log = logging.getLogger(__package__)

THREAD_NAME = "studio-autosave"

_writing_lock = threading.Lock()
_writing: Counter[Path] = Counter()  # files this process's writers are writing now (their temp files stay)


def write_file(path: Path, data: bytes) -> None:
    """`data` written to `path` atomically (fsynced); the folder must exist."""
    with _writing_lock:
        _writing[path] += 1
    try:
        write_bytes(path, data, mkdir=False)
    finally:
        with _writing_lock:
            _writing[path] -= 1
            if not _writing[path]:
                del _writing[path]


def _in_flight(doc_dir: Path) -> set[str]:
    with _writing_lock:
        return {p.name for p in _writing if p.parent == doc_dir}


def state_files(s: State, put_image: Callable[[QImage | None], str | None],
                put_mask: Callable[[np.ndarray | None], str | None]) -> dict:  # fmt: skip
    """A document state as the manifest holds it (STATE in the package docstring); put_image and put_mask store
    the pixels somewhere (a folder here, a project zip in studio.session.project) and return the file names."""
    img = s.image
    out: dict = {"image": put_image(img), "format": img.format().value if img is not None else None,
           "size": [img.width(), img.height()] if img is not None else None,
           "mask": put_mask(s.mask), "path": s.path, "caption": s.caption}  # fmt: skip
    if s.layers is not None:  # the stack of that state: a layer's own image, or a slot of the save's `arrays`
        out["layers"] = [{"uid": d["uid"], "name": d["name"], "visible": d["visible"], "opacity": d["opacity"],
                          "image": put_image(d["source"]), "array": d["array"],
                          **({"control": d["control"]} if d.get("control") else {})} for d in s.layers]  # fmt: skip
        out["active"] = s.active
    return out


def array_files(arrays: dict[int, QImage], put_image: Callable[[QImage | None], str | None]) -> list[dict]:
    """The save's `arrays`: each layer pixel array the states name (by its slot), as an RGBA PNG."""
    return [{"slot": slot, "image": put_image(img)} for slot, img in arrays.items()]


def entry_files(payload: tuple, put_image: Callable[[QImage | None], str | None],
                put_mask: Callable[[np.ndarray | None], str | None]) -> dict:  # fmt: skip
    """A captured history entry (snapshot.capture) as the manifest holds it."""
    kind, label, rect, before, after = payload[:5]
    if kind == "paint":  # a colour stroke: the layer (uid) and its RGBA patch inside rect, before and after
        return {"kind": "paint", "label": label, "rect": list(rect), "layer": payload[5],
                "before": put_image(before), "after": put_image(after)}  # fmt: skip
    if kind == "mask":
        return {"kind": "mask", "label": label, "rect": list(rect) if rect is not None else None,
                "before": put_mask(before), "after": put_mask(after)}  # fmt: skip
    return {"kind": "image", "label": label, "before": state_files(before, put_image, put_mask),
            "after": state_files(after, put_image, put_mask)}  # fmt: skip


def layer_files(layers: list, put_image: Callable[[QImage | None], str | None]) -> list[dict]:
    """The layer stack as the manifest holds it: bottom to top, each {"name", "visible", "opacity", "image"}, and
    "control" (its settings) for a control layer."""
    out = []
    for name, visible, opacity, img, *control in layers:
        d = {"name": str(name), "visible": bool(visible), "opacity": round(float(opacity), 4), "image": put_image(img)}
        if control and control[0]:
            d["control"] = control[0]
        out.append(d)
    return out


class Writer:
    """Writes the newest submitted Job of `folder` on its own thread; `on_done(job)` is called there after each."""

    def __init__(self, folder: Path, on_done: Callable[[Job], None]) -> None:
        self.folder = folder
        self.cv = threading.Condition()  # guards the jobs, and the records (snapshot.Rec) jobs share with the UI
        self._on_done = on_done
        self._pending: Job | None = None
        self._thread: threading.Thread | None = None  # the writer, while it has work
        self._last_thread: threading.Thread | None = None  # joined by close(), even as it exits
        self._image_names: dict[int, str] = {}  # writer thread only: QImage.cacheKey() -> file name
        self._verified: set[str] = set()  # writer thread only: files known to hold what their name says

    def submit(self, job: Job) -> None:
        with self.cv:
            if self._pending is not None:  # not started yet: the newer save replaces it
                self._pending.result, self._pending.done = "superseded", True
            self._pending = job
            if self._thread is None:
                self._thread = self._last_thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self.cv.notify_all()

    def busy(self) -> bool:
        """True while a job waits or is being written."""
        with self.cv:
            return self._pending is not None or self._thread is not None

    def wait(self, job: Job, deadline: float) -> bool:
        """Wait until job is done (written, failed or superseded) or time.monotonic() passes deadline."""
        with self.cv:
            while not job.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(left)
        return True

    def join(self, timeout: float) -> None:
        with self.cv:
            thread = self._thread or self._last_thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self.cv:
                job, self._pending = self._pending, None
                if job is None:
                    self._thread = None
                    self.cv.notify_all()
                    return
            try:
                job.result = self.write(job)
            except Exception as e:  # noqa: BLE001 - reported, and the previous save stays valid
                log.exception("autosave: writing %s failed", self.folder)
                job.result = f"error: {e}"
            with self.cv:
                job.done = True
                self.cv.notify_all()
            self._on_done(job)

    def write(self, job: Job) -> str:
        """Write one snapshot (background thread). Returns "ok", "cleared" or "retry"."""
        doc_dir = self.folder / DOC_DIR
        if job.clear:
            remove_save(self.folder)
            self._image_names.clear()
            return "cleared"
        doc_dir.mkdir(parents=True, exist_ok=True)
        job_images: dict[int, str] = {}

        def put_image(img: QImage | None) -> str | None:
            if img is None:
                return None
            key = img.cacheKey()
            name = job_images.get(key) or self._image_names.get(key) or image_name(img)
            job_images[key] = name
            self._ensure(doc_dir / name, lambda: png_bytes(img), lambda path: image_file_is(path, name, img))
            return name

        job_masks: dict[int, str] = {}

        def put_mask(a: np.ndarray | None) -> str | None:
            if a is None:
                return None
            name = job_masks.get(id(a)) or mask_name(a)
            job_masks[id(a)] = name
            self._ensure(doc_dir / name, lambda: npz_bytes(a), lambda path: mask_file_is(path, name))
            return name

        def put_state(s: State) -> dict:
            return state_files(s, put_image, put_mask)

        entries = []
        for rec in job.records:
            with self.cv:
                files, payload = rec.files, rec.payload
            if files is not None:
                if all((doc_dir / n).exists() for n in names_in(files)):
                    entries.append(files)
                    continue
                if payload is None:  # its files vanished (a discard): capture it again on the UI thread
                    with self.cv:
                        rec.files = None
                    return "retry"
            if payload is None:
                return "retry"
            files = entry_files(payload, put_image, put_mask)
            with self.cv:
                rec.files = files
                if rec.payload is payload:
                    rec.payload = None  # on disk now; the copy is no longer needed
            entries.append(files)

        assert job.current is not None  # every job carries the document as it is now
        manifest = {"format": FORMAT, "version": VERSION, "saved_at": job.saved_at, "clean": job.clean,
                    "pid": os.getpid(), "cursor": job.cursor, "dropped": job.dropped, "total": job.total,
                    "current": put_state(job.current), "entries": entries}  # fmt: skip
        if job.layers is not None:
            manifest["layers"], manifest["active"] = layer_files(job.layers, put_image), job.active
        if job.staged:  # results waiting over the canvas (the project file's "staged" key)
            manifest["staged"] = [{"image": put_image(img), "label": label, "seed": seed} for img, label, seed in job.staged]
            manifest["staged_index"] = job.staged_index
        if job.arrays:
            manifest["arrays"] = array_files(job.arrays, put_image)
        data = json.dumps(manifest, indent=1).encode()
        manifest_path, previous_path = doc_dir / MANIFEST, doc_dir / PREVIOUS
        previous = None
        with contextlib.suppress(OSError):
            previous = manifest_path.read_bytes()
        if previous is not None and previous != data:
            write_file(previous_path, previous)
        write_file(manifest_path, data)  # (fsyncs the folder too: every rename above is durable now)
        self._image_names = dict(job_images)
        clean_up(doc_dir, _in_flight(doc_dir))
        return "ok"

    def _ensure(self, target: Path, encode, matches) -> None:
        """Write a content-addressed file unless it is there already. A file this writer did not
        write itself (a restored session's, or one left by an older run) is checked first."""
        name = target.name
        if not (target.exists() and (name in self._verified or matches(target))):
            write_file(target, encode())
        self._verified.add(name)
