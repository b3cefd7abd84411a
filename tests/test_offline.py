"""No network but the server the artist named: every mode runs with each connection attempt recorded.

The suite blocks IPv4/IPv6 sockets and DNS (tests/conftest.py), but code that swallows the error would pass
silently; these tests record every attempt, so one that was tried and caught still fails them."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from studio.core.requests import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from fake_comfyui import FakeComfy, allow_loopback  # noqa: E402


@pytest.fixture
def attempts(monkeypatch):
    """Every connect / DNS lookup made while the test runs, whatever happens to it."""
    return record(monkeypatch)


def record(monkeypatch) -> list[object]:
    """Wrap the socket functions as they are now (blocked, or loopback-only) to record each attempt."""
    seen: list[object] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def rec_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(address)
        return connect(sock, address)

    def rec_connect_ex(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(address)
        return connect_ex(sock, address)

    def rec_getaddrinfo(host, *args, **kwargs):
        seen.append(("dns", host))
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", rec_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", rec_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", rec_getaddrinfo)
    return seen


def _image(h: int = 64, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], -1).astype(np.uint8)


def test_every_local_mode_runs_without_a_connection_attempt(attempts, engine, tiny_model, tiny_inpaint_model,
                                                            tiny_x4_model, tiny_sr_file):  # fmt: skip
    image = _image()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    base = dict(prompt="a red circle", steps=2, seed=3, cfg=5.0)
    runs = [
        GenerateRequest.from_fields(**base, model=tiny_model, width=64, height=64),
        GenerateRequest.from_fields(**base, model=tiny_model, mode="img2img", init_image=image, strength=1.0),
        GenerateRequest.from_fields(**base, model=tiny_inpaint_model, mode="inpaint", init_image=image, mask=mask,
                                    strength=1.0),
        GenerateRequest.from_fields(**base, model=tiny_model, mode="upscale", init_image=image[:32, :32],
                                    upscale_mode="diffusion", strength=1.0),
        GenerateRequest.from_fields(**base, mode="upscale", init_image=image[:32, :32], upscale_mode="resize"),
        GenerateRequest.from_fields(**base, mode="upscale", init_image=image[:16, :16], upscale_mode="model",
                                    upscaler=tiny_sr_file),
        GenerateRequest.from_fields(**base, model=tiny_x4_model, mode="upscale", init_image=image[:16, :16],
                                    upscale_mode="latent", scale=4.0, strength=1.0),
    ]  # fmt: skip
    for request in runs:
        result = engine.generate(request)
        assert result.images and result.images[0].any(), request.mode
    assert attempts == []


def test_the_cli_makes_no_connection_attempt(tmp_path):
    """A CLI run in its own process, with a guard that records (and refuses) every attempt."""
    log = tmp_path / "attempts.txt"
    code = textwrap.dedent(f"""
        import socket, sys
        log = open({str(log)!r}, "w")
        real = socket.socket.connect
        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                log.write(repr(address) + "\\n"); log.flush()
                raise OSError("network blocked")
            return real(sock, address)
        def getaddrinfo(host, *a, **k):
            log.write(repr(("dns", host)) + "\\n"); log.flush()
            raise OSError("network blocked")
        socket.socket.connect = connect
        socket.getaddrinfo = getaddrinfo
        from studio.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    out = subprocess.run([sys.executable, "-c", code, "generate", "--prompt", "a red circle", "--steps", "2",
                          "--seed", "1", "--out", str(tmp_path / "out"), "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "out").glob("*.png"))
    assert log.read_text() == ""


def test_on_a_server_the_only_connections_go_to_it(monkeypatch):
    from studio.backends.comfyui.backend import ComfyUIBackend

    with allow_loopback(), monkeypatch.context() as m:
        attempts = record(m)
        server = FakeComfy(cache=False).start()
        backend = ComfyUIBackend(server.url)
        try:
            backend.start()
            result = backend.generate(GenerateRequest(prompt="a lighthouse", steps=2, seed=1, width=64, height=64))
        finally:
            backend.close()
            server.stop()
    assert result.images
    hosts = {a[:2] if isinstance(a, tuple) else a for a in attempts}
    assert hosts and hosts <= {("127.0.0.1", server.port), ("dns", "127.0.0.1")}, hosts
