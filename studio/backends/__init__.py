"""Backends: what the worker drives. `Backend` (the protocol), `LocalBackend` (diffusers on this
machine), `FakeBackend` / `DemoBackend` (deterministic, for tests, benchmarks and `--demo`).

Importing this package loads neither Qt nor torch.
"""

from .base import Backend, BackendInfo, StepCallback, UnsupportedError

__all__ = ["Backend", "BackendInfo", "StepCallback", "UnsupportedError"]
