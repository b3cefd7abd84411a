"""The session's book of the jobs it submitted: kind, label, progress (no Qt).

Worker signals carry job ids; the book says what kind of job each id is, so the session routes
by kind (a decode finishing is not a generation finishing).
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.jobs import JobKind, JobState

from .runplan import RunPlan


@dataclass
class TrackedJob:
    id: int
    kind: JobKind
    label: str
    total: int = 0  # steps
    step: int = 0
    width: int = 0  # what a generation asked for; 0: the model's native size
    height: int = 0
    plan: RunPlan | None = None  # a generation's: where its live previews go on the canvas (loads and decodes: None)
    region: tuple[tuple[int, int, int, int], int] | None = None  # a region refine's selection and feather (px)


@dataclass
class JobView:
    """A row of the visible queue."""

    id: int
    label: str
    state: str  # queued or running
    step: int = 0
    total: int = 0


class JobBook:
    def __init__(self) -> None:
        self._jobs: dict[int, TrackedJob] = {}
        self.running: int | None = None  # the generation on screen now

    def add(self, job: TrackedJob) -> TrackedJob:
        self._jobs[job.id] = job
        return job

    def get(self, job_id: int) -> TrackedJob | None:
        return self._jobs.get(job_id)

    def kind(self, job_id: int) -> JobKind | None:
        job = self._jobs.get(job_id)
        return job.kind if job is not None else None

    def pop(self, job_id: int) -> TrackedJob | None:
        if job_id == self.running:
            self.running = None
        return self._jobs.pop(job_id, None)

    def views(self, statuses) -> list[JobView]:
        """Rows for the generations among the worker's job statuses, in their order."""
        out = []
        for status in statuses:
            if status.kind not in (JobKind.GENERATE, JobKind.GRID):
                continue
            job = self._jobs.get(status.id)
            step, total = (job.step, job.total) if job is not None else (0, 0)
            state = "running" if status.state is JobState.RUNNING else "queued"
            out.append(JobView(status.id, job.label if job else status.label, state, step, total))
        return out
