"""The canvas toolbar: Pan / Brush / Eraser, brush size and hardness, show mask, fill / clear / invert.

A compact row above the canvas. It drives the canvas (tool, brush) and the document (the mask
actions, each undoable), and follows both: `[` / `]` on the canvas update the size box, a new
image or mask enables the mask actions.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QWidget,
)

from studio.session.brush import MAX_SIZE, MIN_SIZE
from studio.ui.canvas import Canvas
from studio.ui.theme import icon

SHORTCUTS = {"pan": "H", "brush": "B", "eraser": "E", "select": "M"}
TOOL_HELP = {
    "pan": "Pan: drag to move the image; wheel zooms, double-click fits",
    "brush": "Brush: paint the mask, the area to repaint",
    "eraser": "Eraser: remove the mask",
    "select": "Select: drag a rectangle, a region to upscale; a click clears it",
}
# The canvas's keys that are no window action (QShortcuts and keys the canvas reads), for the shortcut help.
CANVAS_KEYS: tuple[tuple[str, str], ...] = (
    *((SHORTCUTS[name], TOOL_HELP[name]) for name in ("brush", "eraser", "pan", "select")),
    ("[ and ]", "Smaller or larger brush (pointer over the canvas)"),
    ("Space + drag", "Pan while the brush or eraser is picked"),
)


class CanvasToolbar(QWidget):
    def __init__(self, canvas: Canvas, document, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = canvas
        self.document = document
        self.setObjectName("CanvasToolbar")
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)

        self.tools = QButtonGroup(self)
        self.tools.setExclusive(True)
        sizes = {"brush": ". [ and ]: smaller / larger", "eraser": ". [ and ]: smaller / larger"}
        self.tool_buttons: dict[str, QToolButton] = {}
        for name in ("pan", "brush", "eraser", "select"):
            label, _, what = TOOL_HELP[name].partition(": ")
            b = self._button(name, f"{label} ({SHORTCUTS[name]}): {what}{sizes.get(name, '')}", checkable=True)
            b.setText(name.capitalize())
            self.tools.addButton(b)
            self.tool_buttons[name] = b
            b.clicked.connect(lambda _checked=False, n=name: self.canvas.set_tool(n))
            row.addWidget(b)
            # Window-wide single keys: a text box that has the keyboard takes them as typing first.
            shortcut = QShortcut(QKeySequence(SHORTCUTS[name]), self)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(lambda n=name: self.canvas.set_tool(n))
        self.pan_button = self.tool_buttons["pan"]
        self.brush_button = self.tool_buttons["brush"]
        self.eraser_button = self.tool_buttons["eraser"]

        row.addWidget(self._separator())
        self.size_label = QLabel("Size")
        self.size_label.setToolTip("The brush's diameter in image pixels")
        row.addWidget(self.size_label)
        self.size_box = QSpinBox()
        self.size_box.setRange(MIN_SIZE, MAX_SIZE)
        self.size_box.setSuffix(" px")
        self.size_box.setKeyboardTracking(False)
        self.size_box.setFixedWidth(self.size_box.fontMetrics().horizontalAdvance("1024 px") + 44)
        self.size_box.setToolTip("Brush size: the diameter in image pixels. [ and ] on the canvas: smaller / larger")
        self.size_box.valueChanged.connect(self.canvas.set_brush_size)
        row.addWidget(self.size_box)

        self.hardness_label = QLabel("Hardness")
        self.hardness_label.setToolTip("100%: a hard edge; lower: the brush fades out towards its edge")
        row.addWidget(self.hardness_label)
        self.hardness_slider = QSlider(Qt.Orientation.Horizontal)
        self.hardness_slider.setRange(0, 100)
        self.hardness_slider.setFixedWidth(90)
        self.hardness_slider.setToolTip("Brush hardness: 100% a hard edge, lower a soft falloff towards the edge")
        self.hardness_slider.valueChanged.connect(self._hardness_moved)
        row.addWidget(self.hardness_slider)
        self.hardness_value = QLabel()
        self.hardness_value.setMinimumWidth(self.hardness_value.fontMetrics().horizontalAdvance("100%") + 4)
        self.hardness_value.setToolTip("Brush hardness")
        row.addWidget(self.hardness_value)

        row.addWidget(self._separator())
        self.mask_toggle = self._button(
            "mask", "Show mask: the tinted overlay over the image (painting works either way)"
        )
        self.mask_toggle.setCheckable(True)
        self.mask_toggle.setText("Show mask")
        self.mask_toggle.toggled.connect(self.canvas.set_mask_visible)
        row.addWidget(self.mask_toggle)
        self.fill_button = self._button("fill", "Fill mask: repaint the whole image")
        self.fill_button.clicked.connect(lambda: self.document.fill_mask())
        self.clear_button = self._button("clear", "Clear mask: repaint nothing (undoable)")
        self.clear_button.clicked.connect(lambda: self.document.clear_mask())
        self.invert_button = self._button("invert", "Invert mask: repaint what is kept and keep what is repainted")
        self.invert_button.clicked.connect(lambda: self.document.invert_mask())
        for b in (self.fill_button, self.clear_button, self.invert_button):
            row.addWidget(b)
        row.addStretch(1)

        canvas.tool_changed.connect(self._sync_tool)
        canvas.brush_changed.connect(self._sync_brush)
        canvas.mask_visible_changed.connect(self._sync_mask_visible)
        document.image_changed.connect(self._sync_actions)
        document.mask_changed.connect(self._mask_changed)
        self._sync_tool(canvas.tool())
        self._sync_brush()
        self._sync_mask_visible(canvas.mask_visible())
        self._sync_actions()

    def controls(self) -> list[QWidget]:
        """Every control of the toolbar (each has a tooltip)."""
        return [self.pan_button, self.brush_button, self.eraser_button, self.size_box, self.hardness_slider,
                self.mask_toggle, self.fill_button, self.clear_button, self.invert_button]  # fmt: skip

    def _button(self, icon_name: str, tip: str, checkable: bool = False) -> QToolButton:
        b = QToolButton()
        b.setIcon(icon(icon_name))
        b.setToolTip(tip)
        b.setCheckable(checkable)
        b.setAutoRaise(False)
        b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keyboard stays where it was (the canvas's [ and ])
        return b

    @staticmethod
    def _separator() -> QFrame:
        line = QFrame()
        line.setFrameShape(QFrame.Shape.VLine)
        line.setStyleSheet("color: #383b42;")
        return line

    # -- following the canvas and the document ---------------------------------------------------

    def _sync_tool(self, tool: str) -> None:
        button = self.tool_buttons.get(tool)
        if button is not None and not button.isChecked():
            button.setChecked(True)
        painting = tool in ("brush", "eraser")
        for w in (self.size_label, self.size_box, self.hardness_label, self.hardness_slider, self.hardness_value):
            w.setEnabled(painting)

    def _sync_brush(self) -> None:
        size, hardness = self.canvas.brush_size(), round(self.canvas.hardness() * 100)
        if self.size_box.value() != size:
            self.size_box.blockSignals(True)
            self.size_box.setValue(size)
            self.size_box.blockSignals(False)
        if self.hardness_slider.value() != hardness:
            self.hardness_slider.blockSignals(True)
            self.hardness_slider.setValue(hardness)
            self.hardness_slider.blockSignals(False)
        self.hardness_value.setText(f"{hardness}%")

    def _hardness_moved(self, value: int) -> None:
        self.hardness_value.setText(f"{value}%")
        self.canvas.set_hardness(value / 100.0)

    def _sync_mask_visible(self, visible: bool) -> None:
        if self.mask_toggle.isChecked() != visible:
            self.mask_toggle.setChecked(visible)

    def _mask_changed(self, rect) -> None:
        if rect is None or not self.clear_button.isEnabled():  # a stroke's first dab makes the mask
            self._sync_actions()

    def _sync_actions(self, *_args) -> None:
        has_image = self.document.has_image()
        self.fill_button.setEnabled(has_image)
        self.invert_button.setEnabled(has_image)
        self.clear_button.setEnabled(self.document.mask is not None)
