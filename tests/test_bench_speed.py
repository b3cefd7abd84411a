"""The speed benchmark itself runs (issue 28, items 7 and 8): on the tests' tiny pipeline, through the same code a
GPU machine runs with --device cuda. Nothing here is timed: the tables' rows and pixel figures are asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_speed.py"


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by their mode column (the first column naming a known mode)."""
    got = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for i, c in enumerate(cells[:2]):
            if c in ("plain", "exact", "exact torch", "fast"):
                got[c] = cells[i:]
                break
    return got


def test_calls_in_a_gpus_half_precision_run_on_the_cpu(tmp_path):
    """--dtype float16: the half path a CUDA machine takes (plain diffusers in fp16 too), here on the CPU."""
    r = bench(tmp_path, "--calls", "--modes", "plain,exact,fast", "--rounds", "1", "--dtype", "float16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cpu, float16" in r.stdout
    got = rows(r.stdout)
    assert set(got) == {"plain", "exact", "fast"}, r.stdout
    # | mode | s/call | calls | vs plain | max abs diff vs plain | first-use |: the same fp16 arithmetic, within fp16
    for mode in ("exact", "fast"):
        assert float(got[mode][4]) < 1e-2, got[mode]
    assert float(got["plain"][4]) == 0.0


def test_whole_images_on_the_cpu_give_ratios_and_pixels(tmp_path):
    r = bench(tmp_path, "--steps", "3", "--samplers", "Euler a", "--modes", "plain,exact torch", "--rounds", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cpu, float32" in r.stdout
    got = rows(r.stdout)
    assert {"plain", "exact torch"} <= set(got), r.stdout
    # | mode | s/step | per-step vs plain | whole s | whole vs plain | PSNR | worst px |: exact on torch is plain's
    # own arithmetic on a CPU (the U-Net contiguous), so the image is identical.
    assert got["exact torch"][5].startswith("identical"), got["exact torch"]
    assert re.fullmatch(r"\d+\.\d\dx", got["exact torch"][2])


def test_a_device_this_torch_lacks_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = bench(tmp_path, "--calls", "--device", "cuda")
    assert r.returncode == 2
    assert "CUDA" in r.stderr and "--device cpu" in r.stderr
    assert "Traceback" not in r.stderr

