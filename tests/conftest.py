"""Shared fixtures: no network, offline hub, tiny random-weight pipelines built once per session."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("STUDIO_DEVICE", "cpu")
# The hash cache and autosaves go to a folder of the run, never the user's (tests that care set their own).
os.environ.setdefault("LATENT_STUDIO_DATA_DIR", tempfile.mkdtemp(prefix="studio-test-data-"))
# No command under test starts or uses a warm engine (studio.serve) unless the test owns it (tests/test_serve.py).
os.environ["STUDIO_NO_SERVER"] = "1"
os.environ["STUDIO_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="studio-test-rt-")
# Exact mode stays on torch unless a test asks for OpenVINO f32 (tests/test_exact_openvino.py): a turbo conversion
# cached by one test would otherwise move later exact runs by up to 1/255, and the equality tests compare pixels.
os.environ["STUDIO_EXACT_OPENVINO"] = "0"
os.environ.setdefault("LATENT_STUDIO_CACHE_DIR", tempfile.mkdtemp(prefix="studio-test-cache-"))  # turbo conversions

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


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (the trainings' results are bit for bit the same only there)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight SD-architecture txt2img pipeline folder (a few MB)."""
    from studio.testing.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd", "txt2img", seed=0))


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory) -> str:
    """The same with a 9-channel inpainting U-Net."""
    from studio.testing.tiny import build_tiny_pipeline

    return str(build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpaint", "inpaint", seed=1))


@pytest.fixture(scope="session")
def engine():
    from studio.engine.engine import Engine

    return Engine(device="cpu")


@pytest.fixture(scope="session")
def tiny_x4_model(tmp_path_factory) -> str:
    """A random-weight pipeline of the SD x4 upscaler's layout (7-channel U-Net, 4x VAE; 32 px input tiles)."""
    from studio.testing.tiny import build_tiny_upscaler

    return str(build_tiny_upscaler(tmp_path_factory.mktemp("models") / "tiny-x4", seed=2))


@pytest.fixture(scope="session")
def tiny_sr_file(tmp_path_factory) -> str:
    """A random-weight Real-ESRGAN Compact x4 upscaler file (spandrel's SRVGGNetCompact, ~10 KB safetensors)."""
    import torch
    from safetensors.torch import save_file

    from studio.engine.upscalers import import_spandrel

    import_spandrel()
    import spandrel.architectures.Compact as compact

    torch.manual_seed(0)
    net = compact.Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    path = tmp_path_factory.mktemp("upscalers") / "tiny-compact-x4.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)
