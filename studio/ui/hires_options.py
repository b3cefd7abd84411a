"""The hires fix group of the prompt panel (Text mode): A1111's two passes, its names and defaults."""

from __future__ import annotations

from pathlib import PureWindowsPath

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from studio.core.requests import HIRES_MAX_SCALE, LATENT_UPSCALERS, MAX_SIDE, HiresOptions
from studio.session import Params, Session
from studio.ui.canvas_options import hold_shown, set_clamped
from studio.ui.theme import muted_label

PLAIN = (*LATENT_UPSCALERS, "Lanczos")  # A1111's names: latent space, then the plain resize


def final_size_text(p: Params, native: int) -> str:
    """'512x512 → 1024x1024' (the native size when the panel's is 0); a size past MAX_SIDE says so."""
    w, h = p.width or native, p.height or native
    if not (w and h):
        return f"Native size × {p.hires_scale:g}"
    if p.hires_scale <= 1.0:
        return f"{w}x{h}: ×1 runs no second pass"
    fw, fh = HiresOptions(scale=p.hires_scale).size(w, h)
    text = f"{w}x{h} → {fw}x{fh}"
    return text + f": too large (at most {MAX_SIDE} px a side)" if max(fw, fh) > MAX_SIDE else text


class HiresFixOptions(QWidget):
    """Checkbox, factor, upscaler, hires steps, denoising strength, and the final size."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(6)
        self.enabled = QCheckBox("Hires fix")
        self.enabled.setToolTip("Generate at the model's size, upscale, then refine at the larger size in a second "
                                "pass (A1111's hires fix): more detail without doubled heads")  # fmt: skip
        self.final = QLabel()
        self.final.setObjectName("Muted")
        self.final.setToolTip("The first pass's size → the final size")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(1.0, HIRES_MAX_SCALE)
        self.scale.setSingleStep(0.25)
        self.scale.setDecimals(2)
        self.scale.setSuffix("×")
        self.scale.setToolTip("Upscale by: 2× doubles width and height for the second pass")
        self.upscaler = QComboBox()
        self.upscaler.setToolTip("How the first image is enlarged: Latent (in latent space, needs strength 0.5 or "
                                 "more), Lanczos (a plain resize) or an upscaler model (sharper start)")  # fmt: skip
        self.steps = QSpinBox()
        self.steps.setRange(0, 1000)
        self.steps.setSpecialValueText("Same")
        self.steps.setToolTip("Hires steps: the steps of the second pass (Same: as many as the first)")
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.01, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setToolTip("Denoising strength of the second pass: 0.7 adds detail, lower keeps the first image")
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)
        grid.addWidget(self.enabled, 0, 0)
        grid.addWidget(self.final, 0, 1, alignment=Qt.AlignmentFlag.AlignRight)
        self.fields = QWidget()  # shown when the fix is on
        self.fields.setObjectName("HiresFields")
        self.fields.setStyleSheet("#HiresFields { background: transparent; }")  # the panel's, not a window's
        fields = QGridLayout(self.fields)
        fields.setContentsMargins(0, 0, 0, 0)
        fields.setHorizontalSpacing(8)
        fields.setVerticalSpacing(4)
        for label, widget, row, col, span in (("Upscaler", self.upscaler, 0, 0, 2), ("Upscale by", self.scale, 2, 0, 1),
                                              ("Hires steps", self.steps, 2, 1, 1),
                                              ("Denoising strength", self.strength, 4, 0, 2)):  # fmt: skip
            fields.addWidget(muted_label(label), row, col, 1, span)
            fields.addWidget(widget, row + 1, col, 1, span)
        outer.addLayout(grid)
        outer.addWidget(self.fields)

        s = session
        self.enabled.toggled.connect(lambda on: s.update_params(hires_fix=bool(on)))
        self.scale.valueChanged.connect(lambda v: s.update_params(hires_scale=float(v)))
        self.upscaler.currentIndexChanged.connect(
            lambda _i: s.update_params(hires_upscaler=self.upscaler.currentData() or "Latent"))
        self.steps.valueChanged.connect(lambda v: s.update_params(hires_steps=int(v)))
        self.strength.valueChanged.connect(lambda v: s.update_params(hires_strength=float(v)))
        s.capabilities_changed.connect(lambda info: self.set_upscalers(info.upscalers))
        self.set_upscalers(s.info.upscalers)
        self.set_params(s.params)

    def set_upscalers(self, choices) -> None:
        """A1111's latent upscalers and Lanczos, then the backend's upscaler models."""
        self.upscaler.blockSignals(True)
        self.upscaler.clear()
        for name in PLAIN:
            self.upscaler.addItem(name, name)
        for value, label in choices:
            self.upscaler.addItem(label, value)
            self.upscaler.setItemData(self.upscaler.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
        self.upscaler.blockSignals(False)
        self._show_upscaler(self.session.params.hires_upscaler)

    def _show_upscaler(self, value: str) -> None:
        idx = self.upscaler.findData(value)
        if idx < 0 and value:
            # A name from an image's metadata ("4x-UltraSharp"): the listed file of that name, else kept visible
            stem = PureWindowsPath(value).stem.lower()
            idx = next((i for i in range(len(PLAIN), self.upscaler.count())
                        if PureWindowsPath(str(self.upscaler.itemData(i))).stem.lower() == stem), -1)  # fmt: skip
            if idx < 0:
                self.upscaler.addItem(f"{PureWindowsPath(value).stem} (not found)", value)
                idx = self.upscaler.count() - 1
        self.upscaler.setCurrentIndex(max(idx, 0))

    def set_params(self, p: Params) -> None:
        widgets = (self.enabled, self.scale, self.upscaler, self.steps, self.strength)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.enabled.setChecked(bool(p.hires_fix))
            set_clamped(self.scale, p.hires_scale)
            self._show_upscaler(p.hires_upscaler)
            set_clamped(self.steps, p.hires_steps)
            set_clamped(self.strength, p.hires_strength)
        finally:
            for w in widgets:
                w.blockSignals(False)
        self.fields.setVisible(bool(p.hires_fix))
        self.final.setVisible(bool(p.hires_fix))
        self.final.setText(final_size_text(p, self.session.native_side()))
        hold_shown(self.session, {"hires_scale": float(self.scale.value()), "hires_steps": int(self.steps.value()),
                                  "hires_strength": float(self.strength.value()),
                                  "hires_upscaler": self.upscaler.currentData() or "Latent"})  # fmt: skip
