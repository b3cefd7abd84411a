"""Shared fixtures: no network, offline hub, tiny random-weight pipelines built once per session."""

from __future__ import annotations

import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("STUDIO_DEVICE", "cpu")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkBlocked(RuntimeError):
    pass


def _guard(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise NetworkBlocked(f"network access attempted in a test: {address!r}")


def _connect(self, address):
    _guard(self, address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _guard(self, address)
    return _real_connect_ex(self, address)


def _getaddrinfo(*args, **kwargs):
    raise NetworkBlocked(f"DNS lookup attempted in a test: {args[:2]!r}")


# Any use of the network (a hub download, telemetry) fails the suite. Unix sockets stay allowed.
socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight SD-architecture txt2img pipeline folder (a few MB)."""
    from studio.engine.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", "txt2img", seed=0))


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory) -> str:
    """The same with a 9-channel inpainting U-Net."""
    from studio.engine.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpaint", "inpaint", seed=1))


@pytest.fixture(scope="session")
def engine():
    from studio.engine.engine import Engine

    return Engine(device="cpu")
