"""The static proof that every backend satisfies the `Backend` protocol: the type checker (mypy, run by
tests/test_types.py) checks these returns. Nothing imports this module at run time."""

from __future__ import annotations

from .base import Backend
from .comfyui.backend import ComfyUIBackend
from .fake import DemoBackend, FakeBackend
from .local import LocalBackend


def backends(local: LocalBackend, fake: FakeBackend, demo: DemoBackend, comfy: ComfyUIBackend) -> list[Backend]:
    return [local, fake, demo, comfy]
