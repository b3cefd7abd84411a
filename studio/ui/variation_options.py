"""The Variation row of the prompt panel (Text mode): A1111's variation seed, its strength, and "resize seed
from" width/height. Collapsible: closed, it is one checkable header."""

from __future__ import annotations

from PySide6.QtCore import QRegularExpression, Qt
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLineEdit,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.requests import MAX_SEED, MAX_SIDE
from studio.session import Params, Session
from studio.ui.canvas_options import hold_shown, set_clamped
from studio.ui.theme import icon, muted_label

SLIDER_STEPS = 100  # the strength slider's ticks: 0.01 each


class VariationOptions(QWidget):
    """Variation seed (empty = random) with a dice button, strength (slider and box), resize seed from W x H."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(4)
        self.toggle = QToolButton()
        self.toggle.setText("Variation")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setToolTip("A1111's variation seed: blend the seed's noise toward another seed's, and keep a "
                               "composition when the size changes")  # fmt: skip
        self.subseed = QLineEdit()
        self.subseed.setPlaceholderText("random")
        self.subseed.setValidator(QRegularExpressionValidator(QRegularExpression(r"-1|\d{0,10}")))
        self.subseed.setToolTip(f"Variation seed: the noise the seed's noise moves toward. Empty = random "
                                f"(0 to {MAX_SEED}); image i of a batch uses this + i")  # fmt: skip
        self.dice = QToolButton()
        self.dice.setIcon(icon("dice"))
        self.dice.setToolTip("A random variation seed for every run")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        tip = "Variation strength: 0 = the seed's own image, 1 = the variation seed's"
        self.slider.setToolTip(tip)
        self.strength.setToolTip(tip)
        self.resize_w, self.resize_h = QSpinBox(), QSpinBox()
        for box, side in ((self.resize_w, "width"), (self.resize_h, "height")):
            box.setRange(0, MAX_SIDE)
            box.setSingleStep(8)
            box.setSpecialValueText("Off")
            box.setToolTip(f"Resize seed from {side}: the noise made at this size and pasted centred into the new "
                           "size's, so a composition survives a size change (both set, or off)")  # fmt: skip
        self.fields = QWidget()
        self.fields.setObjectName("VariationFields")
        self.fields.setStyleSheet("#VariationFields { background: transparent; }")
        grid = QGridLayout(self.fields)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)
        grid.addWidget(muted_label("Variation seed"), 0, 0, 1, 2)
        seed_row = QHBoxLayout()
        seed_row.setSpacing(4)
        seed_row.addWidget(self.subseed, 1)
        seed_row.addWidget(self.dice)
        grid.addLayout(seed_row, 1, 0, 1, 2)
        grid.addWidget(muted_label("Variation strength"), 2, 0, 1, 2)
        strength_row = QHBoxLayout()
        strength_row.setSpacing(6)
        strength_row.addWidget(self.slider, 1)
        strength_row.addWidget(self.strength)
        grid.addLayout(strength_row, 3, 0, 1, 2)
        grid.addWidget(muted_label("Resize seed from width"), 4, 0)
        grid.addWidget(muted_label("height"), 4, 1)
        grid.addWidget(self.resize_w, 5, 0)
        grid.addWidget(self.resize_h, 5, 1)
        outer.addWidget(self.toggle)
        outer.addWidget(self.fields)
        self.fields.setVisible(False)

        s = session
        self.toggle.toggled.connect(self._open)
        self.subseed.textChanged.connect(self._subseed_edited)
        self.dice.clicked.connect(lambda: self.subseed.setText(""))
        self.slider.valueChanged.connect(lambda v: self.strength.setValue(v / SLIDER_STEPS))
        self.strength.valueChanged.connect(self._strength_changed)
        self.resize_w.valueChanged.connect(lambda v: s.update_params(seed_resize_from_w=int(v)))
        self.resize_h.valueChanged.connect(lambda v: s.update_params(seed_resize_from_h=int(v)))
        self.set_params(s.params)

    def _open(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.fields.setVisible(on)

    def _subseed_edited(self, text: str) -> None:
        try:
            value = int(text) if text.strip() else -1
        except ValueError:
            value = -1
        self.session.update_params(subseed=min(value, MAX_SEED))

    def _strength_changed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self.session.update_params(subseed_strength=float(value))
        self._show_title(self.session.params)

    def _show_title(self, p: Params) -> None:
        on = p.subseed_strength > 0 or (p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0)
        self.toggle.setText(f"Variation ({p.subseed_strength:g})" if p.subseed_strength > 0 else
                            "Variation (resized seed)" if on else "Variation")  # fmt: skip

    def set_params(self, p: Params) -> None:
        widgets = (self.subseed, self.slider, self.strength, self.resize_w, self.resize_h)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.subseed.setText(str(p.subseed) if 0 <= p.subseed <= MAX_SEED else "")
            set_clamped(self.strength, p.subseed_strength)
            self.slider.setValue(round(self.strength.value() * SLIDER_STEPS))
            set_clamped(self.resize_w, p.seed_resize_from_w)
            set_clamped(self.resize_h, p.seed_resize_from_h)
        finally:
            for w in widgets:
                w.blockSignals(False)
        if (p.subseed_strength > 0 or p.seed_resize_from_w > 0) and not self.toggle.isChecked():
            self.toggle.setChecked(True)  # an image that used a variation opens the row
        self._show_title(p)
        hold_shown(self.session, {"subseed_strength": float(self.strength.value()),
                                  "seed_resize_from_w": int(self.resize_w.value()),
                                  "seed_resize_from_h": int(self.resize_h.value())})  # fmt: skip
