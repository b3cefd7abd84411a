"""The type checker (mypy, configured in pyproject.toml) passes over the torch-free rooms, and it would catch a
backend that no longer satisfies the Backend protocol (studio/backends/conformance.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mypy(root: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache)], cwd=root, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_the_type_checker_passes(tmp_path):
    out = mypy(ROOT, tmp_path / "cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout


def test_a_backend_that_breaks_the_protocol_fails_the_type_checker(tmp_path):
    shutil.copytree(ROOT / "studio", tmp_path / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "studio" / "backends" / "fake.py"
    fake.write_text(fake.read_text().replace("    def decode_step(self,", "    def decode_one_step(self,", 1))
    out = mypy(tmp_path, tmp_path / "cache")
    assert out.returncode != 0
    assert "studio/backends/conformance.py" in out.stdout and '"FakeBackend"' in out.stdout, out.stdout[-3000:]
