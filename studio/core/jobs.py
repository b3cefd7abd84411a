"""What the worker runs: typed job requests, their kinds and states, and their outputs (no Qt).

The session submits these and the worker hands each to the backend; nothing else crosses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .grid import GridRequest
from .requests import GenerateRequest, GenerateResult


class JobKind(enum.Enum):
    GENERATE = "generate"
    DECODE_STEP = "decode step"
    LOAD_MODEL = "load model"
    GRID = "grid"  # a comparison grid's cells, one job (studio.core.grid)


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class LoadModel:
    """Load (and cache) a model ahead of the first run: None is the built-in model."""

    model: str | None = None


@dataclass(frozen=True)
class DecodeStep:
    """The full decode of one kept step of a finished run (1-based step)."""

    model: str | None
    step: int
    latent: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        latent = np.array(self.latent, copy=True)
        latent.setflags(write=False)
        object.__setattr__(self, "latent", latent)


JobRequest = GenerateRequest | DecodeStep | LoadModel | GridRequest

_KINDS: dict[type, JobKind] = {GenerateRequest: JobKind.GENERATE, DecodeStep: JobKind.DECODE_STEP,
                               LoadModel: JobKind.LOAD_MODEL, GridRequest: JobKind.GRID}  # fmt: skip


def kind_of(request: JobRequest) -> JobKind:
    try:
        return _KINDS[type(request)]
    except KeyError:
        raise TypeError(f"not a job request: {type(request).__name__}") from None


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job for the UI side: what it is and where it stands."""

    id: int
    kind: JobKind
    state: JobState
    label: str
    request: JobRequest = field(repr=False)


@dataclass
class JobOutput:
    """What a finished generation hands the UI: the result, where it was saved, the step timeline."""

    result: GenerateResult
    paths: list[Path]
    timeline_x0: list[np.ndarray] = field(default_factory=list)  # small RGB per step (image 0)
    timeline_latent: list[np.ndarray] = field(default_factory=list)
    save_error: str = ""  # why the images could not be written, if they could not


@dataclass(frozen=True)
class DecodedStep:
    step: int
    image: np.ndarray = field(repr=False)  # HxWx3 uint8


@dataclass(frozen=True)
class ModelLoaded:
    model: str | None  # as requested: None is the built-in model
