"""The layers hold (import-linter contracts in pyproject.toml) and the tree is lint-clean.

These run the project's own tools, so the README's one test command checks them too.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(root), "PATH": str(BIN)})  # fmt: skip


def contracts() -> list[dict]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in out.stdout


def test_the_contracts_name_the_layers():
    names = " | ".join(c["name"] for c in contracts())
    for must in ("Layers", "Widgets talk to the session only", "torch", "no Qt", "no concrete backend",
                 "core vocabulary is torch-free and Qt-free", "No import circle"):
        assert must in names


def test_a_widget_that_imports_the_worker_or_torch_breaks_the_contracts(tmp_path):
    """The contracts can fail: a copy of the tree with a widget reaching past the session."""
    shutil.copytree(ROOT / "studio", tmp_path / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    canvas = tmp_path / "studio" / "ui" / "canvas.py"
    canvas.write_text(canvas.read_text() + "\nfrom studio.worker import Worker  # noqa\nimport torch  # noqa\n")
    engine = tmp_path / "studio" / "engine" / "preview.py"
    engine.write_text(engine.read_text() + "\nfrom PySide6 import QtCore  # noqa\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "Widgets talk to the session only" in out.stdout and "BROKEN" in out.stdout
    assert "studio.ui.canvas -> studio.worker" in out.stdout
    assert "studio.ui.canvas -> torch" in out.stdout
    assert "studio.engine.preview -> PySide6" in out.stdout


def test_torch_in_the_core_a_window_module_on_the_engine_or_a_circle_breaks_the_contracts(tmp_path):
    shutil.copytree(ROOT / "studio", tmp_path / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "studio" / "core" / "tiling.py"
    core.write_text(core.read_text() + "\nimport torch  # noqa\n")
    session = tmp_path / "studio" / "session" / "params.py"
    session.write_text(session.read_text() + "\nimport studio.engine.preview  # noqa\n")
    steps = tmp_path / "studio" / "engine" / "steps.py"  # the engine imports steps: steps -> engine closes a circle
    steps.write_text(steps.read_text() + "\nfrom studio.engine import engine as _circle  # noqa\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    broken = out.stdout[out.stdout.index("Broken contracts"):]
    assert "The core vocabulary is torch-free and Qt-free" in broken
    assert "studio.core.tiling -> torch" in broken
    assert "studio.session.params -> studio.engine.preview" in broken
    assert "No import" in broken and "- .steps -> .engine" in broken


def test_the_core_imports_no_torch_and_no_qt_at_run_time():
    code = (
        "import sys, pkgutil, importlib, studio.core\n"
        "for m in pkgutil.iter_modules(studio.core.__path__): importlib.import_module('studio.core.' + m.name)\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'PySide6', 'studio.engine') if m in sys.modules]\n"
        "print('BAD', bad) if bad else print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr


def test_ruff_is_clean():
    out = subprocess.run([tool("ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_backends_and_the_composition_root_load_no_torch_until_started():
    code = (
        "import sys\n"
        "from studio.backends.local import LocalBackend\n"
        "from studio.backends import Backend\n"
        "b = LocalBackend(device='cpu'); info = b.info()\n"
        "assert isinstance(b, Backend) and info.decodes_steps and 'Euler a' in info.samplers, info\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'PySide6') if m in sys.modules]\n"
        "print('BAD', bad) if bad else print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr
