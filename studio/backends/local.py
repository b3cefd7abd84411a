"""The local diffusers engine as a Backend. torch and diffusers load in `start()`, on the engine thread."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from studio.engine.requests import GenerateRequest, GenerateResult
from studio.engine.samplers import SAMPLER_NAMES, SCHEDULE_NAMES

from .base import BackendInfo, StepCallback

MODES = ("txt2img", "img2img", "inpaint")


class LocalBackend:
    """studio.engine.Engine behind the Backend protocol; the engine is built on first use."""

    def __init__(self, device: str | None = None, threads: int | None = None):
        self._device = device
        self._threads = threads
        self._engine = None
        self._info = BackendInfo(
            name="Local engine", modes=MODES, samplers=tuple(SAMPLER_NAMES), schedules=tuple(SCHEDULE_NAMES),
            keeps_latents=True, decodes_steps=True, preview_kinds=("x0", "latent"),
        )  # fmt: skip

    def info(self) -> BackendInfo:
        return self._info

    def start(self) -> BackendInfo:
        if self._engine is None:
            from studio.engine.engine import Engine  # torch: only here, on the engine thread

            self._engine = Engine(device=self._device, threads=self._threads)
            self._info = dataclasses.replace(self._info, devices=_available_devices(),
                                             device=str(self._engine.device))  # fmt: skip
        return self._info

    @property
    def engine(self):
        self.start()
        return self._engine

    def load(self, model: str | None) -> None:
        self.engine.load(model)

    def generate(
        self, request: GenerateRequest, on_step: StepCallback | None = None, cancel: threading.Event | None = None
    ) -> GenerateResult:
        engine = self.engine
        result = engine.generate(request, on_step, cancel)
        if result.cancelled or request.preview == "none":
            return result
        previews: dict[str, list[np.ndarray]] = {}
        for kind, stack in (("x0", result.x0), ("latent", result.latents)):
            if stack is not None:
                model = result.request.model
                previews[kind] = [np.asarray(engine.latent_preview(model, stack[k, 0]), np.uint8)
                                  for k in range(len(stack))]  # fmt: skip
        return dataclasses.replace(result, step_previews=previews)

    def decode_step(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        return self.engine.decode_latent(model, latent)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.unload()


def _available_devices() -> tuple[str, ...]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.insert(0, "mps")
    return tuple(found)
