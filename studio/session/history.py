"""Undo and redo over the document: mask strokes (as patches) and image changes (no Qt objects needed).

A stroke on a 2048x2048 mask keeps only the rectangle it touched (before and after), so a long
history stays small; an image change (a result, a new canvas, an outpaint) keeps both states whole.
Entries are plain data, so the autosave can write them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Rect = tuple[int, int, int, int]  # x, y, w, h in image pixels


@dataclass(frozen=True)
class MaskEdit:
    """A change of the mask inside `rect` (None: the whole mask, which may appear or vanish)."""

    label: str
    rect: Rect | None
    before: np.ndarray | None = field(repr=False)  # the patch (or whole mask) before; None: no mask
    after: np.ndarray | None = field(repr=False)


@dataclass(frozen=True)
class ImageEdit:
    """The image (and with it the mask) replaced: a result, a new canvas, an outpaint."""

    label: str
    before: Any = field(repr=False)  # an opaque document state (the document knows its shape)
    after: Any = field(repr=False)


@dataclass(frozen=True)
class LayerPaint:
    """A colour stroke (or its eraser) on one layer (`layer`: its uid): the RGBA patch inside `rect`, before and
    after. The layer's array is painted in place, so only the touched rectangle is kept."""

    label: str
    layer: int
    rect: Rect
    before: np.ndarray = field(repr=False)
    after: np.ndarray = field(repr=False)


Entry = MaskEdit | ImageEdit | LayerPaint


class History:
    """A linear undo stack with a cursor; a new entry after an undo drops the redo branch."""

    def __init__(self, limit_bytes: int = 512 * 1024 * 1024, on_change: Callable[[], None] | None = None):
        self.entries: list[Entry] = []
        self.cursor = 0  # entries[:cursor] are done, entries[cursor:] can be redone
        self.limit_bytes = limit_bytes
        self.on_change = on_change

    def push(self, entry: Entry) -> None:
        del self.entries[self.cursor :]
        self.entries.append(entry)
        self.cursor = len(self.entries)
        self._trim()
        self._changed()

    def can_undo(self) -> bool:
        return self.cursor > 0

    def can_redo(self) -> bool:
        return self.cursor < len(self.entries)

    def undo(self) -> Entry | None:
        if not self.can_undo():
            return None
        self.cursor -= 1
        self._changed()
        return self.entries[self.cursor]

    def redo(self) -> Entry | None:
        if not self.can_redo():
            return None
        self.cursor += 1
        self._changed()
        return self.entries[self.cursor - 1]

    def clear(self) -> None:
        self.entries, self.cursor = [], 0
        self._changed()

    def undo_label(self) -> str:
        return self.entries[self.cursor - 1].label if self.can_undo() else ""

    def redo_label(self) -> str:
        return self.entries[self.cursor].label if self.can_redo() else ""

    def nbytes(self) -> int:
        """The memory the entries hold; what several share (a layer's array, a state's image) counts once."""
        seen: dict = {}
        for e in self.entries:
            seen.update(_entry_parts(e))
        return sum(seen.values())

    def _trim(self) -> None:
        # Oldest entries go first once the history holds more than its budget (always keep the newest).
        while len(self.entries) > 1 and self.nbytes() > self.limit_bytes:
            self.entries.pop(0)
            self.cursor = max(0, self.cursor - 1)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _entry_parts(e: Entry) -> list:
    if isinstance(e, (MaskEdit, LayerPaint)):
        return [(("a", id(a)), a.nbytes) for a in (e.before, e.after) if a is not None]
    out: list = []
    for s in (e.before, e.after):
        parts = getattr(s, "parts", None)
        out.extend(parts() if parts is not None else [(("o", id(s)), getattr(s, "nbytes", 0))])
    return out


def patch(mask: np.ndarray | None, rect: Rect | None) -> np.ndarray | None:
    """A copy of mask inside rect (or the whole mask)."""
    if mask is None:
        return None
    if rect is None:
        return mask.copy()
    x, y, w, h = rect
    return mask[y : y + h, x : x + w].copy()


def clip_rect(rect: Rect, width: int, height: int) -> Rect | None:
    x, y, w, h = rect
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def union(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0)
