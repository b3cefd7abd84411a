"""Turbo: the U-Net compiled with OpenVINO for the CPU (f32 exact, bf16 where the CPU has it).

    turbo_unet(unet, cache_key=..., precision="bf16" | "f32", on_progress=..., cancel=...) -> a drop-in U-Net

The first call for a cache key converts the torch U-Net (LoRAs already applied) to OpenVINO IR in the user cache
folder (minutes for SD 1.5: a job with progress and cancel); later calls, in this process or the next, read it.
Each input shape compiles once (OpenVINO's CACHE_DIR keeps the blob). `import openvino` happens on the first call
only. Failures are TurboUnavailable with one line; the caller then runs without turbo.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import cache, convert, runtime
from .cache import turbo_cache_dir, turbo_cache_usage
from .errors import TurboUnavailable, import_openvino

__all__ = ["TurboUnavailable", "clear_turbo_cache", "conversions", "turbo_cache_dir", "turbo_cache_usage",
           "turbo_unet"]

PRECISIONS = ("bf16", "f32")


def turbo_unet(unet: torch.nn.Module, *, cache_key: str, precision: str,
               on_progress: Callable[[float, str], None] | None = None,
               cancel: threading.Event | None = None) -> torch.nn.Module:
    """A drop-in replacement for the diffusers U-Net `unet`, backed by OpenVINO (see the module's doc)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    ov = import_openvino()
    convert.input_names(unet.config)  # refuses an unsupported U-Net before any work
    folder = convert.ensure_converted(unet, cache_key, precision, ov, on_progress, cancel)
    store = runtime.store_for(folder, precision, ov)
    return runtime.TurboUNet(unet, store, on_progress, cancel)


def clear_turbo_cache() -> int:
    """Remove the converted U-Nets and compiled blobs from disk (and forget the compiled ones in memory); the
    bytes freed."""
    runtime.forget_stores()
    return cache.clear_turbo_cache()


def __getattr__(name: str):
    if name == "conversions":  # the live counter, not a copy taken at import
        return convert.conversions
    raise AttributeError(name)


def entry_folder(cache_key: str) -> Path:
    """The cache folder of a key (tests, the benchmark's disk figure)."""
    return cache.entry_dir(cache_key, import_openvino().get_version())
