"""The step timeline of the last run: live previews as they arrive, then every kept step (no Qt)."""

from __future__ import annotations

import numpy as np

from studio.core.jobs import DecodeStep, JobOutput

VIEWS = ("x0", "latent")


class StepTimeline:
    """Steps are 1-based. `view` is "x0" (the model's estimate) or "latent" (the noisy latent)."""

    def __init__(self, view: str = "x0"):
        self.view = view if view in VIEWS else "x0"
        self.live: dict[int, np.ndarray] = {}
        self.frames: dict[str, list[np.ndarray]] = {}
        self.output: JobOutput | None = None
        self.selected = 0
        self.asked = 0  # the steps a cancelled run was asked for (0: the run finished)

    def reset(self) -> None:
        self.live, self.frames, self.output, self.selected, self.asked = {}, {}, None, 0, 0

    def stopped(self, asked: int) -> None:
        """The run was cancelled: its timeline holds the steps done out of `asked`."""
        self.asked = asked

    def label(self, step: int) -> str:
        """'step 3/5'; 'step 3/20, cancelled' for a run stopped at 3 of 20."""
        if self.asked:
            return f"step {step}/{self.asked}, cancelled"
        return f"step {step}/{self.length()}"

    def add_live(self, step: int, preview: np.ndarray) -> None:
        self.live[step] = preview

    def finish(self, out: JobOutput) -> None:
        self.output = out
        self.frames = {"x0": list(out.timeline_x0), "latent": list(out.timeline_latent)}

    def _frames(self) -> list[np.ndarray]:
        return self.frames.get(self.view) or []

    def length(self) -> int:
        frames = self._frames()
        if frames:
            return len(frames)
        return max(self.live) if self.live else 0

    def preview(self, step: int) -> np.ndarray | None:
        frames = self._frames()
        if frames:
            return frames[step - 1] if 1 <= step <= len(frames) else None
        return self.live.get(step)

    def _stack(self) -> np.ndarray | None:
        if self.output is None:
            return None
        result = self.output.result
        return result.x0 if self.view == "x0" else result.latents

    def has_latents(self) -> bool:
        return self._stack() is not None

    def decode_request(self, step: int) -> DecodeStep | str:
        """The job that decodes this step, or why there is none (a message for the artist)."""
        if self.output is None:
            return "Nothing to decode yet: run a generation first"
        stack = self._stack()
        if stack is None or not 1 <= step <= len(stack):
            return "This run kept no latents to decode"
        return DecodeStep(self.output.result.request.model, step, stack[step - 1, 0])
