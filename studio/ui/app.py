"""Start the studio window: `run_app()` (what `studio` with no arguments calls)."""

from __future__ import annotations

import os
import sys
import time

_T0 = time.perf_counter()

EXIT_ON_SHOW_ENV = "LATENT_STUDIO_EXIT_ON_SHOW"  # benchmarks: print the time to first show, then quit


def run_app(
    argv: list[str] | None = None,
    model: str | None = None,
    output_dir: str | None = None,
    engine_factory=None,
) -> int:
    """Create the QApplication, show the window, run the event loop; return the exit code."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from studio import APP_NAME
    from studio.settings import Settings
    from studio.ui.main_window import MainWindow
    from studio.ui.theme import apply_dark_theme

    app = QApplication.instance() or QApplication(list(argv) if argv else [sys.argv[0] if sys.argv else "studio"])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("latent-studio")
    apply_dark_theme(app)

    window = MainWindow(Settings.load(), model=model, output_dir=output_dir, engine_factory=engine_factory)
    install_excepthook(window)
    window.show()
    if os.environ.get(EXIT_ON_SHOW_ENV):

        def shown() -> None:
            app.processEvents()
            print(f"shown {time.perf_counter() - _T0:.3f}", flush=True)
            window.close()
            app.quit()

        QTimer.singleShot(0, shown)
    else:
        # Import torch and build the engine once the window is on screen.
        QTimer.singleShot(250, window.start_engine)
    return app.exec()


def install_excepthook(window) -> None:
    """A bug in a slot becomes a message in the window (and a traceback in the log), not a crash."""
    import logging
    import traceback

    log = logging.getLogger("studio.ui")
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        log.error("unexpected error in the window:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        first = (str(exc).strip().splitlines() or [""])[0]
        try:
            window.show_message(f"Unexpected error ({exc_type.__name__}): {first}", "error")
        except Exception:  # noqa: BLE001 - the window may be gone
            previous(exc_type, exc, tb)

    sys.excepthook = hook


def main() -> int:
    return run_app(sys.argv)


if __name__ == "__main__":
    raise SystemExit(main())
