"""Control (ControlNet) vocabulary shared by the UI, the worker and the engine: torch-free, Qt-free.

A control is one ControlNet applied to a run: its model file or folder, the control image it sees (already
preprocessed: edges, scribble, depth...), a weight, the fraction of the steps it acts in, and A1111's control mode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import RequestError

# A1111's ControlNet extension's names for the three control modes.
CONTROL_MODES: tuple[str, ...] = ("Balanced", "My prompt is more important", "ControlNet is more important")
# The preprocessors ("modules" in A1111's metadata): "none" takes the control image as it is (a scribble drawn on
# a control layer, an edge map made elsewhere); the others are run on a source image by studio.core.preprocess.
CONTROL_MODULES: tuple[str, ...] = ("none", "scribble", "lineart", "softedge", "canny", "depth", "pose", "tile")
MAX_CONTROLS = 4


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet in a request. `image` is HxWx3 uint8, what the ControlNet sees (white lines on black for
    scribble/canny/lineart as the models were trained); the engine resizes it to the run's size when it differs
    and says so in the result's notes."""

    model: str  # a ControlNet file or folder (or a library name)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    module: str = "none"  # the preprocessor that made `image` (metadata: A1111's "Module")
    weight: float = 1.0
    start: float = 0.0  # fraction of the steps where it starts acting (A1111's Guidance Start)
    end: float = 1.0  # ... and stops (Guidance End)
    mode: str = "Balanced"

    def __post_init__(self) -> None:
        if self.image is not None:
            a = np.array(self.image, dtype=np.uint8, copy=True)  # copied at submit, as the init image is
            if a.ndim == 2:
                a = np.repeat(a[:, :, None], 3, axis=2)
            a.setflags(write=False)
            object.__setattr__(self, "image", a)

    def replace(self, **changes) -> ControlSpec:
        return dataclasses.replace(self, **changes)

    def validate(self, index: int = 0) -> None:
        what = f"Control {index}"
        if not isinstance(self.model, str) or not self.model.strip():
            raise RequestError(f"{what} needs a ControlNet model")
        if self.image is None:
            raise RequestError(f"{what} has no control image: draw on the control layer or run a preprocessor")
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise RequestError(f"{what}'s image must be HxWx3, got shape {self.image.shape}")
        if self.module not in CONTROL_MODULES:
            raise RequestError(f"{what}: unknown preprocessor {self.module!r}; use one of {', '.join(CONTROL_MODULES)}")
        if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 2.0):
            raise RequestError(f"{what}: the weight must be between 0 and 2, got {self.weight}")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise RequestError(f"{what}: start and end must satisfy 0 <= start < end <= 1, got {self.start}, {self.end}")
        if self.mode not in CONTROL_MODES:
            raise RequestError(f"{what}: unknown control mode {self.mode!r}; use one of {', '.join(CONTROL_MODES)}")


def validate_controls(controls: tuple[ControlSpec, ...]) -> None:
    if len(controls) > MAX_CONTROLS:
        raise RequestError(f"At most {MAX_CONTROLS} controls at once, got {len(controls)}")
    for i, c in enumerate(controls):
        if not isinstance(c, ControlSpec):
            raise RequestError(f"Control {i} is not a control: {c!r}")
        c.validate(i)
