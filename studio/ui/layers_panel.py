"""The layers panel: the document's stack (top layer first), the colour tools, and where results land.

A list row per layer: its visibility (the check box), its name (double-click renames). Selecting a row makes that
layer the active one (what colour strokes paint). Under the list: the active layer's opacity, and buttons to add an
empty paint layer, delete, move up / down and merge down. Above it: the colour tools (Paint, Erase paint, Picker)
and the paint colour. Every change goes through the document, so each is one undo step.

Control layers (studio.session.controls) are listed as "<name> · Control: <type>" with their overlay tint as the
icon; "Control" adds one (a scribble to draw on, with Paint), and the active one's settings show under the list
(studio.ui.control_props). "Show control" turns their overlay on the canvas on and off.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QStyledItemDelegate,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.qtcompat import emit

from .canvas import Canvas
from .control_overlay import ControlOverlay, tint
from .control_props import ControlProperties, pick_model
from .widgets import section

PAINT_TOOLS = (("paint", "Paint", "P"), ("paint_eraser", "Erase", "Shift+E"), ("picker", "Picker", "I"))
RESULT_CHOICES = (("New layer", True), ("Replace active layer", False))


def swatch(colour: QColor, size: int = 16) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setPen(QColor("#d8dce3"))
    p.setBrush(QColor(colour))
    p.drawRoundedRect(1, 1, size - 2, size - 2, 3, 3)
    p.end()
    return QIcon(pix)


class _NameEditor(QStyledItemDelegate):
    """Renaming a control layer's row edits its name, not the "· Control: type" the row also shows."""

    def setEditorData(self, editor, index) -> None:
        name = index.data(Qt.ItemDataRole.UserRole)
        editor.setText(name if isinstance(name, str) else index.data())


def row_text(layer) -> str:
    return f"{layer.name}  ·  Control: {layer.control.module}" if layer.control is not None else layer.name


