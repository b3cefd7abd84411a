"""The canvas toolbar: Pan / Brush / Eraser / Select / Rectangle / Lasso and subtract, brush size and
hardness, show mask with its colour and opacity, fill / clear / invert, grow / shrink by an amount.

A compact row above the canvas. It drives the canvas (tool, brush, tint) and the document (the mask
actions, each undoable), and follows both: `[` / `]` on the canvas update the size box, a new
image or mask enables the mask actions.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QColorDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QWidget,
    QWidgetAction,
)

from studio.session.brush import MAX_SIZE, MIN_SIZE
from studio.session.masktools import MAX_AMOUNT
from studio.ui.canvas import Canvas
from studio.ui.theme import icon

SHORTCUTS = {"pan": "H", "brush": "B", "eraser": "E", "select": "M", "rect": "R", "lasso": "L"}
TOOL_ORDER = ("pan", "brush", "eraser", "select", "rect", "lasso")
TOOL_HELP = {
    "pan": "Pan: drag to move the image; wheel zooms, double-click fits",
    "brush": "Brush: paint the mask, the area to repaint",
    "eraser": "Eraser: remove the mask",
    "select": "Select: drag a rectangle, a region to refine in place (Image, Upscale); a click or Esc clears it",
    "rect": "Rectangle fill: drag a rectangle to mask it (Alt + drag: unmask it)",
    "lasso": "Lasso fill: trace a free shape to mask it (Alt + drag: unmask it)",
}
# The canvas's keys that are no window action (QShortcuts and keys the canvas reads), for the shortcut help.
CANVAS_KEYS: tuple[tuple[str, str], ...] = (
    *((SHORTCUTS[name], TOOL_HELP[name]) for name in ("brush", "eraser", "pan", "select", "rect", "lasso")),
    ("P / Shift+E / I", "Paint the active layer / erase it to transparent / pick a colour (the layers panel)"),
    ("Alt + click", "With Paint: take the canvas's colour under the pointer"),
    ("[ and ]", "Smaller or larger brush (pointer over the canvas)"),
    ("Space + drag", "Pan while the brush, eraser, rectangle or lasso is picked"),
    ("Alt + drag", "Rectangle or lasso: unmask instead of mask (after E, they unmask without Alt)"),
)


def tint_from_settings(color: str, opacity: int) -> QColor:
    """The mask tint from the stored colour name and opacity in % (a broken colour: the default's)."""
    tint = QColor(color) if isinstance(color, str) else QColor()
    if not tint.isValid():
        tint = QColor(Canvas.MASK_TINT)
    tint.setAlpha(round(min(100, max(5, int(opacity))) * 255 / 100))
    return tint


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
        for name in TOOL_ORDER:
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
        self.subtract_button = self._button(
            "subtract", "Subtract: the rectangle and the lasso unmask what they enclose (Alt + drag does it once). "
            "Picking the eraser turns it on, the brush off"
        )
        self.subtract_button.setCheckable(True)
        self.subtract_button.toggled.connect(self.canvas.set_subtract)
        row.addWidget(self.subtract_button)

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
        self.hardness_slider.setMinimumWidth(40)  # shrinks first when the canvas column is narrow
        self.hardness_slider.setMaximumWidth(90)
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
        # The colour and opacity, and grow / shrink, open from a button each: the row must fit beside the side panels.
        self.color_button = self._button("", "Mask colour: pick one that stands out on this image. "
                                         "The arrow: its opacity")  # fmt: skip
        self.color_button.clicked.connect(self.choose_color)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(5, 100)
        self.opacity_slider.setFixedWidth(140)
        self.opacity_slider.setToolTip("Mask opacity: how strongly the mask's colour covers the image")
        self.opacity_slider.valueChanged.connect(self._opacity_moved)
        self.opacity_value = QLabel()
        self.opacity_value.setMinimumWidth(self.opacity_value.fontMetrics().horizontalAdvance("100%") + 4)
        self.color_menu = self._popup(self.color_button, [QLabel("Opacity"), self.opacity_slider, self.opacity_value])
        self.color_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        row.addWidget(self.color_button)
        self.fill_button = self._button("fill", "Fill mask: repaint the whole image")
        self.fill_button.clicked.connect(lambda: self.document.fill_mask())
        self.clear_button = self._button("clear", "Clear mask: repaint nothing (undoable)")
        self.clear_button.clicked.connect(lambda: self.document.clear_mask())
        self.invert_button = self._button("invert", "Invert mask: repaint what is kept and keep what is repainted")
        self.invert_button.clicked.connect(lambda: self.document.invert_mask())
        for b in (self.fill_button, self.clear_button, self.invert_button):
            row.addWidget(b)
        row.addWidget(self._separator())
        self.grow_shrink_button = self._button("grow", "Grow or shrink the mask by an amount of pixels")
        self.amount_box = QSpinBox()
        self.amount_box.setRange(1, MAX_AMOUNT)
        self.amount_box.setValue(8)
        self.amount_box.setSuffix(" px")
        self.amount_box.setToolTip("How far Grow and Shrink move the mask's edge, in image pixels")
        menu = self._popup(self.grow_shrink_button, [QLabel("Amount"), self.amount_box])
        self.grow_action = menu.addAction(icon("grow"), "Grow mask")
        self.grow_action.setToolTip("Move the mask's edge out by the amount (a round brush)")
        self.grow_action.triggered.connect(lambda: self._morph(self.document.grow_mask))
        self.shrink_action = menu.addAction(icon("shrink"), "Shrink mask")
        self.shrink_action.setToolTip("Move the mask's edge in by the amount")
        self.shrink_action.triggered.connect(lambda: self._morph(self.document.shrink_mask))
        self.grow_shrink_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        row.addWidget(self.grow_shrink_button)
        row.addStretch(1)

        canvas.tool_changed.connect(self._sync_tool)
        canvas.brush_changed.connect(self._sync_brush)
        canvas.mask_visible_changed.connect(self._sync_mask_visible)
        canvas.subtract_changed.connect(self._sync_subtract)
        canvas.mask_tint_changed.connect(self._sync_tint)
        document.image_changed.connect(self._sync_actions)
        document.mask_changed.connect(self._mask_changed)
        self._sync_tool(canvas.tool())
        self._sync_brush()
        self._sync_mask_visible(canvas.mask_visible())
        self._sync_subtract(canvas.subtract())
        self._sync_tint(canvas.mask_tint())
        self._sync_actions()

    def controls(self) -> list[QWidget]:
        """Every control of the toolbar (each has a tooltip)."""
        return [*self.tool_buttons.values(), self.subtract_button, self.size_box, self.hardness_slider,
                self.mask_toggle, self.color_button, self.opacity_slider, self.fill_button, self.clear_button,
                self.invert_button, self.grow_shrink_button, self.amount_box]  # fmt: skip

    def _button(self, icon_name: str, tip: str, checkable: bool = False) -> QToolButton:
        b = QToolButton()
        b.setIcon(icon(icon_name))
        b.setToolTip(tip)
        b.setCheckable(checkable)
        b.setAutoRaise(False)
        b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keyboard stays where it was (the canvas's [ and ])
        return b

    def _popup(self, button: QToolButton, widgets: list[QWidget]) -> QMenu:
        """A menu under button that starts with a row of widgets (the rest are actions)."""
        menu = QMenu(button)
        menu.setToolTipsVisible(True)
        panel = QWidget()
        lay = QHBoxLayout(panel)
        lay.setContentsMargins(10, 6, 10, 6)
        for w in widgets:
            lay.addWidget(w)
        holder = QWidgetAction(menu)
        holder.setDefaultWidget(panel)
        menu.addAction(holder)
        button.setMenu(menu)
        return menu

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
        elif button is None and self.tools.checkedButton() is not None:  # a colour tool (the layers panel's)
            self.tools.setExclusive(False)
            self.tools.checkedButton().setChecked(False)
            self.tools.setExclusive(True)
        painting = tool in ("brush", "eraser", "paint", "paint_eraser")
        for w in (self.size_label, self.size_box, self.hardness_label, self.hardness_slider, self.hardness_value):
            w.setEnabled(painting)
        self.subtract_button.setEnabled(tool in ("rect", "lasso"))

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

    def _morph(self, op) -> None:
        # A wide grow on a large mask takes a moment (about a second for 64 px on 2048x2048): say so with the cursor.
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            op(self.amount_box.value())
        finally:
            QApplication.restoreOverrideCursor()

    def _sync_subtract(self, on: bool) -> None:
        if self.subtract_button.isChecked() != on:
            self.subtract_button.setChecked(on)

    def choose_color(self) -> None:
        """Ask for the mask's colour (its opacity stays the slider's)."""
        tint = self.canvas.mask_tint()
        chosen = QColorDialog.getColor(QColor(tint.red(), tint.green(), tint.blue()), self, "Mask colour")
        if chosen.isValid():
            chosen.setAlpha(tint.alpha())
            self.canvas.set_mask_tint(chosen)

    def _opacity_moved(self, percent: int) -> None:
        tint = self.canvas.mask_tint()
        tint.setAlpha(round(percent * 255 / 100))
        self.canvas.set_mask_tint(tint)

    def _sync_tint(self, tint: QColor) -> None:
        swatch = QPixmap(16, 16)
        swatch.fill(Qt.GlobalColor.transparent)
        p = QPainter(swatch)
        p.setPen(QColor("#d8dce3"))
        p.setBrush(QColor(tint.red(), tint.green(), tint.blue()))
        p.drawRoundedRect(1, 1, 14, 14, 3, 3)
        p.end()
        self.color_button.setIcon(QIcon(swatch))
        percent = round(tint.alpha() * 100 / 255)
        self.opacity_value.setText(f"{percent}%")
        if self.opacity_slider.value() != percent:
            self.opacity_slider.blockSignals(True)
            self.opacity_slider.setValue(percent)
            self.opacity_slider.blockSignals(False)

    def _mask_changed(self, rect) -> None:
        if rect is None or not self.clear_button.isEnabled():  # a stroke's first dab makes the mask
            self._sync_actions()

    def _sync_actions(self, *_args) -> None:
        has_image = self.document.has_image()
        self.fill_button.setEnabled(has_image)
        self.invert_button.setEnabled(has_image)
        self.clear_button.setEnabled(self.document.mask is not None)
        self.grow_shrink_button.setEnabled(self.document.mask is not None)
