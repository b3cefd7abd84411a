"""`--deep-cache N` on the command line: refused out of range with one line, written into the PNG and read back,
and off (with its note on stderr) below 15 steps."""

from __future__ import annotations

from pathlib import Path

from studio.cli import main
from studio.core.metadata import read_parameters, request_fields


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_an_interval_out_of_range_is_one_line_and_exit_2(capsys, tmp_path):
    code, out, err = run(capsys, "generate", "--prompt", "x", "--deep-cache", "9", "--out", str(tmp_path))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["studio: error: Deep cache must be an interval of 2 to 5 steps (0 = off), got 9"]


def test_deep_cache_is_written_and_read_back(capsys, tiny_model, tmp_path):
    args = ("generate", "--model", tiny_model, "--prompt", "a cat", "--seed", "1", "--width", "32", "--height", "32",
            "--out", str(tmp_path), "-q")  # fmt: skip
    code, out, err = run(capsys, *args, "--steps", "15", "--deep-cache", "2")
    assert code == 0, err
    text = read_parameters(Path(out.strip()))
    assert "Deep cache: 2" in text and request_fields(text)["deep_cache"] == 2
    assert "Deep cache" not in err

    code, out, err = run(capsys, *args, "--steps", "3", "--deep-cache", "2")
    assert code == 0, err
    assert "studio: Deep cache off: 3 steps is below 15" in err
    assert "Deep cache" not in read_parameters(Path(out.strip()))


def test_a_comfyui_server_does_not_apply_it_and_says_so():
    from fake_comfyui import FakeComfy, allow_loopback

    from studio.backends.comfyui.backend import ComfyUIBackend
    from studio.core.requests import GenerateRequest

    with allow_loopback():
        server = FakeComfy(models={"checkpoints": ["tiny-sd15.safetensors"]}, cache=False).start()
        backend = ComfyUIBackend(server.url)
        try:
            result = backend.generate(GenerateRequest(prompt="a fox", steps=20, seed=1, width=64, height=48,
                                                      deep_cache=3))  # fmt: skip
        finally:
            backend.close()
            server.stop()
    assert result.notes == ["Deep cache is not applied on a ComfyUI server"] and result.request.deep_cache == 0