class LayersPanel(QWidget):
    results_as_layer_changed = Signal(bool)
    stage_results_changed = Signal(bool)
    save_controls_changed = Signal(bool)

    def __init__(self, document, canvas: Canvas, parent: QWidget | None = None,
                 controlnets=None, folders=None):  # fmt: skip
        """controlnets: () -> [(label, path)] of the ControlNet models; folders: () -> the model folders."""
        super().__init__(parent)
        self._controlnets = controlnets or (lambda: [])
        self.document = document
        self.canvas = canvas
        self.setObjectName("Panel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        box = QVBoxLayout(self)
        box.setContentsMargins(10, 8, 10, 8)
        box.setSpacing(5)

        head = QHBoxLayout()
        head.addWidget(section("Layers"))
        head.addStretch(1)
        self.tools = QButtonGroup(self)
        self.tool_buttons: dict[str, QToolButton] = {}
        for name, text, key in PAINT_TOOLS:
            b = QToolButton()
            b.setText(text)
            b.setCheckable(True)
            b.setAutoRaise(True)
            b.setToolTip(f"{text} ({key}): " + {
                "paint": "paint the active layer in the paint colour (Alt + click picks a colour)",
                "paint_eraser": "erase the active layer to transparent",
                "picker": "click the canvas to take its colour as the paint colour",
            }[name])  # fmt: skip
            b.clicked.connect(lambda _c=False, n=name: self.canvas.set_tool(n))
            self.tools.addButton(b)
            self.tool_buttons[name] = b
            head.addWidget(b)
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.activated.connect(lambda n=name: self.canvas.set_tool(n))
        self.colour_button = QToolButton()
        self.colour_button.setAutoRaise(True)
        self.colour_button.setToolTip("Paint colour: click to choose one (or Alt + click the canvas with Paint)")
        self.colour_button.clicked.connect(self.choose_colour)
        head.addWidget(self.colour_button)
        box.addLayout(head)

        self.list = QListWidget()
        self.list.setObjectName("LayerList")
        self.list.setToolTip("The layers, top first: the check box shows or hides one, a double-click renames it, "
                             "a click makes it the one you paint on")  # fmt: skip
        self.list.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.list.setMinimumHeight(60)
        self.list.currentRowChanged.connect(self._row_selected)
        self.list.itemChanged.connect(self._item_changed)
        self.list.setItemDelegate(_NameEditor(self.list))
        box.addWidget(self.list, 1)

        row = QHBoxLayout()
        row.setSpacing(4)
        self.opacity_label = QLabel("Opacity")
        row.addWidget(self.opacity_label)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setTracking(False)  # one flatten (and one undo step) when the drag ends
        self.opacity.setToolTip("The active layer's opacity")
        self.opacity.valueChanged.connect(self._opacity_set)
        self.opacity.sliderMoved.connect(lambda v: self.opacity_value.setText(f"{v}%"))
        row.addWidget(self.opacity, 1)
        self.opacity_value = QLabel("100%")
        self.opacity_value.setMinimumWidth(self.opacity_value.fontMetrics().horizontalAdvance("100%") + 4)
        row.addWidget(self.opacity_value)
        box.addLayout(row)

        buttons = QHBoxLayout()
        buttons.setSpacing(2)
        self.add_button = self._button("Add", "Add an empty paint layer above the active one", document.add_layer)
        self.delete_button = self._button("Delete", "Delete the active layer", lambda: document.delete_layer())
        self.up_button = self._button("▲", "Move the active layer up", lambda: document.move_layer(document.active, 1))
        self.down_button = self._button("▼", "Move the active layer down",
                                        lambda: document.move_layer(document.active, -1))  # fmt: skip
        self.merge_button = self._button("Merge", "Merge down: the active layer into the one below it",
                                         lambda: document.merge_down())  # fmt: skip
        self.control_button = self._button("Control", "Add a control layer: draw a scribble on it (Paint), or run "
                                           "a preprocessor (canny, soft edge...) on an image", self.add_control)
        for b in (self.add_button, self.control_button, self.delete_button, self.up_button, self.down_button,
                  self.merge_button):  # fmt: skip
            buttons.addWidget(b)
        buttons.addStretch(1)
        box.addLayout(buttons)
        # Its own row, shown only while the document has control layers: in the button row it widened the whole
        # right column and squeezed the prompt panel.
        self.show_controls = QCheckBox("Show controls")
        self.show_controls.setChecked(True)
        self.show_controls.setToolTip("Show the control layers over the picture (tinted, semi-transparent)")
        self.save_controls = QCheckBox("Save with images")
        self.save_controls.setToolTip("Write each run's control images beside its PNGs (<name>.control0.png...): the "
                                      "PNG's text names the ControlNet and its settings, not the image")  # fmt: skip
        self.save_controls.toggled.connect(lambda on: emit(self.save_controls_changed, on))
        self.control_row = QWidget()
        control_row = QHBoxLayout(self.control_row)
        control_row.setContentsMargins(0, 0, 0, 0)
        control_row.addWidget(self.show_controls)
        control_row.addWidget(self.save_controls)
        control_row.addStretch(1)
        box.addWidget(self.control_row)
        self.overlay = ControlOverlay(document, canvas)
        self.show_controls.toggled.connect(self.overlay.set_visible)
        self.control_props = ControlProperties(document, self._controlnets, folders)
        # In a scroll area: the right column is short at 1440x900 (preview, layers, queue), and a squeezed form
        # clipped its boxes to unreadable slivers; scrolled, every row keeps its height.
        self.control_scroll = QScrollArea()
        self.control_scroll.setWidget(self.control_props)
        self.control_scroll.setWidgetResizable(True)
        self.control_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.control_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.control_scroll.setMinimumHeight(90)
        box.addWidget(self.control_scroll, 1)

        results = QHBoxLayout()
        results.addWidget(QLabel("Results:"))
        self.results_box = QComboBox()
        for text, _value in RESULT_CHOICES:
            self.results_box.addItem(text)
        self.results_box.setToolTip("Where a result goes on the canvas: a new layer on top (what is under it stays, "
                                    "hide or delete the layer to go back), or in place of the active layer")  # fmt: skip
        self.results_box.currentIndexChanged.connect(
            lambda i: emit(self.results_as_layer_changed, RESULT_CHOICES[i][1]))
        results.addWidget(self.results_box, 1)
        self.stage_box = QCheckBox("Stage")
        self.stage_box.setToolTip("Stage results: a run's images wait over the canvas as candidates to step through, "
                                  "compare, accept or discard (off: the first image lands at once)")  # fmt: skip
        self.stage_box.toggled.connect(lambda on: emit(self.stage_results_changed, on))
        results.addWidget(self.stage_box)
        box.addLayout(results)

        document.layers_changed.connect(self.refresh)
        canvas.tool_changed.connect(self._sync_tool)
        canvas.paint_colour_changed.connect(self._sync_colour)
        self._sync_colour(canvas.paint_colour())
        self.refresh()

    def _button(self, text: str, tip: str, slot) -> QToolButton:
        b = QToolButton()
        b.setText(text)
        b.setToolTip(tip)
        b.clicked.connect(lambda _c=False: slot())
        return b

    # -- from the document --------------------------------------------------------------------------

    def refresh(self) -> None:
        doc = self.document
        layers = doc.layers
        self.list.blockSignals(True)
        while self.list.count() > len(layers):  # rows are updated in place (an item may be the one being edited)
            self.list.takeItem(self.list.count() - 1)
        while self.list.count() < len(layers):
            item = QListWidgetItem()
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEditable)
            self.list.addItem(item)
        controls = [la.uid for la in layers if la.control is not None]
        self.control_row.setVisible(bool(controls))
        active_control = 0 <= doc.active < len(layers) and layers[doc.active].control is not None
        self.control_scroll.setVisible(active_control)
        for row, la in enumerate(reversed(layers)):  # the top layer first, as every paint program lists them
            item = self.list.item(row)
            item.setText(row_text(la))
            item.setData(Qt.ItemDataRole.UserRole, la.name)
            item.setIcon(swatch(tint(controls.index(la.uid))) if la.control is not None else QIcon())
            item.setCheckState(Qt.CheckState.Checked if la.visible else Qt.CheckState.Unchecked)
            item.setToolTip(f"{la.name}: opacity {round(la.opacity * 100)}%" + ("" if la.visible else ", hidden"))
        if layers:
            self.list.setCurrentRow(len(layers) - 1 - doc.active)
        self.list.blockSignals(False)
        active = doc.active_layer()
        n, i = len(layers), doc.active
        for w in (self.opacity, self.opacity_label, self.opacity_value):
            w.setEnabled(active is not None)
        if active is not None:
            percent = round(active.opacity * 100)
            self.opacity.blockSignals(True)
            self.opacity.setValue(percent)
            self.opacity.blockSignals(False)
            self.opacity_value.setText(f"{percent}%")
        self.add_button.setEnabled(doc.has_image())
        self.delete_button.setEnabled(n > 1)
        self.up_button.setEnabled(i < n - 1)
        self.down_button.setEnabled(i > 0)
        self.merge_button.setEnabled(i > 0 and layers[i].control is None and layers[i - 1].control is None)
        self.control_button.setEnabled(doc.has_image())

    def add_control(self, module: str = "scribble") -> bool:
        """A control layer on top (the first ControlNet model that says its type, if any), ready to draw on."""
        from studio.session.controls import ControlProps

        if not self.document.add_control_layer(ControlProps(module, pick_model(list(self._controlnets()), module))):
            return False
        if module in ("scribble", "lineart"):
            self.canvas.set_tool("paint")
        return True

    def set_results_as_layer(self, on: bool) -> None:
        self.results_box.setCurrentIndex(0 if on else 1)

    def set_stage_results(self, on: bool) -> None:
        self.stage_box.setChecked(on)

    # -- to the document ----------------------------------------------------------------------------

    def _index(self, row: int) -> int:
        return len(self.document.layers) - 1 - row

    def _row_selected(self, row: int) -> None:
        if row >= 0:
            self.document.set_active(self._index(row))

    def _item_changed(self, item: QListWidgetItem) -> None:
        index = self._index(self.list.row(item))
        if not 0 <= index < len(self.document.layers):
            return
        layer = self.document.layers[index]
        visible = item.checkState() == Qt.CheckState.Checked
        if visible != layer.visible:
            self.document.set_layer_visible(index, visible)
        elif item.text() not in (layer.name, row_text(layer)):
            if not self.document.rename_layer(index, item.text()):
                self.refresh()  # an empty name: the old one back

    def _opacity_set(self, percent: int) -> None:
        self.opacity_value.setText(f"{percent}%")
        self.document.set_layer_opacity(self.document.active, percent / 100.0)

    def _sync_tool(self, tool: str) -> None:
        button = self.tool_buttons.get(tool)
        if button is not None:
            button.setChecked(True)
        elif self.tools.checkedButton() is not None:
            self.tools.setExclusive(False)
            self.tools.checkedButton().setChecked(False)
            self.tools.setExclusive(True)

    def _sync_colour(self, colour: QColor) -> None:
        self.colour_button.setIcon(swatch(colour))

    def choose_colour(self) -> None:
        chosen = QColorDialog.getColor(self.canvas.paint_colour(), self, "Paint colour")
        if chosen.isValid():
            self.canvas.set_paint_colour(chosen)
