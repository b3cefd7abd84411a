"""The warm engine (studio.serve): what crosses the socket, the same pixels and metadata as a run in the command's
own process, a command that imports no torch, the private folder, cancel, stop and the idle exit.

Every engine here is the test's own, in its own 0700 folder, and is killed at the end (conftest sets
STUDIO_NO_SERVER=1, so no other test starts one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.core.metadata import read_parameters
from studio.core.requests import GenerateRequest, GenerateResult, StepInfo
from studio.serve import client, runtime, wire

ROOT = Path(__file__).resolve().parent.parent


# -- what crosses the socket ---------------------------------------------------------------------


def _roundtrip(message: dict) -> dict:
    import socket

    a, b = socket.socketpair()
    with a, b:
        done = threading.Thread(target=wire.send, args=(a, message))
        done.start()
        got = wire.receive(b)
        done.join()
    return got


def test_a_request_and_a_result_cross_the_socket_whole():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    req = GenerateRequest.from_fields(prompt="a red, circle: é", mode="inpaint", init_image=image, mask=mask, seed=7,
                                      loras=(("style", 0.5),), mask_blur=3, inpaint_area="masked", upscale_mode="resize",
                                      scale=3.0)  # fmt: skip
    res = GenerateResult(images=[image], request=req, seeds=[7], timings={"load": 0.5}, extra_params={"VAE": "x"},
                         latents=rng.standard_normal((2, 1, 4, 3, 4)).astype(np.float16), crop=(1, 2, 3, 4))  # fmt: skip
    got = _roundtrip({"request": req, "result": res, "info": StepInfo(3, 20, 1.5, stage="tile", region=(0, 0, 8, 8))})
    assert got["request"] == req  # every compared field, the nested options and the tuples included
    assert np.array_equal(got["request"].init_image, image) and np.array_equal(got["request"].mask, mask)
    r = got["result"]
    assert np.array_equal(r.images[0], image) and r.images[0].dtype == np.uint8
    assert r.latents.dtype == np.float16 and np.array_equal(r.latents, res.latents)
    assert (r.seeds, r.timings, r.extra_params, r.crop) == ([7], {"load": 0.5}, {"VAE": "x"}, (1, 2, 3, 4))
    assert got["info"] == StepInfo(3, 20, 1.5, stage="tile", region=(0, 0, 8, 8))


@pytest.mark.parametrize("value", [object(), np.array([object()]), {1: "not a str key"}])
def test_what_is_not_data_does_not_travel(value):
    with pytest.raises(wire.WireError):
        wire.encode(value, [])


@pytest.mark.parametrize("data", [{"c": "Path", "f": {}}, {"c": "Unavailable", "f": {}}, {"c": "field", "f": {}},
                                  {"a": 0, "dtype": "|O", "shape": [1]}])  # fmt: skip
def test_only_the_requests_dataclasses_and_plain_arrays_are_rebuilt(data):
    with pytest.raises(wire.WireError):
        wire.decode(data, [b"\0" * 8])


# -- a test's own engine -------------------------------------------------------------------------


@pytest.fixture
def rundir(monkeypatch) -> Path:
    """A private runtime folder (short: socket paths are limited); the engines found there are killed at the end."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    monkeypatch.setenv("STUDIO_RUNTIME_DIR", str(path))
    yield path
    for lock in path.glob("*.lock"):  # engines started by a command under test, too
        pid = lock.read_text().strip()
        if pid.isdigit():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def _env(rundir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_NO_SERVER"}
    return {**env, "STUDIO_RUNTIME_DIR": str(rundir), **extra}


def _start(rundir: Path, idle: str = "300") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--idle", idle], cwd=ROOT, env=_env(rundir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    return proc


@pytest.fixture
def engine_proc(rundir):
    proc = _start(rundir)
    path = runtime.socket_path()
    while not path.exists():  # it binds before it imports torch
        assert proc.poll() is None, proc.stderr.read()
        others = [sock for sock in rundir.glob("*.sock") if sock != path]  # the expected one may appear meanwhile
        assert not others, "the engine's key is not the test's"
        threading.Event().wait(0.02)
    yield proc
    proc.kill()
    proc.wait()


def _cli(rundir: Path, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, reporting whether it imported torch."""
    code = ("import sys; from studio.cli import main; code = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr); raise SystemExit(code)")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, env=env or _env(rundir), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


GEN = ("generate", "--prompt", "a red circle", "--negative", "blue", "--sampler", "DPM++ 2M", "--steps", "3",
       "--seed", "11", "--width", "32", "--height", "40", "--batch", "2")  # fmt: skip


def _images(paths: list[str]) -> list[tuple[np.ndarray, str | None]]:
    return [(np.asarray(Image.open(p)), read_parameters(p)) for p in paths]


def test_the_warm_engine_saves_the_same_pixels_and_metadata_as_a_run_here(engine_proc, rundir, tiny_model, tmp_path):
    warm = _cli(rundir, *GEN, "--model", tiny_model, "--out", str(tmp_path / "warm"), "--timings")
    assert warm.returncode == 0, warm.stderr
    assert "no torch" in warm.stderr  # the command itself never imported torch: the engine ran it
    assert "timings (warm engine)" in warm.stderr and "steps" in warm.stderr
    here = _cli(rundir, *GEN, "--model", tiny_model, "--out", str(tmp_path / "here"), "--no-server")
    assert here.returncode == 0, here.stderr
    assert "torch imported" in here.stderr
    a, b = _images(warm.stdout.split()), _images(here.stdout.split())
    assert len(a) == len(b) == 2
    for (pa, ta), (pb, tb) in zip(a, b, strict=True):
        assert np.array_equal(pa, pb)
        assert ta == tb and "Model: tiny-sd" in ta and "Sampler: DPM++ 2M" in ta
    assert "Seed: 11," in a[0][1] and "Seed: 12," in a[1][1]  # each image's own seed


def test_an_upscale_on_the_warm_engine_saves_what_a_run_here_saves(engine_proc, rundir, tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(src)
    argv = ("upscale", "--image", str(src), "--mode", "resize", "--scale", "1.5", "--prompt", "p", "-q")
    warm = _cli(rundir, *argv, "--out", str(tmp_path / "warm"))
    here = _cli(rundir, *argv, "--out", str(tmp_path / "here"), "--no-server")
    assert warm.returncode == here.returncode == 0, warm.stderr + here.stderr
    assert "no torch" in warm.stderr
    ((pa, ta),), ((pb, tb),) = _images(warm.stdout.split()), _images(here.stdout.split())
    assert pa.shape == (30, 42, 3) and np.array_equal(pa, pb)
    assert ta == tb and "Upscale mode: resize" in ta


def test_bad_input_from_the_engine_is_the_same_one_line(engine_proc, rundir, tiny_model, tmp_path):
    p = _cli(rundir, "generate", "--prompt", "x", "--model", tiny_model, "--lora", "no-such-lora:0.5", "--steps", "1",
             "--out", str(tmp_path))  # fmt: skip
    direct = _cli(rundir, "generate", "--prompt", "x", "--model", tiny_model, "--lora", "no-such-lora:0.5", "--steps",
                  "1", "--out", str(tmp_path), "--no-server")  # fmt: skip
    assert p.returncode == direct.returncode == 2
    assert p.stdout == ""
    line = [ln for ln in direct.stderr.splitlines() if ln.startswith("studio: error:")]
    assert line and line == [ln for ln in p.stderr.splitlines() if ln.startswith("studio: error:")]


def test_cancel_reaches_the_engine_and_ends_the_run_early(engine_proc, tiny_model):
    cancel = threading.Event()
    steps: list[int] = []

    def on_step(info):
        steps.append(info.step)
        cancel.set()  # as the command's Ctrl+C does

    req = GenerateRequest.from_fields(prompt="x", model=tiny_model, steps=200, seed=1, preview="none")
    result, _ = client.generate(req, {"device": "cpu"}, on_step, cancel)
    assert result.cancelled and not result.images
    assert 1 <= result.steps_done < 200 and steps[0] == 1


def test_a_folder_others_may_enter_is_refused_and_the_command_runs_here(engine_proc, rundir, tiny_model, tmp_path):
    rundir.chmod(0o755)
    try:
        with pytest.raises(runtime.Unavailable, match="not private"):
            client.connect(start_if_needed=False)  # the engine listens, but its folder is not private
        p = _cli(rundir, "generate", "--prompt", "x", "--model", tiny_model, "--steps", "1", "--out", str(tmp_path))
    finally:
        rundir.chmod(0o700)
    assert p.returncode == 0, p.stderr
    assert "running in this process" in p.stderr and "not private" in p.stderr and "torch imported" in p.stderr
    assert client.call("ping")["jobs"] == 0  # it never got the request


def test_a_socket_that_is_not_the_engines_is_refused(rundir):
    path = runtime.socket_path()
    path.write_text("not a socket")
    with pytest.raises(runtime.Unavailable, match="not a socket"):
        client.connect(start_if_needed=False)


def test_stop_ends_the_engine(engine_proc, rundir):
    p = _cli(rundir, "serve", "--stop")
    assert p.returncode == 0, p.stderr
    assert engine_proc.wait(timeout=120) == 0
    assert not runtime.socket_path().exists()


def test_an_idle_engine_exits_by_itself(rundir):
    proc = _start(rundir, idle="0.2")
    try:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert "idle: exiting" in proc.stderr.read()
    assert not runtime.socket_path().exists()


def test_the_first_command_starts_the_engine_and_the_next_uses_it(rundir, tiny_model, tmp_path):
    env = _env(rundir, STUDIO_SERVER_IDLE="300")
    first = _cli(rundir, "generate", "--prompt", "x", "--model", tiny_model, "--steps", "1", "--out", str(tmp_path),
                 env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "starting the background engine" in first.stderr and "no torch" in first.stderr
    pid = client.call("ping")["pid"]
    second = _cli(rundir, "generate", "--prompt", "x", "--model", tiny_model, "--steps", "1", "--out", str(tmp_path),
                  env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "starting" not in second.stderr
    assert client.call("ping") == {"ev": "pong", "pid": pid, "jobs": 2, "idle": 300.0}
