"""The prompt panel's mode switch (text to image, image to image, inpaint) and the canvas options."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.session import Params, Session

MODE_BUTTONS = (
    ("txt2img", "Text", "Text to image: a new image from the prompt (Ctrl+1)"),
    ("img2img", "Image", "Image to image: the canvas image as the start, changed by the prompt (Ctrl+2)"),
    ("inpaint", "Inpaint", "Inpaint: repaint the masked area of the canvas from the prompt (Ctrl+3)"),
)
AREAS = (("whole", "Whole picture"), ("masked", "Only masked"))
CONTENTS = (("original", "Original"), ("fill", "Fill"), ("noise", "Latent noise"))


class ModeSwitch(QWidget):
    """Three exclusive buttons; the session's params.mode is the truth."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        self.buttons: dict[str, QToolButton] = {}
        for mode, text, tip in MODE_BUTTONS:
            b = QToolButton()
            b.setText(text)
            b.setCheckable(True)
            b.setToolTip(tip)
            b.setObjectName("ModeButton")
            b.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.group.addButton(b)
            self.buttons[mode] = b
            lay.addWidget(b, 1)
            b.clicked.connect(lambda _c=False, m=mode: session.set_mode(m))
        self.show_mode(session.params.mode)

    def show_mode(self, mode: str) -> None:
        b = self.buttons.get(mode) or self.buttons["txt2img"]
        b.blockSignals(True)
        b.setChecked(True)
        b.blockSignals(False)


class CanvasOptions(QWidget):
    """Denoising strength (image to image, inpaint) and the inpaint options, A1111's names and defaults."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        outer.addLayout(grid)

        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.01, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setToolTip("Denoising strength: how much may change. 1 repaints freely, 0.3 keeps the shapes.")
        self.mask_blur = QSpinBox()
        self.mask_blur.setRange(0, 256)
        self.mask_blur.setSuffix(" px")
        self.mask_blur.setToolTip("Mask blur: feathers the mask's edge so the repainted area blends in")
        self.area = QComboBox()
        for value, label in AREAS:
            self.area.addItem(label, value)
        self.area.setToolTip(
            "Inpaint area. Whole picture: the model sees it all. Only masked: the masked area (plus padding) is "
            "cropped and inpainted at the full working size, then pasted back: small areas get full detail. "
            "The dashed rectangle on the canvas shows that area."
        )
        self.padding = QSpinBox()
        self.padding.setRange(0, 1024)
        self.padding.setSingleStep(8)
        self.padding.setSuffix(" px")
        self.padding.setToolTip("Only masked: how much of the surroundings around the mask the model sees")
        self.content = QComboBox()
        for value, label in CONTENTS:
            self.content.addItem(label, value)
        self.content.setToolTip(
            "Masked content: what the masked area starts from. Original: the image as it is; Fill: the "
            "surrounding colours; Latent noise: fresh noise (use a high strength)."
        )
        labels = [self._label(t) for t in ("Denoising strength", "Mask blur", "Inpaint area", "Padding",
                                           "Masked content")]  # fmt: skip
        grid.addWidget(labels[0], 0, 0)
        grid.addWidget(labels[1], 0, 1)
        grid.addWidget(self.strength, 1, 0)
        grid.addWidget(self.mask_blur, 1, 1)
        grid.addWidget(labels[2], 2, 0)
        grid.addWidget(labels[3], 2, 1)
        grid.addWidget(self.area, 3, 0)
        grid.addWidget(self.padding, 3, 1)
        grid.addWidget(labels[4], 4, 0, 1, 2)
        grid.addWidget(self.content, 5, 0, 1, 2)
        # Only these: findChildren would also catch a combo box's popup, and showing that grabs the keyboard.
        self.inpaint_only = [self.mask_blur, self.area, self.padding, self.content, *labels[1:]]

        s = session
        self.strength.valueChanged.connect(lambda v: s.update_params(strength=float(v)))
        self.mask_blur.valueChanged.connect(lambda v: s.update_params(mask_blur=int(v)))
        self.area.currentIndexChanged.connect(lambda _i: self._area_changed())
        self.padding.valueChanged.connect(lambda v: s.update_params(inpaint_padding=int(v)))
        self.content.currentIndexChanged.connect(lambda _i: s.update_params(masked_content=self.content.currentData()))
        self.set_params(session.params)

    @staticmethod
    def _label(text: str) -> QLabel:
        label = QLabel(text)
        label.setObjectName("Muted")
        return label

    def _area_changed(self) -> None:
        self.padding.setEnabled(self.area.currentData() == "masked")
        self.session.update_params(inpaint_area=self.area.currentData())

    def set_params(self, p: Params) -> None:
        widgets = (self.strength, self.mask_blur, self.area, self.padding, self.content)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.strength.setValue(p.strength)
            self.mask_blur.setValue(p.mask_blur)
            self.area.setCurrentIndex(max(0, self.area.findData(p.inpaint_area)))
            self.padding.setValue(p.inpaint_padding)
            self.padding.setEnabled(p.inpaint_area == "masked")
            self.content.setCurrentIndex(max(0, self.content.findData(p.masked_content)))
        finally:
            for w in widgets:
                w.blockSignals(False)
        for w in self.inpaint_only:
            w.setVisible(p.mode == "inpaint")
        self.setVisible(p.mode != "txt2img")
