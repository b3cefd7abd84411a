"""The one bridge between Qt and the engine: one engine thread, a job queue, signals.

The engine is synchronous and single-threaded; this worker owns the only thread that
touches it (one GPU lane). Torch and diffusers are imported on that thread, lazily,
through the engine factory, so the window shows before they load.

Exceptions never cross into the UI as objects: an EngineError becomes its message, any
other exception one readable line (the traceback goes to the log).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from studio.engine.errors import EngineError
from studio.engine.requests import GenerateRequest, GenerateResult, StepInfo

log = logging.getLogger(__name__)


# -- PySide6 6.12.0 work-around -------------------------------------------------------------------
# SignalInstance.emit() there returns its bool result without a new reference, so every
# Python-side emit takes one reference from True; after a few thousand emits True is
# "deallocated" and the interpreter aborts (bool_dealloc). 6.11.x is fine. Detected once at
# import; every emit in the studio goes through `emit()`, which gives the reference back.


def _emit_steals_bool_ref() -> bool:
    class _Probe(QObject):
        sig = Signal()

    probe, n = _Probe(), 64
    before = sys.getrefcount(True)
    for _ in range(n):
        probe.sig.emit()
    lost = before - sys.getrefcount(True)
    for _ in range(max(0, lost)):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))  # repair what the probe took
    return lost >= n - 4


_EMIT_STEALS_BOOL_REF = _emit_steals_bool_ref()


def emit(signal, *args) -> None:
    """signal.emit(*args), safe on PySide6 versions whose emit() leaks a reference to True."""
    result = signal.emit(*args)
    if _EMIT_STEALS_BOOL_REF and isinstance(result, bool):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))


EngineFactory = Callable[[], Any]
Saver = Callable[[GenerateResult], list[Path]]


def default_engine_factory(device: str | None = None) -> EngineFactory:
    def make():
        from studio.engine.engine import Engine  # the only place the UI side reaches torch

        return Engine(device=device)

    return make


@dataclass
class Job:
    id: int
    kind: str  # "generate" or "call"
    label: str
    request: GenerateRequest | None = None
    fn: Callable[[Any], Any] | None = None
    save: Saver | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, done, cancelled, failed
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class JobOutput:
    """What `finished` carries for a generation: the result, where it was saved, the timeline."""

    result: GenerateResult
    paths: list[Path]
    timeline_x0: list[np.ndarray] = field(default_factory=list)  # small RGB per step (image 0)
    timeline_latent: list[np.ndarray] = field(default_factory=list)
    save_error: str = ""  # why the images could not be written, if they could not


def error_message(exc: BaseException) -> str:
    """One line an artist can read."""
    if isinstance(exc, EngineError):
        text = str(exc).strip() or type(exc).__name__
    elif isinstance(exc, MemoryError):
        text = "Out of memory: try a smaller size or batch"
    else:
        detail = str(exc).strip().splitlines()
        text = f"Unexpected error ({type(exc).__name__}): {detail[0] if detail else 'no details'}"
    return text.splitlines()[0] if text else "Unknown error"


class Worker(QObject):
    """`submit` / `cancel` from the UI thread; signals arrive on the UI thread (queued)."""

    queued = Signal(int)  # job_id
    started = Signal(int)
    step = Signal(int, int, int, float, object)  # job_id, step, total, elapsed s, preview ndarray|None
    finished = Signal(int, object)  # job_id, JobOutput
    call_done = Signal(int, object)  # job_id, return value of submit_call's function
    cancelled = Signal(int)
    failed = Signal(int, str)
    queue_changed = Signal()
    engine_ready = Signal()
    engine_failed = Signal(str)

    _step_ready = Signal()

    def __init__(self, engine_factory: EngineFactory | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._factory = engine_factory or default_engine_factory()
        self._engine: Any = None
        self._engine_error: str | None = None
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}
        self._current: Job | None = None
        self._stop = False
        self._load_engine = False
        self._thread: threading.Thread | None = None
        self._pending_step: tuple | None = None
        self._step_lock = threading.Lock()
        self._step_ready.connect(self._deliver_step)

    # -- UI-thread API ------------------------------------------------------------------------

    def start(self, preload: bool = True) -> None:
        """Start the engine thread; with preload, import the engine (torch) right away."""
        with self._cond:
            if self._thread is not None or self._stop:
                return
            self._load_engine = preload
            self._thread = threading.Thread(target=self._run, name="studio-engine", daemon=True)
            self._thread.start()

    def submit(self, request: GenerateRequest, save: Saver | None = None, label: str = "") -> int:
        job = Job(next(self._ids), "generate", label or request.prompt, request=request, save=save)
        return self._enqueue(job)

    def submit_call(self, fn: Callable[[Any], Any], label: str = "") -> int:
        """Run fn(engine) on the engine thread as a job (e.g. a full VAE decode of one step)."""
        return self._enqueue(Job(next(self._ids), "call", label, fn=fn))

    def cancel(self, job_id: int) -> bool:
        """A queued job is dropped at once; a running one stops at its next step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.state not in ("queued", "running"):
                return False
            job.cancel.set()
            dropped = job.state == "queued"
            if dropped:
                self._queue.remove(job)
                job.state = "cancelled"
                self._jobs.pop(job_id, None)
        if dropped:
            emit(self.cancelled, job_id)
            emit(self.queue_changed)
        return True

    def cancel_all(self) -> None:
        for job_id in [j.id for j in self.jobs()][::-1]:
            self.cancel(job_id)

    def current_job(self) -> Job | None:
        return self._current

    def jobs(self) -> list[Job]:
        """The running job (if any) then the queued ones, in order."""
        with self._cond:
            running = [self._current] if self._current is not None else []
            return running + list(self._queue)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Cancel everything, stop and join the engine thread. True when it has ended."""
        with self._cond:
            self._stop = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.cancel.set()
                job.state = "cancelled"
                self._jobs.pop(job.id, None)
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify_all()
            thread = self._thread
        for job in dropped:
            emit(self.cancelled, job.id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- internals ----------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> int:
        with self._cond:
            if self._stop:
                raise RuntimeError("the worker has been shut down")
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
        emit(self.queued, job.id)
        emit(self.queue_changed)
        self.start(preload=False)
        return job.id

    @Slot()
    def _deliver_step(self) -> None:
        with self._step_lock:
            pending, self._pending_step = self._pending_step, None
        if pending is not None:
            emit(self.step, *pending)

    def _post_step(self, job: Job, info: StepInfo) -> None:
        # Coalesce: if the UI has not taken the last preview yet, the newer one replaces it.
        item = (job.id, int(info.step), int(info.total), float(info.elapsed), info.preview)
        with self._step_lock:
            had_pending = self._pending_step is not None
            self._pending_step = item
        if not had_pending:
            emit(self._step_ready)

    def _ensure_engine(self) -> Any:
        if self._engine is None and self._engine_error is None:
            try:
                self._engine = self._factory()
            except Exception as exc:  # noqa: BLE001 - shown to the artist as a message
                log.exception("could not start the engine")
                self._engine_error = "Could not start the engine: " + error_message(exc)
                emit(self.engine_failed, self._engine_error)
                return None
            emit(self.engine_ready)
        return self._engine

    def _run(self) -> None:
        if self._load_engine:
            self._ensure_engine()
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    break
                job = self._queue.popleft()
                job.state = "running"
                self._current = job
            emit(self.queue_changed)
            emit(self.started, job.id)
            try:
                self._run_job(job)
            finally:
                with self._cond:
                    self._current = None
                    self._jobs.pop(job.id, None)
                emit(self.queue_changed)

    def _run_job(self, job: Job) -> None:
        engine = self._ensure_engine()
        if engine is None:
            job.state = "failed"
            emit(self.failed, job.id, self._engine_error or "The engine is not available")
            return
        if job.cancel.is_set():
            job.state = "cancelled"
            emit(self.cancelled, job.id)
            return
        try:
            if job.kind == "call":
                value = job.fn(engine)
                job.state = "done"
                emit(self.call_done, job.id, value)
                return
            result = engine.generate(job.request, lambda info: self._post_step(job, info), job.cancel)
            if result.cancelled:
                job.state = "cancelled"
                emit(self.cancelled, job.id)
                return
            # Written to disk (with metadata) before anyone is told: nothing is lost. If the disk
            # refuses, the images still go to the UI, with the reason, so they can be saved elsewhere.
            paths: list[Path] = []
            save_error = ""
            if job.save is not None:
                try:
                    paths = list(job.save(result))
                except Exception as exc:  # noqa: BLE001 - reported with the result
                    log.exception("saving job %s", job.id)
                    save_error = error_message(exc)
            out = JobOutput(result, paths, save_error=save_error)
            out.timeline_x0, out.timeline_latent = self._timeline(engine, result)
            job.state = "done"
            emit(self.finished, job.id, out)
        except Exception as exc:  # noqa: BLE001 - never let an exception cross into the UI
            if not isinstance(exc, EngineError):
                log.exception("job %s failed", job.id)
            job.state = "failed"
            emit(self.failed, job.id, error_message(exc))

    @staticmethod
    def _timeline(engine: Any, result: GenerateResult) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Small RGB previews of every kept step (image 0 of the batch), both views."""
        preview = getattr(engine, "latent_preview", None)
        if preview is None:
            return [], []
        model = result.request.model
        out: list[list[np.ndarray]] = [[], []]
        for i, stack in enumerate((result.x0, result.latents)):
            if stack is None:
                continue
            try:
                out[i] = [np.asarray(preview(model, stack[k, 0]), dtype=np.uint8) for k in range(len(stack))]
            except Exception:  # noqa: BLE001 - a missing timeline is not worth failing the run
                log.exception("could not build the step timeline")
                out[i] = []
        return out[0], out[1]
