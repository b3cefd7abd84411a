"""UI tests run offscreen, with a fake engine and a throwaway config dir."""

import os
import sys
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported anywhere
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from fake_engine import FakeEngine  # noqa: E402


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    d = tmp_path / "config"
    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(d))
    return d


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def fake():
    return FakeEngine()


@pytest.fixture
def make_window(qtbot, out_dir):
    from studio.settings import Settings
    from studio.ui.main_window import MainWindow

    made = []

    def make(engine=None, settings=None, **kw):
        engine = engine if engine is not None else FakeEngine()
        kw.setdefault("output_dir", str(out_dir))
        w = MainWindow(settings or Settings.load(), engine_factory=lambda: engine, **kw)
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
        assert not w.worker.is_alive()


@pytest.fixture
def window(make_window, fake):
    return make_window(fake)
