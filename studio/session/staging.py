"""The staging area: a run's images wait over the canvas as candidates until the artist picks (InvokeAI's model).

Candidates are not part of the document: the canvas draws the one shown over it, and nothing changes the document
(nor its undo history) until the artist acts on a candidate:

- **Accept**: the candidate lands as a result lands without staging (the session's `apply_result`: a new layer, or
  in place of the active layer, the artist's choice), one undo entry; the rest of the staged set is dropped.
- **Discard**: every candidate is dropped; the document is as it was.
- **Keep as layer**: the candidate becomes a new layer on top (one undo entry) and leaves the set; the others stay.
- Regenerate is the session's (it submits a run); its images are added here, as a new run's are.

Every image stays in the gallery and the output folder whatever the artist picks: staging only decides what reaches
the canvas. The view state (the original shown instead of the candidate, a split view's divider) lives here too, so
the canvas and the bar agree on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio.qtcompat import emit


@dataclass(frozen=True)
class Candidate:
    """One staged image: where it was saved, what it is called in the undo history, its seed, and the request that
    made it (Regenerate sends it again; None for a candidate read back from a project file)."""

    image: QImage = field(repr=False)
    path: Path | None = None
    label: str = "Result"
    seed: int | None = None
    request: Any = field(default=None, repr=False)
    region: Any = None  # a refined region's (box, feather): Regenerate pastes its images back there too

    def layer_name(self) -> str:
        return self.path.stem if self.path is not None else f"{self.label} (seed {self.seed})" if self.seed is not None \
            else self.label  # fmt: skip


class Staging(QObject):
    changed = Signal()  # the candidates, the one shown, or the view (original / split)

    def __init__(self, apply: Callable[[Candidate], None], document, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._apply = apply  # lands a candidate on the document as a result (the session's apply_result)
        self.document = document
        self.enabled = True  # "Stage results": off, results land at once (the session asks this)
        self.candidates: list[Candidate] = []
        self.index = 0
        self.show_original = False  # the document shown instead of the candidate (a toggle, or a key held)
        self.split: float | None = None  # a split view: the divider at this fraction of the width (original left)

    # -- the set ------------------------------------------------------------------------------------------

    def active(self) -> bool:
        return bool(self.candidates)

    def current(self) -> Candidate | None:
        return self.candidates[self.index] if self.candidates else None

    def position(self) -> str:
        """ "2 / 4": the candidate shown and how many are staged ("" when none)."""
        return f"{self.index + 1} / {len(self.candidates)}" if self.candidates else ""

    def add(self, candidates: Iterable[Candidate]) -> None:
        """Stage a run's images after those already staged (a new run never drops them); its first one is shown."""
        new = [c for c in candidates if c.image is not None and not c.image.isNull()]
        if not new:
            return
        self.index = len(self.candidates)
        self.candidates.extend(new)
        self.show_original = False
        emit(self.changed)

    def restore(self, candidates: list[Candidate], index: int = 0) -> None:
        """Put back a saved set (a project opened): it replaces the staged set of the document that was open."""
        self.candidates = [c for c in candidates if c.image is not None and not c.image.isNull()]
        self.index = max(0, min(int(index), len(self.candidates) - 1))
        self.show_original = False
        emit(self.changed)

    def step(self, delta: int) -> None:
        """Previous (-1) or next (+1) candidate, round the set."""
        if len(self.candidates) > 1:
            self.index = (self.index + delta) % len(self.candidates)
            emit(self.changed)

    def select(self, index: int) -> None:
        if 0 <= index < len(self.candidates) and index != self.index:
            self.index = index
            emit(self.changed)

    # -- the view -----------------------------------------------------------------------------------------

    def set_show_original(self, on: bool) -> None:
        if bool(on) != self.show_original:
            self.show_original = bool(on)
            emit(self.changed)

    def set_split(self, at: float | None) -> None:
        """A split view with its divider at `at` (0..1 of the width: the original left of it), or None."""
        at = None if at is None else min(1.0, max(0.0, float(at)))
        if at != self.split:
            self.split = at
            emit(self.changed)

    # -- the artist's choice --------------------------------------------------------------------------------

    def accept(self) -> bool:
        """The candidate shown lands on the document (one undo entry); the set is emptied."""
        chosen = self.current()
        if chosen is None:
            return False
        self._apply(chosen)  # (first: the canvas never shows the document without the candidate in between)
        self._clear()
        return True

    def discard(self) -> bool:
        """Drop every candidate; the document is untouched."""
        if not self.candidates:
            return False
        self._clear()
        return True

    def keep_as_layer(self) -> bool:
        """The candidate shown becomes a new layer on top (one undo entry) and leaves the set; the rest stay."""
        chosen = self.current()
        if chosen is None:
            return False
        del self.candidates[self.index]
        self.index = min(self.index, max(0, len(self.candidates) - 1))
        if not self.candidates:
            self.show_original = False
        self.document.add_image_layer(chosen.image, chosen.path, name=chosen.layer_name(), label="Keep as layer",
                                      top=True)  # fmt: skip
        emit(self.changed)
        return True

    def _clear(self) -> None:
        self.candidates, self.index, self.show_original = [], 0, False
        emit(self.changed)
