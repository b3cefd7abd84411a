"""Refine a region: what an Image or Upscale run does with the canvas selection (the prompt panel's group).

The selection itself is drawn with the Select tool (M) on the canvas; here the artist reads what the run will do
with it, turns the paste-back off, sets the feathered edge and clears the selection.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from studio.qtcompat import emit
from studio.session import Params, Session
from studio.session.region import MAX_FEATHER, working_size
from studio.ui.canvas_options import set_clamped
from studio.ui.theme import muted_label
from studio.ui.widgets import section


class RegionOptions(QWidget):
    """Shown in Image and Upscale modes: the selection's fate, "Paste back in place", Feather, Deselect."""

    changed = Signal()  # paste back or feather changed (the upscale target line follows)

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(6)
        outer.addWidget(section("Refine region"))
        self.text = QLabel()
        self.text.setObjectName("Muted")
        self.text.setWordWrap(True)
        outer.addWidget(self.text)
        self.in_place = QCheckBox("Paste back in place")
        self.in_place.setToolTip(
            "On: the selection is re-rendered at the working size and pasted back at its place, its edge feathered; "
            "every pixel outside it stays exactly as it is. Off: Image mode works on the whole image, and an "
            "upscaled selection becomes the new canvas."
        )
        self.feather = QSpinBox()
        self.feather.setRange(0, MAX_FEATHER)
        self.feather.setSuffix(" px")
        self.feather.setToolTip("Feather: how wide the soft edge is, inside the selection (0: a hard edge)")
        self.deselect = QPushButton("Deselect")
        self.deselect.setToolTip("Clear the selection: the next run works on the whole image (Esc on the canvas, "
                                 "Ctrl+Shift+A)")  # fmt: skip
        outer.addWidget(self.in_place)
        row = QHBoxLayout()  # (the panel is narrow: the check box has a line of its own)
        row.setSpacing(8)
        row.addWidget(muted_label("Feather"))
        row.addWidget(self.feather, 1)
        row.addWidget(self.deselect)
        outer.addLayout(row)

        s = session
        self.in_place.toggled.connect(lambda on: self._set(region_in_place=bool(on)))
        self.feather.valueChanged.connect(lambda v: self._set(region_feather=int(v)))
        self.deselect.clicked.connect(lambda: s.document.set_selection(None))
        s.document.selection_changed.connect(lambda _rect: self.refresh())
        s.document.image_changed.connect(lambda _image: self.refresh())
        self.set_params(s.params)

    def _set(self, **changes) -> None:
        self.session.update_params(**changes)
        self.refresh()
        emit(self.changed)

    def set_params(self, p: Params) -> None:
        for w in (self.in_place, self.feather):
            w.blockSignals(True)
        try:
            self.in_place.setChecked(p.region_in_place)
            set_clamped(self.feather, p.region_feather)
        finally:
            for w in (self.in_place, self.feather):
                w.blockSignals(False)
        self.refresh()

    def refresh(self) -> None:
        s, p = self.session, self.session.params
        doc = s.document
        self.setVisible(p.mode in ("img2img", "upscale") and doc.has_image())
        selection = doc.selection
        self.deselect.setEnabled(selection is not None)
        self.feather.setEnabled(selection is not None and p.region_in_place)
        self.in_place.setEnabled(selection is not None)
        self.text.setText(self.describe())

    def describe(self) -> str:
        """What the next run does with the selection, in the artist's words."""
        s, p = self.session, self.session.params
        doc = s.document
        if doc.selection is None:
            return "Select a region on the canvas (Select tool: M) to refine just that part in place."
        _x, _y, w, h = doc.selection
        iw, ih = doc.size()
        if not p.region_in_place:
            if p.mode == "upscale":
                return f"The selection {w}×{h} is upscaled and becomes the new canvas."
            return f"Paste back is off: the whole image {iw}×{ih} is used, the selection is kept for later."
        if p.mode == "upscale":
            ow, oh = round(w * p.scale), round(h * p.scale)
            return (f"Refine region: the selection {w}×{h} is upscaled to {ow}×{oh} for detail, scaled back to "
                    f"{w}×{h} and pasted at its place; the image stays {iw}×{ih}.")  # fmt: skip
        ww, wh = working_size(w, h, s.native_side())
        return (
            f"Refine region: the selection {w}×{h} is re-rendered at the working size {ww}×{wh} and pasted "
            f"back at its place with a {p.region_feather} px feathered edge; the rest stays exactly as it is."
        )
