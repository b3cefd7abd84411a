"""Bad input to the command line (issue 24): odd image files, sizes, output folders, a full disk, signals.

Each answers with one line, before any work where it can, and loses nothing: no traceback, no partial file.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import studio.cli
from studio.cli import main
from studio.core.errors import OUT_OF_MEMORY


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _no_work(monkeypatch):
    """Any generation that starts fails the test: a refusal must come before the work."""
    import studio.backends.local

    def started(*a, **k):
        raise AssertionError("the work started")

    monkeypatch.setattr(studio.backends.local.LocalBackend, "generate", started)


def _grey16(path: Path, value: int, size=(16, 16)) -> Path:
    Image.fromarray(np.full(size[::-1], value, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


# -- 16-bit, CMYK, palette and alpha files ------------------------------------------------------------------------


def test_a_16_bit_grey_png_is_scaled_not_clipped_as_image_and_mask(tmp_path):
    src = _grey16(tmp_path / "g16.png", 32896)  # 128 * 257: mid grey
    image = studio.cli._read_image(str(src))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert (image == 128).all()  # Pillow's convert("RGB") gives 255: a pure white input
    mask = studio.cli._read_image(str(src), "mask")
    assert mask.shape == (16, 16) and (mask == 128).all()
    ramp = tmp_path / "ramp.png"
    Image.fromarray(np.array([[0, 257, 65535]], np.uint16)).save(ramp)
    assert studio.cli._read_image(str(ramp), "mask").tolist() == [[0, 1, 255]]


def test_a_16_bit_grey_mask_repaints_only_its_white(capsys, tmp_path):
    """An inpaint with a 16-bit mask that is black but for one corner: not the whole image repainted."""
    import studio.backends.local

    seen = {}

    def capture(self, request, on_step=None, cancel=None):
        seen["mask"] = request.mask
        raise studio.cli.EngineError("stop here")

    src = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(src)
    m = np.full((16, 16), 5 * 257, np.uint16)  # a near-black 16-bit mask (Pillow's "L" clips it to 255: all white)
    m[:4, :4] = 65535
    Image.fromarray(m).save(tmp_path / "m16.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(studio.backends.local.LocalBackend, "generate", capture)
        code, _, err = run(capsys, "inpaint", "--image", str(src), "--mask", str(tmp_path / "m16.png"), "--prompt",
                           "x", "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert code == 2 and "stop here" in err
    assert int((seen["mask"] > 127).sum()) == 16 and int(seen["mask"].max()) == 255 and int(seen["mask"].min()) == 5


def test_cmyk_jpeg_palette_and_alpha_pngs_come_in_as_rgb(tmp_path, recwarn):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).convert("P").save(tmp_path / "p.png")  # palette + tRNS
    Image.new("LA", (8, 8), (128, 200)).save(tmp_path / "la.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    for name, rgb in [
        ("c.jpg", (255, 0, 0)),
        ("p.png", (255, 0, 0)),
        ("la.png", (128,) * 3),
        ("rgba.png", (10, 20, 30)),
    ]:
        a = studio.cli._read_image(str(tmp_path / name))
        assert a.shape == (8, 8, 3) and a.dtype == np.uint8, name
        assert np.abs(a[0, 0].astype(int) - rgb).max() <= 2, (name, a[0, 0])
    assert not [w for w in recwarn if "Palette" in str(w.message)]  # no Pillow warning on stderr


# -- sizes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["img2img", "inpaint"])
def test_img2img_and_inpaint_refuse_an_input_past_4096_before_any_work(capsys, monkeypatch, tmp_path, command):
    _no_work(monkeypatch)
    src = tmp_path / "wide.png"
    Image.new("RGB", (4104, 16), (90, 90, 90)).save(src)
    Image.new("L", (4104, 16), 255).save(tmp_path / "mask.png")
    extra = ["--mask", str(tmp_path / "mask.png")] if command == "inpaint" else []
    code, out, err = run(capsys, command, "--image", str(src), *extra, "--prompt", "x", "--out", str(tmp_path), "-q")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"studio: error: The input image is 4104x16: {command} takes at most 4096 px a side"]


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h (the header is all a decompression-bomb check reads)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


@pytest.mark.parametrize(
    "command, size",
    [(c, s) for c in ("img2img", "upscale", "info") for s in ((20000, 20000), (12000, 9000))]
    + [("img2img", (9000, 8)), ("upscale", (9000, 8))],  # past 8192 a side, within Pillow's pixel limit
)
def test_a_huge_image_is_refused_with_the_limit_at_exit_2(capsys, monkeypatch, tmp_path, size, command):
    _no_work(monkeypatch)
    big = _png_header_only(tmp_path / "big.png", *size)
    args = {"img2img": ["img2img", "--image", str(big), "--prompt", "x", "--out", str(tmp_path)],
            "upscale": ["upscale", "--image", str(big), "--mode", "resize", "--out", str(tmp_path)],
            "info": ["info", str(big)]}[command]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("studio: error: The image big.png is too large (") and "at most 8192 px a side" in line


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 2359296000 bytes. Error code 12"
        ),
    ],  # fmt: skip
)
def test_a_cpu_out_of_memory_is_the_studios_message(capsys, monkeypatch, exc):
    def boom(path):
        raise exc

    monkeypatch.setattr(studio.cli, "_info", boom)
    code, _, err = run(capsys, "info", "x.png")
    assert code == 1 and err.splitlines() == [f"studio: error: {OUT_OF_MEMORY}"]


# -- the output folder, before the work ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_an_unusable_output_folder_is_refused_before_the_work(capsys, monkeypatch, tmp_path, where):
    _no_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    out = {"a file": tmp_path / "file", "below a file": tmp_path / "file" / "sub", "read-only": tmp_path / "ro"}[where]
    if where == "read-only":  # the tests may run as root, which chmod does not stop: refuse the write itself
        out.mkdir()
        real_open = os.open

        def read_only(path, flags, *a, **k):
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", read_only)
    src = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (90, 90, 90)).save(src)
    code, stdout, err = run(capsys, "img2img", "--image", str(src), "--prompt", "x", "--out", str(out), "-q")
    assert code == 2 and stdout == ""
    (line,) = err.splitlines()
    assert line.startswith(f"studio: error: Cannot write to the output folder {out}: "), line
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.rglob("*.tmp"))


# -- a full disk mid-batch -----------------------------------------------------------------------------------------


def _disk_full_from(monkeypatch, n: int) -> None:
    """The n-th image written and those after it meet a full disk (the 1st..n-1th are saved)."""
    import contextlib

    import studio.core.output as output

    real = output.atomic_write
    calls = {"n": 0}

    @contextlib.contextmanager
    def full(path, **kw):
        calls["n"] += 1
        with real(path, **kw) as f:
            if calls["n"] >= n:
                f.write(b"\x89PNG partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            yield f

    monkeypatch.setattr(output, "atomic_write", full)


def test_a_full_disk_mid_batch_prints_what_was_saved_and_names_the_rest(capsys, monkeypatch, tiny_model, tmp_path):
    _disk_full_from(monkeypatch, 2)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--steps", "1", "--seed", "5",
                            "--width", "32", "--height", "32", "--batch", "3", "--out", str(out), "-q")  # fmt: skip
    assert code == 1
    (saved,) = stdout.splitlines()
    assert Path(saved).is_file() and sorted(p.name for p in out.iterdir()) == [Path(saved).name]
    (line,) = err.splitlines()
    assert line.startswith("studio: error: ") and "No space left on device" in line
    assert "images 2 and 3 of 3 not saved" in line


# -- progress, previews ---------------------------------------------------------------------------------------------


def test_an_error_starts_a_new_line_after_the_progress_line(capsys, monkeypatch, tmp_path):
    import studio.backends.local
    from studio.core.requests import StepInfo

    def fails(self, request, on_step=None, cancel=None):
        on_step(StepInfo(1, 4, 0.1))
        raise studio.cli.EngineError("the model broke")

    monkeypatch.setattr(studio.backends.local.LocalBackend, "generate", fails)
    code, _, err = run(capsys, "generate", "--prompt", "x", "--out", str(tmp_path))
    assert code == 2
    assert err.endswith("\nstudio: error: the model broke\n") and err.startswith("\rstep 1/4")


@pytest.mark.parametrize("quiet", [True, False])
def test_no_previews_are_asked_for_when_none_is_shown(capsys, monkeypatch, tmp_path, quiet):
    import studio.backends.local

    seen = {}

    def capture(self, request, on_step=None, cancel=None):
        seen["preview"] = request.preview
        raise studio.cli.EngineError("stop")

    monkeypatch.setattr(studio.backends.local.LocalBackend, "generate", capture)
    run(capsys, "generate", "--prompt", "x", "--out", str(tmp_path), *(["-q"] if quiet else []))
    assert seen["preview"] == "none"  # quiet, or stderr is no terminal (as under pytest)


# -- studio info ----------------------------------------------------------------------------------------------------


def test_info_escapes_terminal_control_codes(capsys, tmp_path):
    info = PngInfo()
    info.add_text("parameters", "a cat\x1b]0;pwned\x07\x1b[2J\nSteps: 20, Seed: 1\tx\r")
    path = tmp_path / "esc.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert out == "a cat\\x1b]0;pwned\\x07\\x1b[2J\nSteps: 20, Seed: 1\tx\\r\n"


def test_info_into_a_closed_pipe_exits_quietly(tmp_path):
    info = PngInfo()
    info.add_text("parameters", "line\n" * 20000)
    path = tmp_path / "long.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    cmd = f"{sys.executable} -m studio info {path} | head -n 1"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert p.stdout == "line\n"
    assert p.stderr == "" and p.returncode == 0


# -- signals ----------------------------------------------------------------------------------------------------------


def _wait_for_step(proc: subprocess.Popen, timeout: float = 300) -> str:
    """stderr up to the first progress step ("step 1/...")."""
    seen = b""
    end = time.monotonic() + timeout
    while b"step 1/" not in seen and b"step 2/" not in seen:
        assert time.monotonic() < end, seen
        chunk = os.read(proc.stderr.fileno(), 256)
        assert chunk, (seen, proc.wait())
        seen += chunk
    return seen.decode()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_run_cancels_and_leaves_no_file(tiny_model, tmp_path, sig, code, word):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "studio", "generate", "--model", tiny_model, "--prompt", "x", "--steps", "1000",
           "--width", "32", "--height", "32", "--out", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_step(proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert stdout == b"" and stderr.decode().splitlines()[-1] == f"studio: {word}"
    assert "Traceback" not in stderr.decode()
    assert not out.exists() or list(out.iterdir()) == []  # no .tmp, no partial PNG


def test_a_sigterm_while_saving_finishes_that_save_then_exits_143(capsys, monkeypatch, tiny_model, tmp_path):
    import contextlib

    import studio.core.output as output

    real = output.atomic_write

    @contextlib.contextmanager
    def slow(path, **kw):
        with real(path, **kw) as f:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the file is half written
            yield f

    monkeypatch.setattr(output, "atomic_write", slow)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--steps", "1", "--batch", "3",
                            "--width", "32", "--height", "32", "--out", str(out), "-q")  # fmt: skip
    assert code == 143 and err.splitlines() == ["studio: terminated"]
    (saved,) = stdout.splitlines()  # the save under way finished; no new one started
    assert sorted(p.name for p in out.iterdir()) == [Path(saved).name]
    assert Image.open(saved).size == (32, 32)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are the CLI run's only


def test_sigint_on_a_server_run_interrupts_the_server_job(tmp_path):
    from fake_comfyui import FakeComfy, allow_loopback

    with allow_loopback():
        fake = FakeComfy(models={"checkpoints": ["tiny-sd15.safetensors"]}, cache=False).start()
        try:
            fake.step_delay = 0.2
            cmd = [sys.executable, "-m", "studio", "generate", "--server", fake.url, "--prompt", "x", "--steps", "200",
                   "--width", "64", "--height", "64", "--out", str(tmp_path / "out")]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                _wait_for_step(proc, timeout=120)
                proc.send_signal(signal.SIGINT)
                stdout, stderr = proc.communicate(timeout=60)
            finally:
                proc.kill()
            assert proc.returncode == 130, stderr
            assert stderr.decode().splitlines()[-1] == "studio: interrupted"
            fake.wait_until(lambda: fake.interrupts or fake.cancels, what="the server job interrupted")
        finally:
            fake.stop()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 2359296000 bytes"


@pytest.mark.parametrize("where", ["sampling", "decode"])
def test_a_cpu_out_of_memory_in_the_engine_is_the_studios_message(capsys, monkeypatch, tiny_model, tmp_path, where):
    import studio.engine.engine
    import studio.engine.steps
    from studio.core.errors import describe_error

    def oom(*a, **k):
        raise RuntimeError(CPU_OOM)

    target = (
        (studio.engine.steps.StepTracker, "callback")
        if where == "sampling"
        else (studio.engine.engine.Engine, "decode")
    )
    monkeypatch.setattr(*target, oom)
    code, out, err = run(capsys, "generate", "--model", tiny_model, "--prompt", "x", "--steps", "2", "--width", "32",
                         "--height", "32", "--out", str(tmp_path), "-q")  # fmt: skip
    assert out == "" and code in (1, 2)
    assert err.splitlines() == [f"studio: error: {OUT_OF_MEMORY}"]
    assert describe_error(RuntimeError(CPU_OOM)) == OUT_OF_MEMORY  # the window's wording too
