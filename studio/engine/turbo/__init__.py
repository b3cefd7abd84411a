"""Turbo: the U-Net compiled with OpenVINO for the CPU (f32 exact, bf16 where the CPU has it).

    turbo_unet(unet, cache_key=..., precision="bf16" | "f32", on_progress=..., cancel=...) -> a drop-in U-Net

One f32 IR per cache key serves both precisions (each compiled with its own hint). The first call for a cache key converts the torch U-Net (LoRAs already applied) to OpenVINO IR in the user cache
folder (minutes for SD 1.5: a job with progress and cancel); later calls, in this process or the next, read it.
Each input shape compiles once (OpenVINO's CACHE_DIR keeps the blob). `import openvino` happens on the first call
only. Failures are TurboUnavailable with one line; the caller then runs without turbo.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import cache, convert, runtime
from .cache import turbo_cache_dir, turbo_cache_usage
from .errors import TurboUnavailable, import_openvino

__all__ = ["TurboUnavailable", "clear_turbo_cache", "conversions", "is_cached", "turbo_cache_dir",
           "turbo_cache_usage", "turbo_unet"]

PRECISIONS = ("bf16", "f32")


def turbo_unet(unet: torch.nn.Module, *, cache_key: str, precision: str,
               on_progress: Callable[[float, str], None] | None = None,
               cancel: threading.Event | None = None, convert_missing: bool = True) -> torch.nn.Module:
    """A drop-in replacement for the diffusers U-Net `unet`, backed by OpenVINO (see the module's doc).
    `convert_missing=False`: only a conversion already in the cache (exact mode); TurboUnavailable otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    ov = import_openvino()
    convert.input_names(unet.config)  # refuses an unsupported U-Net before any work
    if not convert_missing and not cache.is_complete(cache.entry_dir(cache_key, ov.get_version())):
        raise TurboUnavailable("this model (and LoRA set) is not converted for this OpenVINO version")
    folder = convert.ensure_converted(unet, cache_key, precision, ov, on_progress, cancel)
    store = runtime.store_for(folder, precision, ov)
    return runtime.TurboUNet(unet, store, on_progress, cancel)


def is_cached(cache_key: str) -> bool:
    """Whether a conversion of `cache_key` is on disk (any OpenVINO version), read from the entries' meta.json
    without importing OpenVINO: exact mode asks this on every CPU run, and most have no turbo cache at all."""
    folder = cache.models_dir()
    if not folder.is_dir():
        return False
    for meta in folder.glob("*/meta.json"):
        try:
            if json.loads(meta.read_text()).get("key") == cache_key:
                return True
        except (OSError, ValueError):
            continue
    return False


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
