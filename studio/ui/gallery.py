"""The gallery: this session's results first, then earlier ones from the output folder.

Thumbnails of earlier files are read on a background thread (QImageReader with a scaled
size; QImage is safe off the GUI thread), so a big output folder never stalls the window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidgetItem, QWidget

from studio.core.branch import read_info
from studio.core.metadata import branch_info, parse_parameters
from studio.qtcompat import emit
from studio.ui.widgets import HintList

THUMB = 112
PATH_ROLE = Qt.ItemDataRole.UserRole
IMAGE_ROLE = Qt.ItemDataRole.UserRole + 2  # the full image, for a result that is not on disk


def thumbnail(image: QImage, size: int = THUMB) -> QImage:
    return image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


def branch_badge(thumb: QImage, text: str) -> QImage:
    """The thumbnail with a strip along its bottom that says which branch it is ("branch @8")."""
    out = thumb.convertToFormat(QImage.Format.Format_ARGB32)
    p = QPainter(out)
    h = max(14, out.height() // 7)
    p.fillRect(0, out.height() - h, out.width(), h, QColor(20, 20, 24, 190))
    p.setPen(QColor("#e8e8ec"))
    font = p.font()
    font.setPixelSize(h - 4)
    p.setFont(font)
    p.drawText(0, out.height() - h, out.width(), h, Qt.AlignmentFlag.AlignCenter, text)
    p.end()
    return out


class ThumbnailLoader(QObject):
    loaded = Signal(str, QImage)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, paths: list[Path] | Callable[[], list[Path]]) -> None:
        """Read thumbnails of `paths` (or of what the callable lists, called on the loader thread)."""
        self.stop()
        self._stop = threading.Event()
        stop = self._stop
        self._thread = threading.Thread(target=self._run, args=(paths, stop), name="studio-thumbs", daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path] | Callable[[], list[Path]], stop: threading.Event) -> None:
        if callable(paths):
            paths = paths()  # listing a big folder is slow too: not on the GUI thread
        for path in paths:
            if stop.is_set():
                return
            reader = QImageReader(str(path))
            size = reader.size()
            if size.isValid():  # every thumbnail THUMB wide or high, small images too
                reader.setScaledSize(size.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio))
            image = reader.read()
            if not image.isNull() and not stop.is_set():
                emit(self.loaded, str(path), image)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None


class Gallery(HintList):
    """Icon grid of results; items carry their file path."""

    image_activated = Signal(str)  # single click: show it
    parameters_requested = Signal(str)  # double click: show it and load its parameters

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Finished images appear here, with earlier ones from the output folder", parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setGridSize(QSize(THUMB + 10, THUMB + 10))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setUniformItemSizes(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setMinimumHeight(THUMB + 30)
        self.setToolTip("Results: click to view, double-click to reuse its parameters, right-click for more")
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.loader = ThumbnailLoader(self)
        self.loader.loaded.connect(self._add_loaded)
        self.itemClicked.connect(lambda it: emit(self.image_activated, it.data(PATH_ROLE) or ""))
        self.currentItemChanged.connect(self._current_changed)  # arrow keys browse the results
        self.itemDoubleClicked.connect(lambda it: emit(self.parameters_requested, it.data(PATH_ROLE) or ""))
        self._paths: set[str] = set()

    def _current_changed(self, item, _previous) -> None:
        if item is not None and self.hasFocus():
            emit(self.image_activated, item.data(PATH_ROLE) or "")

    def paths(self) -> list[str]:
        return [self.item(i).data(PATH_ROLE) for i in range(self.count())]

    def _make_item(self, path: str, thumb: QImage, read_file: bool = True) -> QListWidgetItem:
        # A branch says so: "branch of x.png at step 8". A thumbnail read from its file carries the PNG's text; a
        # new result's file is read once (the folder's hundreds never are, on this thread).
        text = thumb.text("parameters")
        if text:
            info = read_info(parse_parameters(text)["params"])
        else:
            info = branch_info(path) if path and read_file else None
        if info is not None:
            thumb = branch_badge(thumb, f"branch @{info.step}")
        pix = QPixmap.fromImage(thumb)
        icon = QIcon(pix)
        icon.addPixmap(pix, QIcon.Mode.Selected)  # no highlight tint over the picture: the frame shows it
        item = QListWidgetItem(icon, "")
        item.setData(PATH_ROLE, path)
        item.setToolTip(Path(path).name if path else "not saved")
        if info is not None:
            changed = f" ({', '.join(info.changes)} changed)" if info.changes else " (nothing changed)"
            item.setToolTip(f"{Path(path).name}\n{info.label()}{changed}")
        item.setSizeHint(QSize(THUMB + 6, THUMB + 6))
        return item

    def add_result(self, path: str, image: QImage) -> None:
        """A new result of this session: first in the grid."""
        if path and path in self._paths:
            return
        self._paths.add(path)
        item = self._make_item(path, thumbnail(image))
        if not path:
            item.setData(IMAGE_ROLE, QImage(image))
            item.setToolTip("Not saved: right-click > Save as to keep it")
        self.insertItem(0, item)
        self.setCurrentRow(0)

    def load_folder(self, paths: list[Path] | Callable[[], list[Path]]) -> None:
        """Earlier results (newest first), appended after this session's as they load."""
        for i in range(self.count() - 1, -1, -1):
            item = self.item(i)
            if item.data(Qt.ItemDataRole.UserRole + 1):  # from an earlier load: reload
                self._paths.discard(item.data(PATH_ROLE))
                self.takeItem(i)
        self.loader.load(paths)

    def _add_loaded(self, path: str, thumb: QImage) -> None:
        if path in self._paths:
            return
        self._paths.add(path)
        item = self._make_item(path, thumb, read_file=False)
        item.setData(Qt.ItemDataRole.UserRole + 1, True)
        self.addItem(item)

    def shutdown(self) -> None:
        self.loader.stop()
