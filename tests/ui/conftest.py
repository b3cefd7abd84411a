"""UI tests run offscreen, on the package's fake backend, with a throwaway config dir.

Every UI test must leave nothing running: an autouse fixture fails a test that leaves a
`studio-*` thread alive or an active QTimer behind (a leaked timer fires into a closed window).
"""

import os
import threading
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported anywhere
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

import pytest  # noqa: E402

from studio.backends.fake import FakeBackend  # noqa: E402


def studio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("studio-") and t.is_alive()]


def active_timers() -> list[str]:
    """Running QTimers owned by any live object of the application (widgets and their children)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return []
    roots = [app, *QApplication.topLevelWidgets()]
    found = []
    for root in roots:
        for timer in root.findChildren(QTimer):
            if timer.isActive():
                found.append(f"{type(timer.parent()).__name__}/{timer.objectName() or 'QTimer'} ({timer.interval()} ms)")
    return found


def leftovers(grace_s: float = 5.0) -> list[str]:
    """What a test left running, after letting Qt delete closed widgets and threads wind down."""
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + grace_s
    while True:
        if QApplication.instance() is not None:
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
            QCoreApplication.processEvents()
        threads = studio_threads()
        if not threads or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return [f"thread {name}" for name in threads] + [f"timer {t}" for t in active_timers()]


@pytest.fixture(autouse=True)
def nothing_left_running():
    # Autouse fixtures are set up before qtbot and torn down after it has closed the test's widgets.
    yield
    left = leftovers()
    assert not left, f"the test left these running: {', '.join(left)}"


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    d = tmp_path / "config"
    monkeypatch.setenv("LATENT_STUDIO_CONFIG_DIR", str(d))
    monkeypatch.setenv("LATENT_STUDIO_DATA_DIR", str(tmp_path / "data"))  # autosaves never reach the user's
    return d


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def fake():
    return FakeBackend()


@pytest.fixture
def worker(qtbot):
    """Workers over a given backend, shut down (and joined) after the test."""
    from studio.worker import Worker

    made = []

    def make(backend):
        made.append(w := Worker(backend))
        return w

    yield make
    for w in made:
        assert w.shutdown(10)


@pytest.fixture
def make_window(qtbot, out_dir):
    """Windows wired by the composition root (studio.app) on a fake backend by default. Results land at once
    (staging off) unless stage=True: tests of the landing path predate the staging area (tests/ui/test_staging.py)."""
    from studio.app import build_window
    from studio.settings import Settings

    made = []

    def make(backend=None, settings=None, stage=False, **kw):
        backend = backend if backend is not None else FakeBackend()
        kw.setdefault("output_dir", str(out_dir))
        settings = settings or Settings.load()
        settings.stage_results = stage
        w = build_window(settings, backend, **kw)
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
        assert "studio-engine" not in studio_threads()


@pytest.fixture
def window(make_window, fake):
    return make_window(fake)


@pytest.fixture
def doc():
    """A document holding a white 200x100 image (the canvas and mask-tool tests)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage

    from studio.session.document import Document

    image = QImage(200, 100, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.white)
    d = Document()
    d.set_image(image)
    return d


@pytest.fixture
def canvas(qtbot, doc):
    """A canvas showing `doc` at 2x: the image at x = 12, 400 px wide."""
    from studio.ui.canvas import Canvas

    c = Canvas()
    c.resize(424, 224)
    c.set_image(doc.image)
    c.set_document(doc)
    qtbot.addWidget(c)
    c.show()
    qtbot.waitExposed(c)
    assert c.image_rect() == c.fit_rect() and c.image_rect().x() == 12 and c.image_rect().width() == 400
    return c


@pytest.fixture
def autosaved(tmp_path):
    """A document as a crash restore brings it back: autosaved (flushed at once), read, restored into a fresh one."""

    def roundtrip(doc):
        from studio.session import autosave
        from studio.session.document import Document

        saver = autosave.Autosaver(doc, tmp_path / "save", delay_ms=0)
        try:
            assert saver.flush()
            loaded = autosave.load(tmp_path / "save")
        finally:
            saver.close()
        assert loaded is not None
        fresh = Document()
        fresh.restore(*loaded)
        return fresh

    return roundtrip
