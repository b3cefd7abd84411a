"""File > Open project / Save / Save as / Open recent, the window title, and the question before unsaved work goes.

The format is `studio.session.project`. "Unsaved" is cheap to know: the history entry before the document's cursor at
the last save (or open) against the one now (`project.history_mark`), and the panel's values and the selection (a
project keeps them too) against those saved. A document without an image never asks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QEventLoop, QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication, QFileDialog, QMenu, QMessageBox

from studio import APP_NAME, __version__
from studio.qtcompat import emit
from studio.session import project
from studio.session.params import Params

FILTER = f"Latent Studio project (*{project.SUFFIX})"
_NEVER = object()  # the mark of a document never saved: any image in it is unsaved work

Answer = str  # "save", "discard" or "cancel"


def project_paths(mime) -> list[Path]:
    """The project files among dropped or pasted URLs."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls()
            if u.isLocalFile() and Path(u.toLocalFile()).suffix.lower() == project.SUFFIX]  # fmt: skip


class _Write(QRunnable):
    """One project write on the pool's thread: encodes the snapshot's PNGs and the zip (seconds for a large
    document), then reports through `done` (queued to the UI thread)."""

    def __init__(self, target: Path, snap: project.Snapshot, done) -> None:
        super().__init__()
        self.target, self.snap, self.done = target, snap, done

    def run(self) -> None:
        try:
            written: Path | None = project.write(self.target, self.snap)
            error = ""
        except project.ProjectError as e:
            written, error = None, str(e)
        except Exception as e:  # noqa: BLE001 - a save never takes the window down: one line
            written, error = None, f"{type(e).__name__}: {e}"
        emit(self.done, str(self.target), str(written) if written else "", error)


