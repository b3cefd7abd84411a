"""The comparison grid dialog (A1111's X/Y/Z plot): up to three axes, each a kind and its values; Run queues the
grid as one job (studio.core.grid). A bad axis is one line in the dialog, and nothing is lost."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from studio.core import grid
from studio.core.errors import RequestError
from studio.session import Session
from studio.ui.theme import muted_label

NONE = "Nothing"
EXAMPLES = {"Seed": "1, 2, 3  or  -1, -1", "Var. seed": "100, 200", "Var. strength": "0.1-0.5 [3]",
            "Steps": "10-30 (+10)", "CFG Scale": "4, 7, 10", "Sampler": "Euler a, DDIM, DPM++ 2M Karras",
            "Schedule type": "Normal, Karras", "Prompt S/R": "cat, dog, bird (the first is searched)",
            "LoRA weight": "0, 0.5, 1", "Denoising": "0.3-0.7 [3]"}  # fmt: skip


class GridDialog(QDialog):
    """X, Y and Z: a kind and its values each; Z as separate grids or stacked in one image."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Comparison grid")
        lay = QVBoxLayout(self)
        form = QGridLayout()
        form.setHorizontalSpacing(8)
        self.kinds: list[QComboBox] = []
        self.values: list[QLineEdit] = []
        for row, name in enumerate("XYZ"):
            kind = QComboBox()
            kind.addItems([NONE, *grid.axis_labels()])
            values = QLineEdit()
            kind.currentTextChanged.connect(lambda text, v=values: v.setPlaceholderText(EXAMPLES.get(text, "")))
            form.addWidget(muted_label(f"{name} axis"), row, 0)
            form.addWidget(kind, row, 1)
            form.addWidget(values, row, 2)
            self.kinds.append(kind)
            self.values.append(values)
        form.setColumnStretch(2, 1)
        self.kinds[0].setCurrentText("CFG Scale")
        self.values[0].setText("4, 7, 10")
        self.kinds[1].setCurrentText("Sampler")
        self.values[1].setText("Euler a, DDIM")
        self.stacked = QCheckBox("Stack the Z grids in one image")
        self.note = QLabel()
        self.note.setObjectName("Muted")
        self.note.setWordWrap(True)
        self.error = QLabel()
        self.error.setObjectName("Error")
        self.error.setStyleSheet("color: #e06c6c;")
        self.error.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.run_button = buttons.addButton("Run grid", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.run)
        buttons.rejected.connect(self.reject)
        lay.addLayout(form)
        lay.addWidget(self.stacked)
        lay.addWidget(self.note)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        for w in (*self.kinds, *self.values):
            (w.currentTextChanged if isinstance(w, QComboBox) else w.textChanged).connect(self.check)
        self.resize(520, self.sizeHint().height())
        self.check()

    def axes(self) -> list[tuple[str, str]]:
        return [(k.currentText(), v.text()) for k, v in zip(self.kinds, self.values, strict=True)
                if k.currentText() != NONE and v.text().strip()]  # fmt: skip

    def check(self) -> bool:
        """Parse the axes as they are typed: the cell count, or the one line that says what is wrong."""
        try:
            parsed = [grid.parse_axis(k, v) for k, v in self.axes()]
            if not parsed:
                raise RequestError("Pick at least one axis and its values")
            n = [len(a.values) for a in parsed]
            cells = 1
            for x in n:
                cells *= x
            if cells > grid.MAX_CELLS:
                raise RequestError(f"The grid has {cells} cells: at most {grid.MAX_CELLS}")
        except RequestError as e:
            self.error.setText(str(e))
            self.note.setText("")
            self.run_button.setEnabled(False)
            return False
        self.error.setText("")
        self.note.setText(f"{' × '.join(map(str, n))} = {cells} images, one queued job; each also goes to the gallery")
        self.run_button.setEnabled(True)
        return True

    def run(self) -> None:
        if not self.check():
            return
        if self.session.generate_grid(self.axes(), stacked=self.stacked.isChecked()) is not None:
            self.accept()
