"""The one interface the worker drives: a `Backend` (no Qt).

Synchronous by contract and driven from one thread (the worker's engine thread): a backend
never starts threads of its own for the caller to join, and is never called from two threads.
Construction is cheap (no torch import, no network); `start()` does the heavy part on that thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from studio.core.errors import EngineError
from studio.core.memory import MemoryOptions
from studio.core.requests import GenerateRequest, GenerateResult, StepInfo

StepCallback = Callable[[StepInfo], None]


class UnsupportedError(EngineError):
    """The backend cannot do this (a remote server keeps no latents to decode, say)."""


@dataclass(frozen=True)
class BackendInfo:
    """What a backend can do. Before `start()` it holds what is known without loading anything."""

    name: str  # shown in the status bar: "Local engine", "Demo", "ComfyUI 0.27"
    modes: tuple[str, ...] = ("txt2img",)  # the panel offers only these (studio.core.requests.MODES)
    upscale_modes: tuple[str, ...] = ()  # the upscale methods it runs (studio.core.requests.UPSCALE_MODES)
    samplers: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ()
    keeps_latents: bool = False  # results carry every step's latent
    decodes_steps: bool = False  # decode_step() works on a kept latent
    preview_kinds: tuple[str, ...] = ("x0",)  # per-step preview views it can send: the preview's choices
    upscalers: tuple[tuple[str, str], ...] = ()  # (id to put in a request, label: name, architecture, scale)
    devices: tuple[str, ...] = ()  # where it can run, once started (the status bar's tooltip lists them)
    device: str = ""  # the one in use, once started
    version: str = ""
    # A remote backend lists its own files as (id to put in a request, label); a local one leaves these empty
    # and the studio lists the model folders itself.
    remote_files: bool = False
    models: tuple[tuple[str, str], ...] = ()
    vaes: tuple[tuple[str, str], ...] = ()
    loras: tuple[tuple[str, str], ...] = ()
    embeddings: tuple[tuple[str, str], ...] = ()
    controlnets: tuple[tuple[str, str], ...] = ()  # a remote backend's ControlNet files (ControlNetLoader's list)
    notice: str = ""  # said once to the artist when it starts (e.g. why another backend was not used)
    # The speed modes it runs (studio.core.speed; none: the panel disables the choice) and its default on its device.
    speeds: tuple[str, ...] = ()
    default_speed: str = "exact"

    def why_no_decode(self) -> str:
        return "" if self.decodes_steps else f"{self.name} keeps no latents: a step can only be shown as previewed"


@runtime_checkable
class Backend(Protocol):
    def info(self) -> BackendInfo:
        """What it can do; cheap, and valid before start()."""
        ...

    def start(self) -> BackendInfo:
        """Import, connect, pick the device: the slow part, on the engine thread. Raises to refuse."""
        ...

    def load(self, model: str | None) -> None:
        """Load and cache a model (None: the backend's default) so the next run starts at once."""
        ...

    def generate(
        self, request: GenerateRequest, on_step: StepCallback | None = None, cancel: threading.Event | None = None
    ) -> GenerateResult:
        """Run one request. on_step after every step; a set `cancel` ends the run at the next step
        with `cancelled=True`. Fills `step_previews` for the timeline. Raises EngineError for the artist."""
        ...

    def health(self) -> str:
        """"" while it can run jobs, else the one line to show (a server that stopped answering). Asked by the
        worker between jobs, every few seconds while idle: keep it short. A local engine is always healthy."""
        ...

    def set_memory(self, memory: MemoryOptions) -> None:
        """Memory settings (attention slicing, VAE tiling, CPU offload) for the next run: the artist's settings,
        not a run's parameters. A backend without such knobs keeps them and does nothing."""
        ...

    def decode_step(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        """Full decode of one kept latent (C, h, w) -> HxWx3 uint8; UnsupportedError where
        `info().decodes_steps` is false."""
        ...

    def close(self) -> None:
        """Free what it holds (weights, connections); called once, from the engine thread."""
        ...
