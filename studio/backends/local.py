"""The local diffusers engine as a Backend. torch and diffusers load in `start()`, on the engine thread."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from studio.core.memory import MemoryOptions
from studio.core.requests import UPSCALE_MODES, GenerateRequest, GenerateResult
from studio.core.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from studio.core.speed import SPEEDS
from studio.paths import BUILTIN_UPSCALERS_DIR, MODELS_DIR

from .base import BackendInfo, StepCallback

if TYPE_CHECKING:
    from studio.engine.engine import Engine

log = logging.getLogger(__name__)
MODES = ("txt2img", "img2img", "inpaint", "upscale")


class LocalBackend:
    """studio.engine.Engine behind the Backend protocol; the engine is built on first use."""

    def __init__(self, device: str | None = None, threads: int | None = None, model_folders=(),
                 memory: MemoryOptions | None = None):  # fmt: skip
        self._device = device
        self._memory = memory or MemoryOptions()
        self._threads = threads
        self._folders = [Path(f) for f in model_folders]
        self._engine: Engine | None = None
        self._info = BackendInfo(
            name="Local engine", modes=MODES, upscale_modes=UPSCALE_MODES, samplers=tuple(SAMPLER_NAMES), schedules=tuple(SCHEDULE_NAMES),
            keeps_latents=True, decodes_steps=True, preview_kinds=("x0", "latent"), speeds=SPEEDS,
        )  # fmt: skip

    def info(self) -> BackendInfo:
        return self._info

    def start(self) -> BackendInfo:
        if self._engine is None:
            from studio.engine.engine import Engine  # torch: only here, on the engine thread

            self._engine = Engine(device=self._device, threads=self._threads, model_folders=self._folders)
            self._engine.set_memory(self._memory)
            from studio.engine.speed import default_speed

            self._info = dataclasses.replace(self._info, devices=_available_devices(),
                                             device=str(self._engine.device), upscalers=self._upscalers(),
                                             default_speed=default_speed(self._engine.device),
                                             notice=self._engine.notice)  # fmt: skip
        return self._info

    def _upscalers(self) -> tuple[tuple[str, str], ...]:
        """Upscaler model files in the model folders (spandrel knows them), as (path, label)."""
        try:
            from studio.engine.upscalers import scan_upscalers

            found = scan_upscalers([MODELS_DIR, BUILTIN_UPSCALERS_DIR, *self._folders])
        except Exception:  # noqa: BLE001 - no upscaler list is no reason to refuse to start
            log.exception("scanning for upscaler models")
            return ()
        return tuple((str(u.path), f"{u.name} ({u.architecture} x{u.scale:g})") for u in found)

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
        previews: dict[str, list[np.ndarray]] = dict(result.step_previews)  # a hires run's come made
        for kind, stack in (("x0", result.x0), ("latent", result.latents)):
            if stack is not None and kind not in previews:
                model = result.request.model
                previews[kind] = [np.asarray(engine.latent_preview(model, stack[k, 0]), np.uint8)
                                  for k in range(len(stack))]  # fmt: skip
        return dataclasses.replace(result, step_previews=previews)

    def health(self) -> str:
        return ""  # nothing to lose: the engine is in this process

    def set_memory(self, memory: MemoryOptions) -> None:
        self._memory = memory
        if self._engine is not None:
            self._engine.set_memory(memory)  # slicing and tiling at once; a new offload reloads at the next run

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
