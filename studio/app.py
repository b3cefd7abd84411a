"""The composition root: settings -> backend -> worker -> session -> window, and `run_app()`.

The only module that names concrete backends for the window; everything below it gets what it
needs handed in (the window a session, the session a worker, the worker a backend).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

_T0 = time.perf_counter()

EXIT_ON_SHOW_ENV = "LATENT_STUDIO_EXIT_ON_SHOW"  # benchmarks: print the time to first show, then quit
ENGINE_START_DELAY_MS = 250  # let the window paint before torch is imported on the engine thread


def make_backend(settings, demo: bool = False):
    """The backend the settings ask for (no torch import: backends start on the engine thread)."""
    if demo:
        from studio.backends.fake import DemoBackend

        return DemoBackend()
    if settings.backend == "comfyui":
        from studio.backends.comfyui.backend import ComfyUIBackend

        return ComfyUIBackend(settings.server_url, settings.server_token)
    from studio.backends.local import LocalBackend

    return LocalBackend(device=settings.engine_device(), model_folders=settings.model_folders)


def build_window(settings=None, backend=None, *, model: str | None = None, output_dir: str | None = None,
                 config_dir: Path | None = None, demo: bool = False):  # fmt: skip
    """Wire one window. A QApplication must exist."""
    from studio.session import Session
    from studio.settings import Settings
    from studio.ui.main_window import MainWindow
    from studio.worker import Worker

    settings = settings if settings is not None else Settings.load(config_dir)
    backend = backend if backend is not None else make_backend(settings, demo)
    worker = Worker(backend)
    factory = None if demo else make_backend  # a given backend (tests) can still be switched to a made one
    session = Session(worker, settings, model_override=model, output_dir=output_dir, backend_factory=factory)
    worker.setParent(session)
    return MainWindow(session, config_dir=config_dir)


def run_app(argv: list[str] | None = None, *, model: str | None = None, output_dir: str | None = None,
            demo: bool = False, backend=None, image: str | None = None) -> int:  # fmt: skip
    """Create the QApplication, show the window, run the event loop; return the exit code."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from studio import APP_NAME
    from studio.ui.theme import apply_dark_theme

    app = QApplication.instance() or QApplication(list(argv) if argv else [sys.argv[0] if sys.argv else "studio"])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("latent-studio")
    apply_dark_theme(app)

    window = build_window(backend=backend, model=model, output_dir=output_dir, demo=demo)
    install_excepthook(window)
    window.show()
    if image and image.lower().endswith(".lsproj"):
        window.project.open(image)
    elif image:
        window.session.open_image(image)
    if os.environ.get(EXIT_ON_SHOW_ENV):

        def shown() -> None:
            app.processEvents()
            print(f"shown {time.perf_counter() - _T0:.3f}", flush=True)
            window.close()
            app.quit()

        QTimer.singleShot(0, shown)
    else:
        from studio.session.autosave import default_folder

        if not image:  # an image given at launch is what the artist wants now, not last session's canvas
            window.start_autosave(default_folder())
        else:
            window.start_autosave(default_folder(), ask=lambda info: False)
        QTimer.singleShot(ENGINE_START_DELAY_MS, window.start_engine)
    return app.exec()


def install_excepthook(window) -> None:
    """A bug in a slot becomes a message in the window (and a traceback in the log), not a crash."""
    from studio.core.errors import first_line

    log = logging.getLogger("studio.ui")
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        log.error("unexpected error in the window:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        try:
            window.show_message(f"Unexpected error ({exc_type.__name__}): {first_line(exc)}", "error")
        except Exception:  # noqa: BLE001 - the window may be gone
            previous(exc_type, exc, tb)

    sys.excepthook = hook
