"""The one bridge between Qt and a backend: one engine thread, a queue of typed jobs, signals.

A backend is synchronous and single-threaded; this worker owns the only thread that touches it
(one GPU lane). The backend's slow start (torch, or a connection) happens on that thread, so
the window shows before it. The worker knows the `Backend` protocol only, never a concrete one.

Exceptions never cross into the UI as objects: an EngineError becomes its message, any other
exception one readable line (the traceback goes to the log).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from studio.backends.base import Backend, BackendInfo
from studio.core import grid
from studio.core.errors import EngineError, describe_error
from studio.core.grid import GridRequest
from studio.core.jobs import (
    DecodedStep,
    DecodeStep,
    JobKind,
    JobOutput,
    JobRequest,
    JobState,
    JobStatus,
    LoadModel,
    ModelLoaded,
    kind_of,
)
from studio.core.memory import MemoryOptions
from studio.core.requests import GenerateRequest, GenerateResult, StepInfo
from studio.qtcompat import emit

log = logging.getLogger(__name__)

Saver = Callable[[GenerateResult], list[Path]]
THREAD_NAME = "studio-engine"
HEALTH_EVERY = 3.0  # seconds between health checks of an idle backend that has one (a server may go away)


@dataclass
class _Job:
    id: int
    kind: JobKind
    label: str
    request: JobRequest
    save: Saver | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    state: JobState = JobState.QUEUED

    def status(self) -> JobStatus:
        return JobStatus(self.id, self.kind, self.state, self.label, self.request)


class Worker(QObject):
    """`submit` / `cancel` from the UI thread; signals arrive on the UI thread (queued)."""

    queued = Signal(int)  # job_id
    started = Signal(int)
    step = Signal(int, object)  # job_id, StepInfo
    finished = Signal(int, object)  # job_id, JobOutput (a generation; a grid's image)
    cell_finished = Signal(int, object)  # job_id, JobOutput: one finished cell of a grid, saved
    decoded = Signal(int, object)  # job_id, DecodedStep
    model_loaded = Signal(int, object)  # job_id, ModelLoaded
    cancelled = Signal(int)
    failed = Signal(int, str)
    queue_changed = Signal()
    engine_ready = Signal(object)  # BackendInfo, once started
    engine_failed = Signal(str)
    engine_lost = Signal(str)  # a started backend's health check failed: why (it is checked again, idle)
    engine_back = Signal()  # ...and passed again

    _step_ready = Signal()

    def __init__(self, backend: Backend, parent: QObject | None = None):
        super().__init__(parent)
        self._backend = backend
        self._info: BackendInfo = backend.info()  # cheap by contract: what is known before start
        self._started = False
        self._engine_error: str | None = None
        self._lost = False  # the last health check failed
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._current: _Job | None = None
        self._stop = False
        self._preload = False
        self._thread: threading.Thread | None = None
        self._pending_steps: list[tuple[int, StepInfo]] = []
        self._next_backend: Backend | None = None  # a switch asked for, done on the engine thread between jobs
        self._step_lock = threading.Lock()
        self._memory = MemoryOptions()  # the artist's memory settings, handed to the backend before each run
        self._step_ready.connect(self._deliver_step)

    # -- UI-thread API ------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        """What the backend can do (complete once `engine_ready` has been emitted)."""
        return self._info

    def switch_backend(self, backend: Backend) -> None:
        """Use another backend from the next job on: the running job finishes on the old one, which is then
        closed; the new one starts at once (engine_ready or engine_failed follows). Queued jobs run on it."""
        with self._cond:
            if self._thread is None:
                self._backend, self._info = backend, backend.info()
                self._started, self._engine_error = False, None
                return
            self._next_backend = backend
            self._cond.notify_all()

    def set_memory(self, memory: MemoryOptions) -> None:
        """Memory settings (slicing, VAE tiling, offload) for the runs that start from now on."""
        with self._cond:
            self._memory = memory

    def start(self, preload: bool = True) -> None:
        """Start the engine thread; with preload, start the backend (torch, a connection) right away."""
        with self._cond:
            if self._thread is not None or self._stop:
                return
            self._preload = preload
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def submit(self, request: JobRequest, save: Saver | None = None, label: str = "") -> int:
        """Queue a job: a GenerateRequest (saved by `save` before anyone is told), a DecodeStep or a
        LoadModel. Returns its id."""
        kind = kind_of(request)
        if not label:
            label = request.prompt if isinstance(request, GenerateRequest | GridRequest) else kind.value
        job = _Job(next(self._ids), kind, label, request, save=save if kind in (JobKind.GENERATE, JobKind.GRID) else None)
        with self._cond:
            if self._stop:
                raise RuntimeError("the worker has been shut down")
            self._queue.append(job)
            self._cond.notify_all()
        emit(self.queued, job.id)
        emit(self.queue_changed)
        self.start(preload=False)
        return job.id

    def cancel(self, job_id: int) -> bool:
        """A queued job is dropped at once; a running one stops at its next step."""
        with self._cond:
            job = self._find(job_id)
            if job is None:
                return False
            job.cancel.set()
            dropped = job.state is JobState.QUEUED
            if dropped:
                self._queue.remove(job)
                job.state = JobState.CANCELLED
        if dropped:
            emit(self.cancelled, job_id)
            emit(self.queue_changed)
        return True

    def cancel_all(self) -> None:
        for status in self.jobs()[::-1]:
            self.cancel(status.id)

    def jobs(self) -> list[JobStatus]:
        """The running job (if any) then the queued ones, in order."""
        with self._cond:
            running = [self._current] if self._current is not None else []
            return [j.status() for j in running + list(self._queue)]

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        """Cancel everything, stop and join the engine thread (which closes the backend). True when ended."""
        with self._cond:
            self._stop = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.cancel.set()
                job.state = JobState.CANCELLED
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

    def _find(self, job_id: int) -> _Job | None:
        if self._current is not None and self._current.id == job_id:
            return self._current
        return next((j for j in self._queue if j.id == job_id), None)

    @Slot()
    def _deliver_step(self) -> None:
        with self._step_lock:
            pending, self._pending_steps = self._pending_steps, []
        for item in pending:
            emit(self.step, *item)

    def _post_step(self, job: _Job, info: StepInfo) -> None:
        # Coalesce: if the UI has not taken the last preview yet, the newer one replaces it, within one
        # part of a run; a tile's last preview is kept, so every finished tile shows in place.
        with self._step_lock:
            had_pending = bool(self._pending_steps)
            last = self._pending_steps[-1] if had_pending else None
            if last is not None and last[0] == job.id and (last[1].stage, last[1].part) == (info.stage, info.part):
                self._pending_steps[-1] = (job.id, info)
            else:
                self._pending_steps.append((job.id, info))
        if not had_pending:
            emit(self._step_ready)

    def _ensure_started(self) -> bool:
        if not self._started and self._engine_error is None:
            try:
                self._info = self._backend.start()
            except Exception as exc:  # noqa: BLE001 - shown to the artist as a message
                log.exception("could not start the engine")
                self._engine_error = "Could not start the engine: " + describe_error(exc)
                emit(self.engine_failed, self._engine_error)
                return False
            self._started = True
            emit(self.engine_ready, self._info)
        return self._started

    def _run(self) -> None:
        try:
            if self._preload:
                self._ensure_started()
            while True:
                idle = False
                with self._cond:
                    while not self._queue and not self._stop and self._next_backend is None and not idle:
                        idle = not self._cond.wait(self._health_every())
                    if self._stop:
                        break
                    nxt, self._next_backend = self._next_backend, None
                    idle = idle and not self._queue
                if idle and nxt is None:
                    self._check_health()
                    continue
                if nxt is not None:
                    self._swap(nxt)
                    continue
                with self._cond:
                    if not self._queue:
                        continue
                    job = self._queue.popleft()
                    job.state = JobState.RUNNING
                    self._current = job
                emit(self.queue_changed)
                emit(self.started, job.id)
                try:
                    self._run_job(job)
                finally:
                    with self._cond:
                        self._current = None
                    emit(self.queue_changed)
        finally:
            if self._started:
                try:
                    self._backend.close()
                except Exception:  # noqa: BLE001 - closing must not keep the window from quitting
                    log.exception("closing the backend")

    def _health_every(self) -> float | None:
        """How long to wait idle before a health check; None (forever) for a backend not started."""
        return HEALTH_EVERY if self._started else None

    def _check_health(self) -> None:
        """Ask the backend (on this thread, between jobs; the backend keeps it short) and say when it changes."""
        try:
            problem = self._backend.health()
        except Exception as exc:  # noqa: BLE001 - a failing check is a lost engine, not a dead thread
            log.exception("health check")
            problem = describe_error(exc)
        if bool(problem) == self._lost:
            return
        self._lost = bool(problem)
        if problem:
            emit(self.engine_lost, problem)
        else:
            emit(self.engine_back)

    def _swap(self, backend: Backend) -> None:
        if self._started:
            try:
                self._backend.close()
            except Exception:  # noqa: BLE001 - the old backend's trouble is not the new one's
                log.exception("closing the backend")
        self._backend, self._info = backend, backend.info()
        self._started, self._engine_error, self._lost = False, None, False
        self._ensure_started()

    def _run_job(self, job: _Job) -> None:
        if not self._ensure_started():
            job.state = JobState.FAILED
            emit(self.failed, job.id, self._engine_error or "The engine is not available")
            return
        if job.cancel.is_set():
            job.state = JobState.CANCELLED
            emit(self.cancelled, job.id)
            return
        try:
            if job.kind is JobKind.GENERATE:
                self._generate(job)
            elif job.kind is JobKind.GRID:
                self._grid(job)
            elif job.kind is JobKind.DECODE_STEP:
                req = job.request
                assert isinstance(req, DecodeStep)
                image = self._backend.decode_step(req.model, req.latent)
                job.state = JobState.DONE
                emit(self.decoded, job.id, DecodedStep(req.step, image))
            elif job.kind is JobKind.LOAD_MODEL:
                req = job.request
                assert isinstance(req, LoadModel)
                self._backend.load(req.model)
                job.state = JobState.DONE
                emit(self.model_loaded, job.id, ModelLoaded(req.model))
        except Exception as exc:  # noqa: BLE001 - never let an exception cross into the UI
            if not isinstance(exc, EngineError):
                log.exception("job %s failed", job.id)
            job.state = JobState.FAILED
            emit(self.failed, job.id, describe_error(exc))

    def _grid(self, job: _Job) -> None:
        """A grid's cells one after the other on this lane: each saved and handed out as it finishes (the gallery
        gets it), then the labelled grid, saved with the first cell's parameters and the axes. A cancel keeps the
        finished cells."""
        request = job.request
        assert isinstance(request, GridRequest)
        with self._cond:
            memory = self._memory
        self._backend.set_memory(memory)

        def on_cell(_i: int, result: GenerateResult) -> None:
            emit(self.cell_finished, job.id, self._output(job, result))

        outcome = grid.run(request, self._backend.generate, lambda info: self._post_step(job, info), job.cancel, on_cell)
        if outcome.cancelled:
            job.state = JobState.CANCELLED
            emit(self.cancelled, job.id)
            return
        out = self._output(job, grid.grid_result(request, outcome))
        job.state = JobState.DONE
        emit(self.finished, job.id, out)

    def _output(self, job: _Job, result: GenerateResult) -> JobOutput:
        paths: list[Path] = []
        save_error = ""
        if job.save is not None:
            try:
                paths = list(job.save(result))
            except Exception as exc:  # noqa: BLE001 - reported with the result
                log.exception("saving job %s", job.id)
                save_error = describe_error(exc)
                paths = list(getattr(exc, "paths", []))  # a SaveError: the images saved before the disk refused
        return JobOutput(result, paths, timeline_x0=list(result.step_previews.get("x0", [])),
                         timeline_latent=list(result.step_previews.get("latent", [])), save_error=save_error)  # fmt: skip

    def _generate(self, job: _Job) -> None:
        request = job.request
        assert isinstance(request, GenerateRequest)
        with self._cond:
            memory = self._memory
        self._backend.set_memory(memory)
        result = self._backend.generate(request, lambda info: self._post_step(job, info), job.cancel)
        if result.cancelled:
            job.state = JobState.CANCELLED
            emit(self.cancelled, job.id)
            return
        # Written to disk (with metadata) before anyone is told: nothing is lost. If the disk
        # refuses, the images still go to the UI, with the reason, so they can be saved elsewhere.
        out = self._output(job, result)
        job.state = JobState.DONE
        emit(self.finished, job.id, out)
