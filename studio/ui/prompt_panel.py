"""The prompt panel: prompt, negative prompt, model, sampler and the numbers, Generate/Cancel."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import QRegularExpression, Qt
from PySide6.QtGui import QRegularExpressionValidator, QTextOption
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.core.requests import MAX_SEED, MAX_SIDE
from studio.core.speed import LABELS as SPEED_LABELS
from studio.core.speed import SPEEDS
from studio.core.speed import TOOLTIPS as SPEED_TIPS
from studio.session import IMAGE_SUFFIXES, Params, Session
from studio.ui.canvas_options import CanvasOptions, ModeSwitch, UpscaleOptions, set_clamped
from studio.ui.hires_options import HiresFixOptions
from studio.ui.presets import PresetControls
from studio.ui.region_options import RegionOptions
from studio.ui.theme import icon, muted_label
from studio.ui.variation_options import VariationOptions
from studio.ui.widgets import section

GENERATE_LABELS = {
    "txt2img": ("  Generate", "Generate from the prompt (Ctrl+Enter). Click again to queue more runs."),
    "img2img": ("  Transform", "Change the canvas image by the prompt (Ctrl+Enter)"),
    "inpaint": ("  Inpaint", "Repaint the masked area of the canvas from the prompt (Ctrl+Enter)"),
    "upscale": ("  Upscale", "Upscale the canvas image or its selected region (Ctrl+Enter)"),
}


# Qt's default wrap (at a word boundary, else anywhere) looks for a boundary again on every line of a word: a
# 1 MB one-word prompt took minutes. Past this many characters without a space, lines break anywhere (linear).
LONG_WORD = 256
_BREAKS = re.compile(r"[ \t\n\r]")  # only these: Qt does not break at a no-break space, Python's split() does


# DeepCache's speed and cost, as benchmarks/bench_deepcache.py measured them (README, "Speed tricks").
DEEP_CACHE_TIP = (
    "Reuse deep features (DeepCache): the full U-Net runs every N steps, and the steps between reuse its deep "
    "features and run only its shallowest layers. Faster, but the picture changes. Off below 15 steps.\n"
    "Measured at interval 3 on a 2-core CPU, against the uncached run:\n"
    "SD 1.5-size U-Net (random weights), 256 px, 20 steps: 3.2x faster, 27 dB PSNR on the latent preview.\n"
    "Built-in model: 2.9x faster at 20 steps, 3.2x at 30, but 10-18 dB PSNR (a different composition): leave it "
    "off for the built-in model."
)

TYPED_MAX = 99999  # what a size box lets the artist type before it says why the number is refused
SLOW_AREA = 16  # times the model's native area: slow, and the model repeats itself (two heads, tiled scenes)


def size_warning(width: int, height: int, native: int) -> str:
    """One line when width x height is SLOW_AREA times the native area or more; "" otherwise (or unknown)."""
    if not (width and height and native):
        return ""
    times = width * height / (native * native)
    if times < SLOW_AREA:
        return ""
    return (f"{width}x{height} is {times:g}x this model's native area: it will be slow and may repeat itself; "
            "try Native size and upscale")  # fmt: skip


def longest_word(text: str) -> int:
    return max(map(len, _BREAKS.split(text)), default=0)


class PromptEdit(QPlainTextEdit):
    """A prompt box: plain text, Tab moves focus (prompts never need tabs)."""

    def __init__(self, placeholder: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.textChanged.connect(lambda: self._fit_wrap(self.toPlainText()))

    def _fit_wrap(self, text: str) -> None:
        mode = QTextOption.WrapMode.WrapAnywhere if longest_word(text) > LONG_WORD else \
            QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere
        if self.wordWrapMode() != mode:
            self.setWordWrapMode(mode)

    def setPlainText(self, text: str) -> None:
        # Breaking anywhere before a long word is laid out; back to word wrap only once it is gone (textChanged).
        if longest_word(text) > LONG_WORD:
            self.setWordWrapMode(QTextOption.WrapMode.WrapAnywhere)
        super().setPlainText(text)

    def insertFromMimeData(self, source) -> None:
        if longest_word(source.text()) > LONG_WORD:  # a pasted long word: before it is laid out
            self.setWordWrapMode(QTextOption.WrapMode.WrapAnywhere)
        super().insertFromMimeData(source)

    def _is_image_drag(self, event) -> bool:
        mime = event.mimeData()
        return mime.hasUrls() and any(
            u.isLocalFile() and u.toLocalFile().lower().endswith(IMAGE_SUFFIXES) for u in mime.urls()
        )

    def dragEnterEvent(self, event) -> None:
        if self._is_image_drag(event):
            event.ignore()  # an image dropped here loads its parameters (the window takes it)
            return
        super().dragEnterEvent(event)


class PromptPanel(QWidget):
    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.setObjectName("PromptPanel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setMinimumWidth(self.MIN_WIDTH)
        self._fitted_mode = ""  # the mode the width was last fitted for (fit_width)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        self._scroll, self._body = scroll, body
        lay = QVBoxLayout(body)
        lay.setContentsMargins(12, 12, 12, 8)
        lay.setSpacing(6)

        self.mode_switch = ModeSwitch(session)
        lay.addWidget(self.mode_switch)
        lay.addSpacing(4)
        self.upscale_options = UpscaleOptions(session)  # first: in view without scrolling (1440x900)
        lay.addWidget(self.upscale_options)
        self.region_options = RegionOptions(session)  # Image and Upscale modes: refine the selection in place
        lay.addWidget(self.region_options)
        self.region_options.changed.connect(self.upscale_options.update_target)
        self.upscale_options.scale.valueChanged.connect(lambda _v: self.region_options.refresh())

        # Prompts
        lay.addWidget(section("Prompt"))
        self.prompt = PromptEdit("Describe the image: a lighthouse at dusk, oil painting…")
        self.prompt.setObjectName("prompt")
        self.prompt.setToolTip("What to draw. Ctrl+Enter generates from anywhere in the window.")
        self.prompt.setMinimumHeight(70)
        lay.addWidget(self.prompt, 3)
        lay.addWidget(section("Negative prompt"))
        self.negative = PromptEdit("What to avoid: blurry, text, watermark…")
        self.negative.setObjectName("negative")
        self.negative.setToolTip("What the image should not contain.")
        self.negative.setMinimumHeight(44)
        lay.addWidget(self.negative, 2)

        # Model and sampler
        lay.addSpacing(4)
        lay.addWidget(section("Model"))
        self.model = QComboBox()
        self.model.setToolTip("The model to generate with. Add folders of models with File > Add model folder.")
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(12)
        lay.addWidget(self.model)
        addons = QHBoxLayout()
        addons.setSpacing(6)
        self.vae = QComboBox()
        self.vae.setToolTip("The VAE that turns latents into pixels: the model's own (Automatic) or a VAE file "
                            "from the model folders")  # fmt: skip
        self.vae.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.vae.setMinimumContentsLength(8)
        self.extras = QToolButton()
        self.extras.setText("LoRA / TI  ▾")
        self.extras.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")  # the ▾ says it
        self.extras.setToolTip("Add a LoRA (as <lora:name:1>, the weight after the colon) or a textual-inversion "
                               "embedding (its name) to the prompt, from the model folders")  # fmt: skip
        self.extras.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.extras_menu = QMenu(self.extras)
        self.extras_menu.setToolTipsVisible(True)
        self.extras_menu.aboutToShow.connect(self._fill_extras)
        self.extras.setMenu(self.extras_menu)
        addons.addWidget(self.vae, 1)
        addons.addWidget(self.extras)
        lay.addLayout(addons)

        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        self.sampler = QComboBox()
        self.sampler.addItems(list(session.info.samplers))
        self.sampler.setToolTip(
            "The sampler (how noise is removed step by step). Euler a and DPM++ 2M are good defaults."
        )
        self.schedule = QComboBox()
        self.schedule.addItems(list(session.info.schedules))
        self.schedule.setToolTip("The noise schedule. Karras often gives cleaner results at low step counts.")
        grid.addWidget(self._label("Sampler"), 0, 0)
        grid.addWidget(self._label("Schedule"), 0, 1)
        self.presets = PresetControls(session, self)  # few-step presets: a menu beside the sampler, a hint row
        sampler_row = QHBoxLayout()
        sampler_row.setSpacing(4)
        sampler_row.addWidget(self.sampler, 1)
        sampler_row.addWidget(self.presets.button)
        grid.addLayout(sampler_row, 1, 0)
        grid.addWidget(self.schedule, 1, 1)

        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)  # GenerateRequest.validate's ranges: a PNG's valid value shows as it is
        self.steps.setToolTip("Sampling steps: more is slower and usually finer. 20 to 30 is typical.")
        self.cfg = QDoubleSpinBox()
        self.cfg.setRange(0.0, 100.0)
        self.cfg.setSingleStep(0.5)
        self.cfg.setDecimals(1)
        self.cfg.setToolTip("CFG scale: how strictly to follow the prompt. 5 to 9 is typical.")
        grid.addWidget(self._label("Steps"), 2, 0)
        grid.addWidget(self._label("CFG scale"), 2, 1)
        grid.addWidget(self.steps, 3, 0)
        grid.addWidget(self.cfg, 3, 1)

        self.width_box = self._size_box("Width in pixels (a multiple of 8). Native: the model's own size.")
        self.height_box = self._size_box("Height in pixels (a multiple of 8). Native: the model's own size.")
        size_row = QHBoxLayout()
        size_row.setSpacing(4)
        size_row.addWidget(self.width_box, 1)
        self.swap = QToolButton()
        self.swap.setIcon(icon("swap"))
        self.swap.setToolTip("Swap width and height")
        self.swap.setAutoRaise(True)
        size_row.addWidget(self.swap)
        size_row.addWidget(self.height_box, 1)
        grid.addWidget(self._label("Width × height"), 4, 0, 1, 2)
        self.size_note = QLabel("")  # why a typed size was refused, or that a size is far past the model's own
        self.size_note.setObjectName("Muted")
        self.size_note.setWordWrap(True)
        self.size_note.setToolTip("About the size above: what was refused, or why it may disappoint")
        self.size_note.hide()
        size_col = QVBoxLayout()
        size_col.setSpacing(2)
        size_col.addLayout(size_row)
        size_col.addWidget(self.size_note)
        grid.addLayout(size_col, 5, 0, 1, 2)

        self.seed = QLineEdit()
        self.seed.setPlaceholderText("random")
        self.seed.setValidator(QRegularExpressionValidator(QRegularExpression(r"-1|\d{0,10}")))
        self.seed.setToolTip(f"Seed: the same seed and settings give the same image. Empty = random (0 to {MAX_SEED}).")
        self.seed_random = QToolButton()
        self.seed_random.setIcon(icon("dice"))
        self.seed_random.setToolTip("Random seed for every run")
        self.seed_reuse = QToolButton()
        self.seed_reuse.setIcon(icon("reuse"))
        self.seed_reuse.setToolTip("Reuse the seed of the last image")
        seed_row = QHBoxLayout()
        seed_row.setSpacing(4)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed_reuse)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setToolTip("How many images one run makes (seed, seed+1, …)")
        grid.addWidget(self._label("Seed"), 6, 0)
        grid.addWidget(self._label("Batch"), 6, 1)
        grid.addLayout(seed_row, 7, 0)
        grid.addWidget(self.batch, 7, 1)
        self.speed = QComboBox()  # exact / fast / turbo: each item's tooltip says what it does
        for name in SPEEDS:
            self.speed.addItem(SPEED_LABELS[name], name)
            self.speed.setItemData(self.speed.count() - 1, SPEED_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        speed_row = QHBoxLayout()
        speed_row.setSpacing(8)
        speed_row.addWidget(self._label("Speed"))
        speed_row.addWidget(self.speed, 1)
        grid.addLayout(speed_row, 8, 0, 1, 2)
        self.deep_cache = QCheckBox("Reuse deep features every")
        self.deep_cache.setToolTip(DEEP_CACHE_TIP)
        self.deep_interval = QSpinBox()
        self.deep_interval.setRange(2, 5)
        self.deep_interval.setValue(3)
        self.deep_interval.setSuffix(" steps")
        self.deep_interval.setToolTip(DEEP_CACHE_TIP)
        deep_row = QHBoxLayout()
        deep_row.setSpacing(4)
        deep_row.addWidget(self.deep_cache, 1)
        deep_row.addWidget(self.deep_interval)
        grid.addLayout(deep_row, 9, 0, 1, 2)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        lay.addSpacing(4)
        lay.addWidget(section("Sampling"))
        lay.addWidget(self.presets.hint)
        lay.addLayout(grid)
        self.hires_options = HiresFixOptions(session)  # Text mode only (_show_mode)
        lay.addWidget(self.hires_options)
        self.variation_options = VariationOptions(session)  # Text mode only (_show_mode)
        lay.addWidget(self.variation_options)
        self.canvas_section = section("Canvas")
        lay.addSpacing(4)
        lay.addWidget(self.canvas_section)
        self.canvas_options = CanvasOptions(session)
        lay.addWidget(self.canvas_options)
        lay.addStretch(0)

        # Generate / Cancel: outside the scroll area, always visible.
        buttons = QHBoxLayout()
        buttons.setContentsMargins(12, 6, 12, 12)
        buttons.setSpacing(8)
        self.generate_button = QPushButton(icon("generate"), "  Generate")
        self.generate_button.setObjectName("GenerateButton")
        self.generate_button.setToolTip("Generate (Ctrl+Enter). Click again to queue more runs.")
        self.generate_button.setMinimumHeight(38)
        self.generate_button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.cancel_button = QPushButton(icon("cancel"), " Cancel")
        self.cancel_button.setObjectName("CancelButton")
        self.cancel_button.setToolTip("Stop the running image at its next step (Esc)")
        self.cancel_button.setMinimumHeight(38)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.generate_button, 3)
        buttons.addWidget(self.cancel_button, 1)
        self.grid_button = QToolButton()  # the window opens the comparison grid dialog (Generate > Comparison grid)
        self.grid_button.setText("Grid…")
        self.grid_button.setMinimumHeight(38)
        self.grid_button.setToolTip("A comparison grid over up to three parameters (A1111's X/Y/Z plot)")
        buttons.addWidget(self.grid_button)
        outer.addLayout(buttons)

        self._latent_models = self._wants_latent_models()  # the picker's list: SD models, or x4 upscalers
        self._chosen: dict[bool, str] = {}  # the model last chosen in each list
        self.refresh_models()
        self.set_params(session.params)
        self._connect()
        self._show_mode(session.params)

    # -- construction helpers ------------------------------------------------------------------

    _label = staticmethod(muted_label)

    @staticmethod
    def _size_box(tip: str) -> QSpinBox:
        box = QSpinBox()
        # Room to type any 5 digits: a value past MAX_SIDE is clamped on Enter with a note, never cut while typed
        box.setRange(0, TYPED_MAX)
        box.setKeyboardTracking(False)
        box.setSingleStep(64)
        box.setSpecialValueText("Native")
        box.setToolTip(tip)
        box.setMinimumWidth(80)
        return box

    def _connect(self) -> None:
        s = self.session
        s.capabilities_changed.connect(self.set_capabilities)
        self.prompt.textChanged.connect(lambda: s.update_params(prompt=self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda: s.update_params(negative_prompt=self.negative.toPlainText()))
        self.model.currentIndexChanged.connect(lambda _i: s.update_params(model=self.model.currentData() or ""))
        self.vae.currentIndexChanged.connect(lambda _i: s.update_params(vae=self.vae.currentData() or ""))
        self.sampler.currentTextChanged.connect(lambda t: s.update_params(sampler=t))
        self.schedule.currentTextChanged.connect(lambda t: s.update_params(schedule=t))
        self.steps.valueChanged.connect(lambda v: s.update_params(steps=v))
        self.cfg.valueChanged.connect(lambda v: s.update_params(cfg=float(v)))
        self.width_box.valueChanged.connect(lambda v: self._size_changed("width", self.width_box, v))
        self.height_box.valueChanged.connect(lambda v: self._size_changed("height", self.height_box, v))
        s.params_changed.connect(lambda _p: self._show_size_note())
        self.batch.valueChanged.connect(lambda v: s.update_params(batch=v))
        self.speed.currentIndexChanged.connect(lambda _i: s.update_params(speed=self.speed.currentData() or ""))
        self.deep_cache.toggled.connect(lambda _on: self._deep_cache_changed())
        self.deep_interval.valueChanged.connect(lambda _v: self._deep_cache_changed())
        self.seed.textChanged.connect(self._seed_edited)
        self.seed_random.clicked.connect(s.random_seed)
        self.seed_reuse.clicked.connect(s.reuse_seed)
        self.swap.clicked.connect(self._swap_size)
        self.generate_button.clicked.connect(s.generate)
        self.cancel_button.clicked.connect(s.cancel)
        s.params_changed.connect(self.set_params)
        s.jobs_changed.connect(self._update_buttons)
        s.params_changed.connect(self._show_mode)
        self.upscale_options.method.currentIndexChanged.connect(lambda _i: self._filter_models())
        self.presets.watch(self.prompt.textChanged, self.model.currentIndexChanged, self.sampler.currentTextChanged,
                           self.schedule.currentTextChanged, self.steps.valueChanged, self.cfg.valueChanged)
        self.presets.refresh()

    def _wants_latent_models(self) -> bool:
        p = self.session.params
        return p.mode == "upscale" and p.upscale_mode == "latent"

    def _filter_models(self) -> None:
        """The picker lists the models the mode runs (the x4 upscaler only for a latent upscale); switching
        between the lists brings back the model last chosen in each."""
        latent = self._wants_latent_models()
        if latent == self._latent_models:
            return
        self._chosen[self._latent_models] = self.session.params.model
        self._latent_models = latent
        self.refresh_models()
        want = self._chosen.get(latent, "")
        want = want if self.model.findData(want) >= 0 else ""
        self.model.blockSignals(True)
        self.model.setCurrentIndex(max(0, self.model.findData(want)))
        self.model.blockSignals(False)
        if self.session.params.model != want:
            self.session.update_params(model=want)

    MIN_WIDTH = 290

    def fit_width(self) -> None:
        """Never narrower than the widgets it shows: its scroll area scrolls only vertically, so a narrower panel
        clipped them (the Upscale tab, the CFG box) when a wider right column took the room."""
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        need = self._body.minimumSizeHint().width() + bar + 2 * self._scroll.frameWidth()
        self.setMinimumWidth(max(self.MIN_WIDTH, need))
        self._fitted_mode = self.session.params.mode

    def showEvent(self, event) -> None:
        self.fit_width()
        super().showEvent(event)

    def _show_mode(self, p: Params) -> None:
        self._filter_models()
        self.mode_switch.show_mode(p.mode)
        self.canvas_options.set_params(p)
        self.upscale_options.set_params(p)
        self.region_options.set_params(p)
        self.hires_options.set_params(p)
        self.hires_options.setVisible(p.mode == "txt2img")
        self.variation_options.set_params(p)
        self.variation_options.setVisible(p.mode == "txt2img")
        self.canvas_section.setVisible(p.mode in ("img2img", "inpaint"))  # the upscale options have their own
        text, tip = GENERATE_LABELS.get(p.mode, GENERATE_LABELS["txt2img"])
        self.generate_button.setText(text)
        self.generate_button.setToolTip(tip)
        grid = p.mode != "upscale"  # the grid runs text to image, image to image or inpaint cells
        self.grid_button.setEnabled(grid)
        self.grid_button.setToolTip("A comparison grid over up to three parameters (A1111's X/Y/Z plot)" if grid else
                                    "A comparison grid runs Text, Image or Inpaint cells, not an upscale")  # fmt: skip
        if self.isVisible() and p.mode != self._fitted_mode:  # another mode shows other groups (not per keystroke)
            self.fit_width()

    def _seed_edited(self, text: str) -> None:
        try:
            seed = int(text) if text.strip() else -1
        except ValueError:
            seed = -1
        self.session.update_params(seed=min(seed, MAX_SEED))

    def _size_changed(self, name: str, box: QSpinBox, value: int) -> None:
        refused = ""
        if value > MAX_SIDE:
            refused = f"{value} px is past the {MAX_SIDE} px a generation takes: set to {MAX_SIDE} (upscale for more)"
            box.blockSignals(True)
            box.setValue(MAX_SIDE)
            box.blockSignals(False)
            value = MAX_SIDE
        self.session.update_params(**{name: value})
        self._show_size_note(refused)

    def _show_size_note(self, refused: str = "") -> None:
        p = self.session.params
        text = refused or size_warning(p.width, p.height, self.session.native_side())
        self.size_note.setText(text)
        self.size_note.setVisible(bool(text))

    def _swap_size(self) -> None:
        w, h = self.width_box.value(), self.height_box.value()
        self.width_box.setValue(h)
        self.height_box.setValue(w)

    def _deep_cache_changed(self) -> None:
        on = self.deep_cache.isChecked()
        self.deep_interval.setEnabled(on)
        self.session.update_params(deep_cache=self.deep_interval.value() if on else 0)

    def _update_buttons(self) -> None:
        self.cancel_button.setEnabled(bool(self.session.jobs()))

    # -- binding -----------------------------------------------------------------------------

    def _show_speed(self) -> None:
        """The panel's speed mode (the backend's default until one is chosen); disabled, with why, where the
        backend has no speed modes (a ComfyUI server runs its own way)."""
        info = self.session.info
        self.speed.blockSignals(True)
        self.speed.setCurrentIndex(max(0, self.speed.findData(self.session.speed())))
        self.speed.blockSignals(False)
        self.speed.setEnabled(bool(info.speeds))
        if info.speeds:
            self.speed.setToolTip("How fast a run goes, and what it trades: Exact keeps plain diffusers' pixels, Fast "
                                  "uses half precision where the hardware has it, Turbo compiles the model with "
                                  f"OpenVINO (first run converts it). Default here: {info.default_speed}")  # fmt: skip
        else:
            self.speed.setToolTip(f"{info.name} runs its own way: speed modes are for the local engine")

    def set_capabilities(self, info) -> None:
        """The backend's own sampler and schedule names (a server may list others); the choice stays."""
        self._show_speed()
        for combo, names in ((self.sampler, info.samplers), (self.schedule, info.schedules)):
            if not names or [combo.itemText(i) for i in range(combo.count())] == list(names):
                continue
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(list(names))
            if combo.findText(current) < 0:
                combo.addItem(current)  # not offered by this backend: kept visible, the run says why
            combo.setCurrentText(current)
            combo.blockSignals(False)

    def refresh_models(self) -> None:
        current = self.session.params.model
        self.model.blockSignals(True)
        self.model.clear()
        for label, value in self.session.model_choices():
            self.model.addItem(label, value)
            self.model.setItemData(
                self.model.count() - 1,
                value or "The built-in model, shipped in models/builtin",
                Qt.ItemDataRole.ToolTipRole,
            )
        idx = self.model.findData(current)
        self.model.setCurrentIndex(max(idx, 0))
        self.model.blockSignals(False)
        self.vae.blockSignals(True)
        self.vae.clear()
        self.vae.addItem("VAE: Automatic", "")
        self.vae.setItemData(0, "The model's own VAE", Qt.ItemDataRole.ToolTipRole)
        for label, value in self.session.addon_choices("vae"):
            self.vae.addItem(f"VAE: {label}", value)
            self.vae.setItemData(self.vae.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
        self._show_vae(self.session.params.vae)
        self.vae.blockSignals(False)

    def _show_vae(self, vae: str) -> None:
        idx = self.vae.findData(vae)
        if idx < 0 and vae:
            # A name from an image's metadata, or a file outside the folders: match by name, else keep it visible.
            idx = next((i for i in range(self.vae.count()) if self.vae.itemData(i) and
                        Path(self.vae.itemData(i)).stem.lower() == Path(vae).stem.lower()), -1)  # fmt: skip
            if idx < 0:
                self.vae.addItem(f"VAE: {Path(vae).stem}", vae)
                idx = self.vae.count() - 1
        self.vae.setCurrentIndex(max(idx, 0))

    def _fill_extras(self) -> None:
        """The LoRAs and embeddings of the model folders, read when the menu opens (new files show up)."""
        menu = self.extras_menu
        menu.clear()
        for kind, title in (("lora", "LoRAs"), ("embedding", "Embeddings")):
            if menu.actions():
                menu.addSeparator()
            heading = menu.addAction(title.upper())
            heading.setEnabled(False)  # a heading: the theme draws sections as bare lines
            items = self.session.addon_choices(kind)
            if not items:
                none = menu.addAction(f"No {title.lower()} in the model folders")
                none.setEnabled(False)
            for label, path in items:
                name = Path(path).stem
                text = f"<lora:{name}:1>" if kind == "lora" else name
                act = menu.addAction(label)
                act.setToolTip(f"Adds {text} to the prompt ({path})")
                act.triggered.connect(lambda _c=False, t=text: self.insert_in_prompt(t))

    def insert_in_prompt(self, text: str) -> None:
        """Insert at the prompt's cursor, with a separating space when the text around needs one."""
        cursor = self.prompt.textCursor()
        before = self.prompt.toPlainText()[: cursor.position()]
        sep = " " if before and not before.endswith((" ", "\n", ",")) else ""
        cursor.insertText(sep + text)
        self.prompt.setTextCursor(cursor)
        self.prompt.setFocus()

    def set_params(self, p: Params) -> None:
        """Show p in the widgets without echoing every change back to the session."""
        widgets = (self.prompt, self.negative, self.model, self.vae, self.sampler, self.schedule, self.steps, self.cfg,
                   self.width_box, self.height_box, self.batch, self.seed, self.deep_cache,
                   self.deep_interval)  # fmt: skip
        for w in widgets:
            w.blockSignals(True)
        try:
            if self.prompt.toPlainText() != p.prompt:
                self.prompt.setPlainText(p.prompt)
            if self.negative.toPlainText() != p.negative_prompt:
                self.negative.setPlainText(p.negative_prompt)
            if self.model.findData(p.model) < 0 and p.model:
                self.model.addItem(p.model.rsplit("/", 1)[-1], p.model)
            self.model.setCurrentIndex(max(self.model.findData(p.model), 0))
            self._show_vae(p.vae)
            for combo, value in ((self.sampler, p.sampler), (self.schedule, p.schedule)):
                if combo.findText(value) < 0:
                    combo.addItem(value)  # a name from a PNG we do not list: keep it, the engine judges
                combo.setCurrentText(value)
            for box, value in ((self.steps, p.steps), (self.cfg, p.cfg), (self.width_box, p.width),
                               (self.height_box, p.height), (self.batch, p.batch)):
                set_clamped(box, min(value, MAX_SIDE) if box in (self.width_box, self.height_box) else value)
            self.seed.setText("" if not 0 <= p.seed <= MAX_SEED else str(p.seed))
            self._show_speed()
            self.deep_cache.setChecked(p.deep_cache >= 2)
            if p.deep_cache >= 2:  # off keeps the interval last chosen
                self.deep_interval.setValue(p.deep_cache)
            self.deep_interval.setEnabled(p.deep_cache >= 2)
        finally:
            for w in widgets:
                w.blockSignals(False)
        # Values the widgets clamped are what the session holds.
        self.session.update_params(
            prompt=self.prompt.toPlainText(), negative_prompt=self.negative.toPlainText(),
            model=self.model.currentData() or "", vae=self.vae.currentData() or "", sampler=self.sampler.currentText(),
            schedule=self.schedule.currentText(), steps=self.steps.value(), cfg=float(self.cfg.value()),
            width=self.width_box.value(), height=self.height_box.value(), batch=self.batch.value(),
            seed=int(self.seed.text()) if self.seed.text() else -1,
            deep_cache=self.deep_interval.value() if self.deep_cache.isChecked() else 0,
        )  # fmt: skip
