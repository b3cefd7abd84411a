"""The document: the image being worked on, its mask, and their undo history.

The canvas shows it and paints into it; it does not own it. The mask is an HxW uint8 array the
size of the image (255 = repaint, as the engine takes it), or None. A new image of another size
drops the mask; one of the same size keeps it, so a mask painted once is reused across runs.

Every change that an artist would want back is recorded: strokes (as the rectangle they touched),
mask fill / clear / invert / load / grow / shrink, rectangle and lasso fills (a patch each), and image
replacements (results, a new canvas, an outpaint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio.qimage import array_to_qimage, qimage_to_array
from studio.qtcompat import emit

from .history import History, ImageEdit, MaskEdit, Rect, clip_rect, patch, union
from .masktools import Region, apply_region, grow, shrink


@dataclass(frozen=True)
class DocState:
    """One whole state of the document (what an image edit keeps before and after)."""

    image: QImage | None = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    path: Path | None = None
    caption: str = ""

    @property
    def nbytes(self) -> int:
        n = self.image.sizeInBytes() if self.image is not None else 0
        return n + (self.mask.nbytes if self.mask is not None else 0)


class Document(QObject):
    image_changed = Signal(QImage)
    mask_changed = Signal(object)  # the Rect (x, y, w, h) that changed, or None: all of it
    history_changed = Signal()
    changed = Signal()  # anything an autosave should write (image, mask or history)
    selection_changed = Signal(object)  # the selected rectangle (x, y, w, h in image px), or None

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.path: Path | None = None  # where the image is on disk, if it is
        self.caption = ""
        self._mask: np.ndarray | None = None
        self.history = History(on_change=lambda: emit(self.history_changed))
        self._stroke: tuple[str, np.ndarray | None, Rect | None] | None = None  # label, mask before, touched
        self.selection: Rect | None = None  # a region to work on (upscale it), not part of the undo history

    # -- image --------------------------------------------------------------------------------

    def state(self) -> DocState:
        """A snapshot: the mask is copied (strokes paint into the live one in place)."""
        mask = self._mask.copy() if self._mask is not None else None
        return DocState(self.image, mask, self.path, self.caption)

    def set_image(self, image: QImage | None, path: Path | None = None, caption: str = "",
                  record: str | None = None, merge: bool = False) -> None:  # fmt: skip
        """Show a new image. record: an undo label ("Result", "Open image"...), None: not undoable. merge: fold into
        the last entry when it has the same label and nothing changed since (browsing the gallery: one entry)."""
        before = self.state()
        h = self.history
        last = h.entries[-1] if h.entries and h.cursor == len(h.entries) else None
        if merge and isinstance(last, ImageEdit) and last.label == record and last.after.image is self.image:
            before = last.before
            del h.entries[-1]
            h.cursor -= 1
        same_size = image is not None and self.image is not None and image.size() == self.image.size()
        mask = self._mask if same_size else None
        self._apply(DocState(image, mask, path, caption))
        if record:
            self.history.push(ImageEdit(record, before, self.state()))
        emit(self.changed)

    def replace(self, image: QImage, mask: np.ndarray | None, label: str, path: Path | None = None,
                caption: str = "") -> None:  # fmt: skip
        """Image and mask together, undoably (an outpaint's larger canvas and its new mask)."""
        if mask is not None:
            mask = self._checked(mask, image.width(), image.height())
        before = self.state()
        self._apply(DocState(image, mask, path, caption))
        self.history.push(ImageEdit(label, before, self.state()))
        emit(self.changed)

    def set_selection(self, rect: Rect | None) -> None:
        """Select a rectangle of the image (clipped to it; None or an empty one clears the selection)."""
        if rect is not None:
            w, h = self.size()
            x, y, rw, rh = (int(v) for v in rect)
            rect = clip_rect((x, y, rw, rh), w, h)
            if rect is not None and (rect[2] < 2 or rect[3] < 2):
                rect = None
        if rect != self.selection:
            self.selection = rect
            emit(self.selection_changed, rect)

    def _apply(self, state: DocState) -> None:
        if self.image is None or state.image is None or self.image.size() != state.image.size():
            self.set_selection(None)  # a selection belongs to an image of its size
        mask_before = self._mask
        self.image, self.path, self.caption = state.image, state.path, state.caption
        self._mask = state.mask.copy() if state.mask is not None else None  # never paint into a history entry
        emit(self.image_changed, state.image if state.image is not None else QImage())
        if mask_before is not state.mask:
            emit(self.mask_changed, None)

    def has_image(self) -> bool:
        return self.image is not None and not self.image.isNull()

    def size(self) -> tuple[int, int]:
        """(width, height), (0, 0) without an image."""
        image = self.image
        return (image.width(), image.height()) if image is not None and not image.isNull() else (0, 0)

    def image_array(self) -> np.ndarray | None:
        """A copy of the image as HxWx3 uint8 RGB (what a request takes)."""
        image = self.image
        if image is None or image.isNull():
            return None
        return qimage_to_array(image.convertToFormat(QImage.Format.Format_RGB888))[..., :3].copy()

    # -- mask ---------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    def has_mask(self) -> bool:
        return self._mask is not None and bool(self._mask.any())

    def _checked(self, mask: np.ndarray, w: int, h: int) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.dtype != np.uint8 or mask.shape != (h, w):
            raise ValueError(f"the mask must be {w}x{h} uint8, got {mask.shape[::-1]} {mask.dtype}")
        return mask.copy()

    def set_mask(self, mask: np.ndarray | None, label: str | None = None) -> None:
        """Replace the mask (copied); label makes it undoable. ValueError when it is not HxW uint8
        of the image's size."""
        if mask is not None:
            mask = self._checked(mask, *self.size())
        before = self._mask
        self._mask = mask
        if label:
            self.history.push(MaskEdit(label, None, before, mask.copy() if mask is not None else None))
        emit(self.mask_changed, None)
        emit(self.changed)

    def clear_mask(self) -> None:
        if self._mask is not None:
            self.set_mask(None, "Clear mask")

    def fill_mask(self) -> None:
        if self.has_image():
            w, h = self.size()
            self.set_mask(np.full((h, w), 255, np.uint8), "Fill mask")

    def invert_mask(self) -> None:
        if self.has_image():
            w, h = self.size()
            current = self._mask if self._mask is not None else np.zeros((h, w), np.uint8)
            self.set_mask(255 - current, "Invert mask")

    def fill_region(self, region: Region | None, erase: bool = False, label: str = "Fill shape") -> bool:
        """Mask (or with erase unmask) a region (studio.session.masktools: a rectangle, a lasso), one
        undo entry; False when it changed nothing (no image, or erasing where nothing is masked)."""
        if region is None or not self.has_image() or (erase and self._mask is None):
            return False
        if self._stroke is not None:
            self.end_stroke()
        w, h = self.size()
        (x, y, rw, rh), inside = region
        if inside.shape != (rh, rw) or clip_rect((x, y, rw, rh), w, h) != (x, y, rw, rh):
            raise ValueError(f"the region {(x, y, rw, rh)} is not inside the {w}x{h} image")
        rect = (x, y, rw, rh)
        if self._mask is None:  # the first shape makes the mask: undo removes it again, as after a stroke
            self._mask = np.zeros((h, w), np.uint8)
            apply_region(self._mask, region, erase)
            self.history.push(MaskEdit(label, None, None, self._mask.copy()))
        else:
            before = self._mask[y : y + rh, x : x + rw].copy()
            apply_region(self._mask, region, erase)
            after = self._mask[y : y + rh, x : x + rw].copy()
            if np.array_equal(before, after):
                return False
            self.history.push(MaskEdit(label, rect, before, after))
        emit(self.mask_changed, rect)
        emit(self.changed)
        return True

    def grow_mask(self, pixels: int) -> bool:
        """Move the mask's edge out by pixels (a round brush), one undo entry; False when nothing changed."""
        return self._morph(grow, pixels, f"Grow mask {int(pixels)} px")

    def shrink_mask(self, pixels: int) -> bool:
        """Move the mask's edge in by pixels, one undo entry; False when nothing changed."""
        return self._morph(shrink, pixels, f"Shrink mask {int(pixels)} px")

    def _morph(self, op, pixels: int, label: str) -> bool:
        if self._mask is None or int(pixels) <= 0:
            return False
        if self._stroke is not None:
            self.end_stroke()
        changed = op(self._mask, int(pixels))
        if np.array_equal(changed, self._mask):
            return False
        self.set_mask(changed, label)
        return True

    def mask_image(self) -> QImage | None:
        """The mask as a Grayscale8 QImage, or None."""
        return array_to_qimage(self._mask) if self._mask is not None else None

    # -- strokes: a tool paints into the working mask in place -------------------------------

    def begin_stroke(self, label: str = "Brush stroke") -> np.ndarray | None:
        """The mask to paint into, in place (created empty if there is none); None without an image.
        Call stroke_updated(rect) after each dab or segment and end_stroke() at the end."""
        if not self.has_image():
            return None
        if self._stroke is not None:
            self.end_stroke()
        before = self._mask.copy() if self._mask is not None else None
        if self._mask is None:
            w, h = self.size()
            self._mask = np.zeros((h, w), np.uint8)
        self._stroke = (label, before, None)
        return self._mask

    def stroke_updated(self, rect: Rect) -> None:
        if self._stroke is None:
            return
        w, h = self.size()
        clipped = clip_rect(rect, w, h)
        if clipped is None:
            return
        label, before, touched = self._stroke
        self._stroke = (label, before, union(touched, clipped))
        emit(self.mask_changed, clipped)

    def end_stroke(self) -> None:
        if self._stroke is None:
            return
        label, before, touched = self._stroke
        self._stroke = None
        if touched is None:  # a click that painted nothing
            if before is None and self._mask is not None and not self._mask.any():
                self._mask = None
            return
        assert self._mask is not None  # the stroke painted: a mask exists
        if before is None:  # the mask was created by this stroke: undo removes it again
            self.history.push(MaskEdit(label, None, None, self._mask.copy()))
        else:
            self.history.push(MaskEdit(label, touched, patch(before, touched), patch(self._mask, touched)))
        emit(self.changed)

    def in_stroke(self) -> bool:
        return self._stroke is not None

    def stroke_base(self) -> tuple[bool, np.ndarray | None]:
        """(in a stroke, the mask as it was before the stroke began): what an autosave keeps mid-stroke."""
        if self._stroke is None:
            return False, None
        return True, self._stroke[1]

    def restore(self, state: DocState, entries: list | None = None, cursor: int | None = None) -> None:
        """Put back a saved document (the autosave after a crash): its state and its undo history."""
        self._stroke = None
        self._apply(state)
        self.history.entries = list(entries or [])
        self.history.cursor = len(self.history.entries) if cursor is None else max(0, min(cursor, len(self.history.entries)))
        emit(self.history_changed)
        emit(self.changed)

    # -- undo / redo --------------------------------------------------------------------------

    def undo(self) -> str:
        """Undo the last change; returns its label ("" when there was nothing to undo)."""
        if self._stroke is not None:
            self.end_stroke()
        entry = self.history.undo()
        if entry is None:
            return ""
        self._revert(entry, entry_state="before")
        return entry.label

    def redo(self) -> str:
        entry = self.history.redo()
        if entry is None:
            return ""
        self._revert(entry, entry_state="after")
        return entry.label

    def _revert(self, entry, entry_state: str) -> None:
        value = getattr(entry, entry_state)
        if isinstance(entry, ImageEdit):
            self._apply(value)
        elif entry.rect is None:
            self._mask = value.copy() if value is not None else None
            emit(self.mask_changed, None)
        else:
            x, y, w, h = entry.rect
            if self._mask is None:  # cannot happen after a patch edit, but never crash on undo
                iw, ih = self.size()
                self._mask = np.zeros((ih, iw), np.uint8)
            self._mask[y : y + h, x : x + w] = value
            emit(self.mask_changed, entry.rect)
        emit(self.changed)