class ProjectActions(QObject):
    """The window's project commands. `ask(what) -> "save" | "discard" | "cancel"` answers the unsaved-changes
    question (tests set it; default: a message box, or "discard" where no one can see one, the offscreen platform);
    `choose_save_path()` -> a path or None picks where Save as writes (default: a file dialog)."""

    saved = Signal(str)  # the project file written (a save off the UI thread has ended well)
    save_failed = Signal(str)  # one line
    _written = Signal(str, str, str)  # target, written path ("" on failure), error: from the writer thread

    def __init__(self, window) -> None:
        super().__init__(window)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # one save at a time
        self._saving: tuple[Path, project.Snapshot, tuple] | None = None  # target, snapshot, panel at the save
        self._written.connect(self._on_written)
        self.window = window
        self.session = window.session
        self.document = window.session.document
        self.settings = window.settings
        self.path: Path | None = None  # the project the document is saved in
        self._saved_mark: object | None = None  # the history mark at the last save/open (None: the empty start)
        self._saved_extra: tuple | None = None  # the panel and the selection then (None: never saved)
        self.ask: Callable[[str], Answer] = self._ask_box
        self.choose_save_path: Callable[[], Path | None] = self._save_dialog
        a = window._action
        self.open_action = a("Open &project…", self.open_dialog, QKeySequence("Ctrl+Shift+O"), "open",
                             "Open a Latent Studio project: image, mask, selection, panel and undo history")  # fmt: skip
        self.save_action = a("&Save project", lambda: self.save(wait=False), QKeySequence.StandardKey.Save, "save",
                             "Save the document as a project (image, mask, panel, undo history) (Ctrl+S)")  # fmt: skip
        self.save_as_action = a("Sa&ve project as…", lambda: self.save_as(wait=False), QKeySequence("Ctrl+Shift+S"), "save",
                                "Save the document as a new project file")  # fmt: skip
        self.recent_menu = QMenu("Open &recent", window)
        self.recent_menu.setToolTipsVisible(True)
        self.recent_menu.aboutToShow.connect(self.fill_recent_menu)
        self.document.history_changed.connect(self.update_title)
        self.document.selection_changed.connect(lambda _rect: self.update_title())
        self.session.params_edited.connect(self.update_title)
        self.document.image_changed.connect(lambda _image: self.update_title())
        self.update_title()

    # -- state ---------------------------------------------------------------------------------------------

    def is_dirty(self) -> bool:
        if not self.document.has_image():
            return False
        if project.history_mark(self.document) is not self._saved_mark:
            return True
        return self._saved_extra is not None and self._extra() != self._saved_extra

    def _extra(self) -> tuple:
        return self.session.params.to_dict(), self.document.selection

    def _mark_saved(self) -> None:
        self._saved_mark = project.history_mark(self.document)
        self._saved_extra = self._extra()
        self.update_title()

    def update_title(self) -> None:
        app = f"{APP_NAME} {__version__}"
        if self.path is None and not self.document.has_image():
            self.window.setWindowTitle(app)
            return
        name = self.path.stem if self.path is not None else "Untitled"
        self.window.setWindowTitle(f"{name}{'*' if self.is_dirty() else ''} — {app}")

    # -- the question ---------------------------------------------------------------------------------------

    def confirm_discard(self, doing: str = "closing") -> bool:
        """True when the document may go: nothing unsaved, the artist saved it, or chose to discard it."""
        if not self.is_dirty():
            return True
        answer = self.ask(doing)
        if answer == "save":
            return self.save(wait=True)
        return answer == "discard"

    def _ask_box(self, doing: str) -> Answer:
        if QApplication.platformName() == "offscreen":
            return "discard"  # no one can see a box there (tests, benchmarks): closing does what it always did
        name = self.path.name if self.path is not None else "the untitled document"
        box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved changes",
                          f"Save the changes to {name} before {doing}?", parent=self.window)  # fmt: skip
        box.setInformativeText("The image, its mask and the undo history are lost if you don't save them.")
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)  # fmt: skip
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        return {QMessageBox.StandardButton.Save: "save",
                QMessageBox.StandardButton.Discard: "discard"}.get(QMessageBox.StandardButton(answer), "cancel")  # fmt: skip

    # -- saving -------------------------------------------------------------------------------------------

    def _save_dialog(self) -> Path | None:
        start = self.path or Path(self.session.output_dir) / f"untitled{project.SUFFIX}"
        chosen, _ = QFileDialog.getSaveFileName(self.window, "Save project as", str(start), FILTER)
        return Path(chosen) if chosen else None

    def save(self, wait: bool = True) -> bool:
        """Ctrl+S: into the project's file, or Save as for a document that has none. wait: return once written
        (the quit question); otherwise the file is written off the UI thread and `saved` says when."""
        if self.path is None:
            return self.save_as(wait)
        return self.save_to(self.path, wait)

    def save_as(self, wait: bool = True) -> bool:
        if not self.document.has_image():
            self.window.show_message("No image to save yet", "warning")
            return False
        target = self.choose_save_path()
        return target is not None and self.save_to(target, wait)

    def is_saving(self) -> bool:
        return self._saving is not None

    def save_to(self, target: Path, wait: bool = True) -> bool:
        """Save the document to target: a snapshot here (copy-on-write images, copied masks), the PNGs and the zip
        written on a worker thread (a 2048 px document with a long history takes seconds), atomically as before.
        A save asked for while one is being written is refused with a message. wait: until written (True when it
        was); otherwise True when the save started."""
        if self._saving is not None:
            self.window.show_message(f"Still saving {self._saving[0].name}: save again when it is done", "warning")
            return False
        try:
            staging = self.session.staging
            snap = project.snapshot(self.document, self.session.params.to_dict(), staging.candidates, staging.index)
        except project.ProjectError as e:
            self.window.show_message(f"Could not save the project: {e}", "error")
            return False
        target = project.target_path(target)
        self._saving = (target, snap, self._extra())
        self.window.show_message(f"Saving {target.name}…", "info")
        self._pool.start(_Write(target, snap, self._written))
        return self.wait_saved() if wait else True

    def wait_saved(self) -> bool:
        """Wait for a save being written (the window keeps painting meanwhile); True when the last save succeeded."""
        if self._saving is not None:  # (the writer's report is queued: it arrives in this loop, never before)
            self._loop = QEventLoop()
            try:
                self._loop.exec()
            finally:
                self._loop = None
        return self._last_ok

    _last_ok = True
    _loop: QEventLoop | None = None

    def _on_written(self, target: str, written: str, error: str) -> None:
        saving, self._saving = self._saving, None
        self._last_ok = bool(written)
        if self._loop is not None:
            self._loop.quit()
        if not written:
            self.window.show_message(f"Could not save the project: {error}", "error")
            emit(self.save_failed, error)
            return
        path = Path(written)
        self.path = path
        self._remember(path)
        if saving is not None:  # the document as it was when the save began: an edit since leaves it unsaved
            self._saved_mark, self._saved_extra = saving[1].mark, saving[2]
        self.update_title()
        self.window.show_message(f"Saved {path.name}")
        emit(self.saved, str(path))

    # -- opening ------------------------------------------------------------------------------------------

    def open_dialog(self) -> None:
        start = self.path.parent if self.path is not None else Path(self.session.output_dir)
        chosen, _ = QFileDialog.getOpenFileName(self.window, "Open project", str(start), f"{FILTER};;All files (*)")
        if chosen:
            self.open(Path(chosen))

    def open(self, path: Path | str) -> bool:
        """Open a project in place of the document (asking about unsaved changes first). A file that does not read
        as a project is one line, and the document stays as it was."""
        path = Path(path)
        if not self.confirm_discard("opening another project"):
            return False
        try:
            loaded = project.load(path)
        except project.ProjectError as e:
            self.window.show_message(f"Could not open {path.name}: {e}", "error")
            return False
        doc = self.document
        doc.restore(loaded.state, loaded.entries, loaded.cursor)
        doc.set_selection(loaded.selection)
        self.session.staging.restore(loaded.staged, loaded.staged_index)
        params = Params.from_dict({**self.session.params.to_dict(), **loaded.params})
        missing_model = params.model and not Path(params.model).exists()
        if missing_model:  # a project from another machine: its model path is that disk's
            params.model = self.session.params.model
        self.session.set_params(params)
        self.path = path.resolve()
        self._remember(self.path)
        self._mark_saved()
        w, h = doc.size()
        note = ""
        if missing_model:
            note = f"; its model {Path(loaded.params['model']).name} is not here: kept the current one"
        self.window.show_message(f"Opened {path.name} ({w}×{h}, {loaded.cursor} undo steps){note}",
                                 "attention" if note else "info")  # fmt: skip
        return True

    def new_document(self) -> None:
        """After File > New canvas: a document of its own, saved nowhere yet."""
        self.path = None
        self._saved_mark, self._saved_extra = _NEVER, None
        self.update_title()

    # -- recent projects ----------------------------------------------------------------------------------

    def _remember(self, path: Path) -> None:
        self.settings.recent_projects = project.add_recent(self.settings.recent_projects, path)
        self.window.save_settings()  # a crash after a save still lists it

    def recent(self) -> list[str]:
        """The recent projects that still exist; those gone are dropped from the settings, and said."""
        kept, missing = project.split_missing(list(self.settings.recent_projects))
        if missing:
            self.settings.recent_projects = kept
            names = ", ".join(Path(m).name for m in missing)
            self.window.show_message(f"No longer on disk, dropped from the recent projects: {names}", "warning")
        return kept

    def fill_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        paths = self.recent()
        for n, p in enumerate(paths, 1):
            act = menu.addAction(f"&{n} {Path(p).name}", lambda p=p: self.open(p))
            act.setToolTip(p)
        if not paths:
            menu.addAction("No recent projects").setEnabled(False)
