"""The active control layer's settings, under the layers list: its type (the preprocessor / what the artist draws),
the ControlNet model, weight, guidance start and end (fractions of the steps), A1111's control mode, and "Run
preprocessor on" a layer or the flattened picture. Each change is one undo step of the document (a run of changes
to one setting folds into one)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.core import preprocess
from studio.core.control import CONTROL_MODES, CONTROL_MODULES
from studio.session.layers import composite
from studio.session.library import MODELS_DIR

NO_MODELS = "No ControlNet models found: put them in models/ControlNet"
FLATTENED = "Flattened image"
TYPE_TIPS = {
    "none": "the layer's image as it is (made elsewhere)",
    "scribble": "draw white strokes on the layer (the brush), or make bold lines from an image",
    "lineart": "draw lines, or take an image's dark lines",
    "softedge": "soft edges from an image's luminance",
    "canny": "Canny edges from an image (OpenCV, the ControlNet annotator's thresholds 100 / 200)",
    "depth": "a depth map (needs a depth preprocessor model)",
    "pose": "a pose skeleton (needs a pose preprocessor model)",
    "tile": "the image itself, for a tile ControlNet",
}


def pick_model(choices: list[tuple[str, str]], module: str) -> str:
    """The model a new control layer of `module` starts with: the first whose name says the type, else the first."""
    for label, value in choices:
        if module in label.lower() or module in value.lower():
            return value
    return choices[0][1] if choices else ""


def _spin(lo: float, hi: float, step: float, tip: str) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setDecimals(2)
    s.setKeyboardTracking(False)
    s.setToolTip(tip)
    return s


class ControlProperties(QWidget):
    def __init__(self, document, model_choices: Callable[[], list[tuple[str, str]]] | None = None,
                 folders: Callable[[], list] | None = None, parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.document = document
        self._model_choices = model_choices or (lambda: [])
        self._folders = folders or (lambda: [])
        self._uid: int | None = None  # the control layer the widgets show
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 4, 0, 0)
        self.title = QLabel()
        self.title.setObjectName("ControlTitle")
        box.addWidget(self.title)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setVerticalSpacing(3)
        self.type_box = QComboBox()
        for m in CONTROL_MODULES:
            self.type_box.addItem(m, m)
            self.type_box.setItemData(self.type_box.count() - 1, TYPE_TIPS.get(m, ""), 3)  # 3: Qt.ToolTipRole
        self.type_box.setToolTip("What the control image is: drawn by hand (scribble, lineart) or made by a "
                                 "preprocessor from an image (canny, soft edge, ...)")  # fmt: skip
        form.addRow("Type", self.type_box)
        self.model_box = QComboBox()
        self.model_box.setToolTip("The ControlNet model this layer guides the picture with")
        form.addRow("Model", self.model_box)
        self.weight = _spin(0.0, 2.0, 0.05, "How strongly the control image steers the picture (0: not at all)")
        form.addRow("Weight", self.weight)
        steps = QHBoxLayout()
        self.start = _spin(0.0, 1.0, 0.05, "Guidance start: the fraction of the steps where the control begins")
        self.end = _spin(0.0, 1.0, 0.05, "Guidance end: the fraction of the steps where the control stops")
        steps.addWidget(self.start)
        steps.addWidget(QLabel("to"))
        steps.addWidget(self.end)
        form.addRow("Steps", steps)
        self.mode_box = QComboBox()
        self.mode_box.addItems(list(CONTROL_MODES))
        self.mode_box.setToolTip("Control mode (A1111's names): balanced, or which of the prompt and the control wins")
        form.addRow("Mode", self.mode_box)
        run = QHBoxLayout()
        self.source_box = QComboBox()
        self.source_box.setToolTip("The picture the preprocessor reads: the flattened image, or one layer")
        run.addWidget(self.source_box, 1)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Make this layer's image with its type's preprocessor (one undo step)")
        self.run_button.clicked.connect(self.run_preprocessor)
        run.addWidget(self.run_button)
        form.addRow("Run preprocessor on", run)
        box.addLayout(form)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setObjectName("Hint")
        box.addWidget(self.note)

        self.type_box.currentIndexChanged.connect(lambda _i: self._set(module=self.type_box.currentData()))
        self.model_box.currentIndexChanged.connect(lambda _i: self._set(model=self.model_box.currentData() or ""))
        self.weight.valueChanged.connect(lambda v: self._set(weight=round(v, 4)))
        self.start.valueChanged.connect(lambda v: self._set_window(start=v))
        self.end.valueChanged.connect(lambda v: self._set_window(end=v))
        self.mode_box.currentTextChanged.connect(lambda t: self._set(mode=t))
        document.layers_changed.connect(self.refresh)
        self.refresh()

    # -- from the document --------------------------------------------------------------------------

    def layer(self):
        la = self.document.active_layer()
        return la if la is not None and la.control is not None else None

    def refresh(self) -> None:
        la = self.layer()
        self.setVisible(la is not None)
        if la is None:
            self._uid = None
            return
        c = la.control
        widgets = (self.type_box, self.model_box, self.weight, self.start, self.end, self.mode_box, self.source_box)
        for w in widgets:
            w.blockSignals(True)
        if la.uid != self._uid or self.model_box.findData(c.model) < 0:
            self._fill_models(c.model)
        self._uid = la.uid
        self.title.setText(f"Control: {c.module}")
        self.type_box.setCurrentIndex(max(0, self.type_box.findData(c.module)))
        self.model_box.setCurrentIndex(max(0, self.model_box.findData(c.model)))
        self.weight.setValue(c.weight)
        self.start.setValue(c.start)
        self.end.setValue(c.end)
        self.mode_box.setCurrentText(c.mode)
        self._fill_sources()
        for w in widgets:
            w.blockSignals(False)
        why = preprocess.missing(c.module, [MODELS_DIR, *self._folders()])  # models/annotators, or the artist's
        self.run_button.setEnabled(why is None)
        self.source_box.setEnabled(why is None)
        self.run_button.setToolTip(why or f"Make this layer's image with the {c.module} preprocessor (one undo step)")
        self.note.setText(why or ("Draw on the canvas with Paint: the brush paints white lines, Erase removes them."
                                  if c.module in ("scribble", "lineart") else ""))  # fmt: skip

    def _fill_models(self, current: str) -> None:
        self.model_box.clear()
        choices = list(self._model_choices())
        for label, value in choices:
            self.model_box.addItem(label, value)
        if current and self.model_box.findData(current) < 0:
            self.model_box.addItem(f"{current} (not found)", current)
        if not choices and not current:
            self.model_box.addItem(NO_MODELS, "")
        self.model_box.setEnabled(bool(choices) or bool(current))
        self.model_box.setToolTip(NO_MODELS if not choices else "The ControlNet model this layer guides the picture with")

    def _fill_sources(self) -> None:
        self.source_box.clear()
        self.source_box.addItem(FLATTENED, None)
        for la in reversed(self.document.layers):  # top first, as the list shows them
            if la.control is None:
                self.source_box.addItem(f"Layer: {la.name}", la.uid)

    # -- to the document ----------------------------------------------------------------------------

    def _set(self, **changes) -> None:
        la = self.layer()
        if la is None:
            return
        what = "guidance" if "start" in changes or "end" in changes else next(iter(changes)).replace("module", "type")
        self.document.set_control(self.document.active, la.control.replace(**changes), label=f"Control {what}")

    def _set_window(self, start: float | None = None, end: float | None = None) -> None:
        la = self.layer()
        if la is None:
            return
        s = la.control.start if start is None else round(start, 4)
        e = la.control.end if end is None else round(end, 4)
        if s >= e:  # keep start < end: the other end moves out of the way
            if start is not None:
                e = min(1.0, s + 0.05)
                s = min(s, e - 0.05)
            else:
                s = max(0.0, e - 0.05)
                e = max(e, s + 0.05)
        self._set(start=s, end=e)

    def run_preprocessor(self) -> bool:
        """Make the active control layer's image from the chosen source; one undo step; False (and a note) if not."""
        la, doc = self.layer(), self.document
        if la is None or not doc.has_image():
            return False
        uid = self.source_box.currentData()
        if uid is None:
            source = doc.image_array()
        else:
            layer = next((x for x in doc.layers if x.uid == uid), None)
            if layer is None:
                return False
            source = composite([layer.with_(visible=True)], doc.size())
        try:
            image = preprocess.run(la.control.module, source, [MODELS_DIR, *self._folders()])
        except preprocess.PreprocessError as e:
            self.note.setText(str(e))
            return False
        doc.set_control_image(doc.active, image, f"Preprocess: {la.control.module}")
        return True
