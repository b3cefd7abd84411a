"""The prompt panel's mode switch and the options of the canvas modes: image to image and inpaint, upscale."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
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
from studio.ui.theme import muted_label
from studio.ui.widgets import section


def set_clamped(box: QSpinBox | QDoubleSpinBox, value: float) -> None:
    """setValue within the box's range: a huge int overflows Qt's (OverflowError), NaN would show as the minimum."""
    lo, hi = box.minimum(), box.maximum()
    v = lo if value != value else min(max(value, lo), hi)  # NaN != NaN
    box.setValue(int(v) if isinstance(box, QSpinBox) else float(v))


def hold_shown(session: Session, shown: dict[str, float]) -> None:
    """Values the boxes clamped are what the session holds (no params_changed echo)."""
    changed = {k: v for k, v in shown.items() if getattr(session.params, k) != v}
    if changed:
        session.update_params(**changed)


MODE_BUTTONS = (
    ("txt2img", "Text", "Text to image: a new image from the prompt (Ctrl+1)"),
    ("img2img", "Image", "Image to image: the canvas image (or the selected region, in place) as the start, changed by "
                           "the prompt (Ctrl+2)"),
    ("inpaint", "Inpaint", "Inpaint: repaint the masked area of the canvas from the prompt (Ctrl+3)"),
    ("upscale", "Upscale", "Upscale the canvas image, or refine the selected region of it in place (Ctrl+4)"),
)
METHODS = (
    ("diffusion", "Diffusion upscale", "Resize, then repaint in tiles with the model at a low strength: new detail"),
    ("model", "Upscaler model", "An upscaler model (ESRGAN, SwinIR...) from the model folders, in tiles"),
    ("latent", "Latent upscaler (x4)", "The x4 latent upscaler: pick a model of that layout in Model"),
    ("resize", "Resize (Lanczos)", "Plain Lanczos resampling: fast, no new detail"),
)
# The methods each upscale option acts in; elsewhere it is disabled, its tooltip says why.
USED_BY = {"strength": ("diffusion",), "upscaler": ("model", "diffusion"), "tiles": ("model", "diffusion", "latent"),
           "composition": ("diffusion",)}  # fmt: skip
METHOD_NAMES = {m: label for m, label, _tip in METHODS}
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
        self.set_capabilities(session.info)
        session.capabilities_changed.connect(self.set_capabilities)
        self.show_mode(session.params.mode)

    def set_capabilities(self, info) -> None:
        """Only the modes the backend runs can be picked."""
        for (mode, _text, tip), b in zip(MODE_BUTTONS, self.buttons.values(), strict=True):
            b.setEnabled(mode in info.modes)
            b.setToolTip(tip if mode in info.modes else f"{tip}: not available on the {info.name}")

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

    _label = staticmethod(muted_label)

    def _area_changed(self) -> None:
        self.padding.setEnabled(self.area.currentData() == "masked")
        self.session.update_params(inpaint_area=self.area.currentData())

    def set_params(self, p: Params) -> None:
        widgets = (self.strength, self.mask_blur, self.area, self.padding, self.content)
        for w in widgets:
            w.blockSignals(True)
        try:
            set_clamped(self.strength, p.strength)
            set_clamped(self.mask_blur, p.mask_blur)
            self.area.setCurrentIndex(max(0, self.area.findData(p.inpaint_area)))
            set_clamped(self.padding, p.inpaint_padding)
            self.padding.setEnabled(p.inpaint_area == "masked")
            self.content.setCurrentIndex(max(0, self.content.findData(p.masked_content)))
        finally:
            for w in widgets:
                w.blockSignals(False)
        for w in self.inpaint_only:
            w.setVisible(p.mode == "inpaint")
        self.setVisible(p.mode in ("img2img", "inpaint"))
        hold_shown(self.session, {"strength": float(self.strength.value()), "mask_blur": self.mask_blur.value(),
                                  "inpaint_padding": self.padding.value()})  # fmt: skip


class UpscaleOptions(QWidget):
    """How to upscale: the method, the factor, the upscaler model, the strength and the tiles."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(6)
        self.heading = section("Upscale options")
        outer.addWidget(self.heading)
        self.target = QLabel()
        self.target.setObjectName("Muted")
        self.target.setWordWrap(True)
        self.target.setToolTip("What will be upscaled, and to what size (select a region on the canvas: M)")
        outer.addWidget(self.target)
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        outer.addLayout(grid)
        self.method = QComboBox()
        self.set_methods(session.info.upscale_modes)
        self.method.setToolTip("How to upscale. Diffusion adds detail with the model; an upscaler model sharpens")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(1.0, 8.0)
        self.scale.setSingleStep(0.5)
        self.scale.setDecimals(1)
        self.scale.setSuffix("×")
        self.scale.setToolTip("The upscale factor: 2× doubles width and height")
        self.upscaler = QComboBox()
        self.upscaler.setToolTip(
            "The upscaler model: for the Upscaler model method, and the resize step of a diffusion upscale "
            "(Lanczos otherwise). Files in the model folders that spandrel knows (ESRGAN, SwinIR, HAT...)"
        )
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.01, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setToolTip("Denoising strength of a diffusion upscale (0.3 keeps the picture): how freely the "
                                 "model redraws each tile; over several tiles only its detail that sharpens is kept")
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("Auto")
        self.tile.setSuffix(" px")
        self.tile.setToolTip("Tile size in output pixels (Auto: the model's working size, or the upscaler's advice)")
        self.overlap = QSpinBox()
        self.overlap.setRange(0, 512)
        self.overlap.setSingleStep(8)
        self.overlap.setSpecialValueText("Auto")
        self.overlap.setSuffix(" px")
        self.overlap.setToolTip("How much neighbouring tiles overlap, blended so no seam shows (Auto: a good default)")
        self.keep_composition = QCheckBox("Keep composition")
        self.keep_composition.setToolTip(
            "On (default): over several tiles each tile adds only the detail that sharpens what the resized picture "
            "has; colours, shapes and flat areas stay exactly put.\nOff: each tile's repaint is kept on the resized "
            "picture's colours, so the model paints new texture (grain, pores, highlights) into flat areas too, "
            "more at higher strength (A1111's SD upscale). One tile, or a ComfyUI server (one piece), is plain image "
            "to image either way"
        )
        rows = (("Method", self.method, 0, 0, 2), ("Factor", self.scale, 2, 0, 1), ("Strength", self.strength, 2, 1, 1),
                ("Upscaler", self.upscaler, 4, 0, 2), ("Tile", self.tile, 6, 0, 1), ("Overlap", self.overlap, 6, 1, 1))
        for label, widget, row, col, span in rows:
            grid.addWidget(muted_label(label), row, col, 1, span)
            grid.addWidget(widget, row + 1, col, 1, span)
        grid.addWidget(self.keep_composition, 8, 0, 1, 2)

        self._tips = {w: w.toolTip() for w in (self.strength, self.upscaler, self.tile, self.overlap,
                                               self.keep_composition)}  # fmt: skip

        s = session
        self.method.currentIndexChanged.connect(lambda _i: self._method_changed())
        self.scale.valueChanged.connect(lambda v: s.update_params(scale=float(v)))
        self.upscaler.currentIndexChanged.connect(lambda _i: s.update_params(upscaler=self.upscaler.currentData() or ""))
        self.strength.valueChanged.connect(lambda v: s.update_params(upscale_strength=float(v)))
        self.tile.valueChanged.connect(lambda v: s.update_params(tile=int(v)))
        self.overlap.valueChanged.connect(lambda v: s.update_params(tile_overlap=int(v)))
        self.keep_composition.toggled.connect(lambda on: s.update_params(keep_composition=bool(on)))
        for signal in (self.method.currentIndexChanged, self.scale.valueChanged):
            signal.connect(lambda *_: self.update_target())
        s.capabilities_changed.connect(self.set_capabilities)
        s.document.image_changed.connect(lambda _image: self.update_target())
        s.document.selection_changed.connect(lambda _rect: self.update_target())
        self.set_upscalers(s.info.upscalers)
        self.set_params(s.params)

    def set_capabilities(self, info) -> None:
        self.set_methods(info.upscale_modes)
        self.set_upscalers(info.upscalers)

    def _method_changed(self) -> None:
        self.session.update_params(upscale_mode=self.method.currentData())
        self._preselect_upscaler()
        self._fit_to_method(self.session.params.upscale_mode)

    def _preselect_upscaler(self) -> None:
        """The Upscaler model method with no model chosen takes the first listed (Lanczos is no model)."""
        p = self.session.params
        if p.upscale_mode == "model" and not p.upscaler and self.upscaler.count() > 1:
            self.upscaler.setCurrentIndex(1)  # its signal tells the session

    def _fit_to_method(self, method: str) -> None:
        """Options that do nothing in this method are disabled, and their tooltips say why."""
        name = METHOD_NAMES.get(method, method)
        for key, widgets in (("strength", (self.strength,)), ("upscaler", (self.upscaler,)),
                             ("tiles", (self.tile, self.overlap)), ("composition", (self.keep_composition,))):  # fmt: skip
            used = method in USED_BY[key]
            for w in widgets:
                w.setEnabled(used)
                w.setToolTip(self._tips[w] if used else f"{self._tips[w]}\n\nDisabled: not used by {name}.")
        # Without a listed model, the Upscaler model method runs the built-in SwinIR (Params.to_request).
        self.upscaler.setItemText(0, "Built-in SwinIR x4" if method == "model" else "Lanczos (no model)")

    def set_methods(self, offered) -> None:
        """The upscale methods the backend runs, in METHODS' order (a server has no x4 latent upscaler)."""
        if [self.method.itemData(i) for i in range(self.method.count())] == [m for m, *_ in METHODS if m in offered]:
            return
        self.method.blockSignals(True)
        self.method.clear()
        for value, label, tip in METHODS:
            if value in offered:
                self.method.addItem(label, value)
                self.method.setItemData(self.method.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.method.setCurrentIndex(max(0, self.method.findData(self.session.params.upscale_mode)))
        self.method.blockSignals(False)

    def set_upscalers(self, choices) -> None:
        current = self.session.params.upscaler
        self.upscaler.blockSignals(True)
        self.upscaler.clear()
        self.upscaler.addItem("Built-in SwinIR x4" if self.session.params.upscale_mode == "model" else
                              "Lanczos (no model)", "")  # fmt: skip
        for value, label in choices:
            self.upscaler.addItem(label, value)
            self.upscaler.setItemData(self.upscaler.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
        if current and self.upscaler.findData(current) < 0:
            self.upscaler.addItem(current.rsplit("/", 1)[-1], current)
        self.upscaler.setCurrentIndex(max(0, self.upscaler.findData(current)))
        self.upscaler.blockSignals(False)
        self._preselect_upscaler()

    def set_params(self, p: Params) -> None:
        widgets = (self.method, self.scale, self.upscaler, self.strength, self.tile, self.overlap, self.keep_composition)
        for w in widgets:
            w.blockSignals(True)
        try:
            self.method.setCurrentIndex(max(0, self.method.findData(p.upscale_mode)))
            set_clamped(self.scale, p.scale)
            if p.upscaler and self.upscaler.findData(p.upscaler) < 0:
                self.upscaler.addItem(p.upscaler.rsplit("/", 1)[-1], p.upscaler)
            self.upscaler.setCurrentIndex(max(0, self.upscaler.findData(p.upscaler)))
            set_clamped(self.strength, p.upscale_strength)
            set_clamped(self.tile, p.tile)
            set_clamped(self.overlap, p.tile_overlap)
            self.keep_composition.setChecked(bool(p.keep_composition))
        finally:
            for w in widgets:
                w.blockSignals(False)
        self._preselect_upscaler()
        self._fit_to_method(p.upscale_mode)
        self.setVisible(p.mode == "upscale")
        hold_shown(self.session, {"scale": float(self.scale.value()), "upscale_strength": float(self.strength.value()),
                                  "tile": self.tile.value(), "tile_overlap": self.overlap.value()})  # fmt: skip
        self.update_target()

    def update_target(self) -> None:
        doc, p = self.session.document, self.session.params
        if not doc.has_image():
            self.target.setText("Put an image on the canvas first")
            return
        x, y, w, h = doc.selection or (0, 0, *doc.size())
        what = f"the selection {w}×{h}" if doc.selection else f"the image {w}×{h}"
        text = f"Upscales {what} to {round(w * p.scale)}×{round(h * p.scale)}"
        if self.session.refine_region("upscale") is not None:
            text += f", then scales it back into its place (the image stays {doc.size()[0]}×{doc.size()[1]})"
        self.target.setText(text)
