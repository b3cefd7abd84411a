"""Small dialogs of the canvas: a new blank canvas, extending the canvas (outpainting)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

COLOURS = (("White", (255, 255, 255)), ("Black", (0, 0, 0)), ("Grey", (128, 128, 128)))


def _px_box(value: int, lo: int, hi: int, tip: str, step: int = 64) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setSuffix(" px")
    box.setToolTip(tip)
    return box


def _ok_cancel(dialog: QDialog) -> QDialogButtonBox:
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    for b in buttons.buttons():
        b.setToolTip(b.text().replace("&", ""))
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    return buttons


class NewCanvasDialog(QDialog):
    def __init__(self, width: int = 512, height: int = 512, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("New canvas")
        form = QFormLayout(self)
        self.width_box = _px_box(width, 8, 4096, "Width of the new canvas (8 to 4096 px)")
        self.height_box = _px_box(height, 8, 4096, "Height of the new canvas (8 to 4096 px)")
        self.colour = QComboBox()
        for name, rgb in COLOURS:
            self.colour.addItem(name, rgb)
        self.colour.setToolTip("The colour the canvas starts with")
        form.addRow("Width", self.width_box)
        form.addRow("Height", self.height_box)
        form.addRow("Colour", self.colour)
        form.addRow(_ok_cancel(self))

    def values(self) -> tuple[int, int, tuple[int, int, int]]:
        return self.width_box.value(), self.height_box.value(), self.colour.currentData()


class ExtendCanvasDialog(QDialog):
    """How far to extend each side. `inpaint_now` tells which button closed it."""

    def __init__(self, image_size: tuple[int, int], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Extend the canvas (outpaint)")
        self.image_size = image_size
        self.inpaint_now = False
        lay = QVBoxLayout(self)
        form = QFormLayout()
        lay.addLayout(form)
        tip = "Pixels to add on the {} (0 to 2048)"
        self.left = _px_box(0, 0, 2048, tip.format("left"))
        self.right = _px_box(0, 0, 2048, tip.format("right"))
        self.top = _px_box(0, 0, 2048, tip.format("top"))
        self.bottom = _px_box(0, 0, 2048, tip.format("bottom"))
        self.overlap = _px_box(16, 0, 256, "How far the mask reaches into the old image, so the seam blends", 8)
        for label, box in (("Left", self.left), ("Right", self.right), ("Top", self.top), ("Bottom", self.bottom),
                           ("Blend into the old edge", self.overlap)):  # fmt: skip
            form.addRow(label, box)
            box.valueChanged.connect(self._update)
        self.result_label = QLabel()
        self.result_label.setObjectName("Muted")
        lay.addWidget(self.result_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.extend_button = QPushButton("Extend")
        self.extend_button.setToolTip("Extend the canvas and mask the new area; inpaint it when you are ready")
        self.inpaint_button = QPushButton("Extend and inpaint")
        self.inpaint_button.setToolTip("Extend the canvas and inpaint the new area from the prompt at once")
        self.inpaint_button.setDefault(True)
        buttons.addButton(self.extend_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(self.inpaint_button, QDialogButtonBox.ButtonRole.AcceptRole)
        for b in buttons.buttons():
            if not b.toolTip():
                b.setToolTip(b.text().replace("&", ""))
        self.extend_button.clicked.connect(self.accept)
        self.inpaint_button.clicked.connect(self._accept_and_inpaint)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self._update()

    def _accept_and_inpaint(self) -> None:
        self.inpaint_now = True
        self.accept()

    def values(self) -> tuple[int, int, int, int, int]:
        return self.left.value(), self.top.value(), self.right.value(), self.bottom.value(), self.overlap.value()

    def _update(self) -> None:
        w, h = self.image_size
        left, top, right, bottom, _ = self.values()
        nw, nh = w + left + right, h + top + bottom
        warn = "  (too large: at most 4096 px a side)" if max(nw, nh) > 4096 else ""
        self.result_label.setText(f"{w}×{h} → {nw}×{nh}{warn}")
        ok = (left + top + right + bottom) > 0 and not warn
        self.extend_button.setEnabled(ok)
        self.inpaint_button.setEnabled(ok)


class ServerDialog(QDialog):
    """The ComfyUI server to use: its address, and a token when a reverse proxy in front of it wants one."""

    def __init__(self, url: str, token: str = "", parent: QWidget | None = None):
        from PySide6.QtWidgets import QLineEdit

        super().__init__(parent)
        self.setWindowTitle("ComfyUI server")
        form = QFormLayout(self)
        self.url = QLineEdit(url or "http://127.0.0.1:8188")
        self.url.setToolTip("The server's address, as its web page opens: http://127.0.0.1:8188 for a local one")
        self.url.setMinimumWidth(320)
        self.token = QLineEdit(token)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("none")
        self.token.setToolTip("A bearer token, if the server sits behind a proxy that asks for one (rented GPUs)")
        form.addRow("Address", self.url)
        form.addRow("Token", self.token)
        note = QLabel("The server runs every job; the studio keeps the canvas, the queue and the metadata.")
        note.setWordWrap(True)
        note.setObjectName("Muted")
        form.addRow(note)
        form.addRow(_ok_cancel(self))

    def values(self) -> tuple[str, str]:
        return self.url.text().strip().rstrip("/"), self.token.text().strip()
