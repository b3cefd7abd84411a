"""The staging bar: a small bar floating at the foot of the canvas while a run's images wait there as candidates.

◀ 2 / 4 ▶ | Original | Split | Accept | Keep as layer | Regenerate | Discard

Keys (while candidates are staged and no text box, list or slider has the keyboard): Left / Right step through the
candidates, Enter accepts, holding O shows the original until it is let go; Esc discards (from a text box too; while
a job is queued or running Esc cancels it instead). The bar drives the session's Staging (studio.session.staging) and the session's
regenerate; the canvas draws what the staging says.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPoint, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

# Widgets that take these keys themselves: the staging keys leave them alone.
_OWN_KEYS = ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox", "QAbstractSlider", "QAbstractItemView",
             "QComboBox")  # fmt: skip
STAGING_KEYS: tuple[tuple[str, str], ...] = (
    ("Left / Right", "Staged results: the previous / next candidate"),
    ("Enter", "Staged results: accept the candidate shown (one undo step)"),
    ("Esc", "Staged results: discard them all (while no run is queued: Esc cancels a run first)"),
    ("Hold O", "Staged results: show the original while held"),
)


class StagingBar(QFrame):
    """Floats over `canvas` (its parent), bottom centre; shown only while candidates are staged."""

    def __init__(self, session, canvas: QWidget) -> None:
        super().__init__(canvas)
        self.session = session
        self.staging = session.staging
        self.canvas = canvas
        self.setObjectName("StagingBar")
        self.setStyleSheet(
            "#StagingBar { background: rgba(24, 25, 29, 235); border: 1px solid #3a3d45; border-radius: 8px; }"
            "#StagingBar QLabel { background: transparent; color: #e4e6eb; padding: 0 4px; }"
        )
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 4, 6, 4)
        row.setSpacing(3)
        self.prev_button = self._button("◀", "The previous candidate (Left)", lambda: self.staging.step(-1))
        self.position = QLabel()
        self.position.setToolTip("The candidate shown, of those staged")
        self.next_button = self._button("▶", "The next candidate (Right)", lambda: self.staging.step(1))
        self.original_button = self._button("Original", "Show the canvas as it is, without the candidate (hold O)",
                                            self._original_toggled, checkable=True)  # fmt: skip
        self.split_button = self._button("Split", "A split view: the original left of a divider you drag, the "
                                         "candidate right of it", self._split_toggled, checkable=True)  # fmt: skip
        self.accept_button = self._button("Accept", "Put the candidate on the canvas (Enter): as a new layer or in "
                                          "place of the active layer, as the layers panel says; one undo step",
                                          self.staging.accept)  # fmt: skip
        self.keep_button = self._button("Keep as layer", "Add the candidate as a new layer and keep the others staged",
                                        self.staging.keep_as_layer)  # fmt: skip
        self.regenerate_button = self._button("Regenerate", "Run the same request again with a new seed; its images "
                                              "are staged too", session.regenerate)  # fmt: skip
        self.discard_button = self._button("Discard", "Drop every staged candidate (Esc); the gallery keeps them",
                                           self.staging.discard)  # fmt: skip
        for w in (self.prev_button, self.position, self.next_button, self._gap(), self.original_button,
                  self.split_button, self._gap(), self.accept_button, self.keep_button, self.regenerate_button,
                  self.discard_button):  # fmt: skip
            row.addWidget(w)
        self._held = False  # O is held: the original shows until it is let go
        self._filtering = False
        self.staging.changed.connect(self.refresh)
        canvas.installEventFilter(self)  # follow the canvas's size
        self.refresh()

    def _button(self, text: str, tip: str, slot, checkable: bool = False) -> QToolButton:
        b = QToolButton()
        b.setText(text)
        b.setToolTip(tip)
        b.setCheckable(checkable)
        b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the keys stay where they were (the canvas, the window)
        b.clicked.connect(lambda _c=False: slot())
        return b

    @staticmethod
    def _gap() -> QWidget:
        gap = QWidget()
        gap.setFixedWidth(8)
        return gap

    def _original_toggled(self) -> None:
        self.staging.set_show_original(self.original_button.isChecked())

    def _split_toggled(self) -> None:
        self.staging.set_split(0.5 if self.split_button.isChecked() else None)

    # -- following the staging -------------------------------------------------------------------------

    def refresh(self) -> None:
        st = self.staging
        active = st.active()
        self.position.setText(st.position())
        several = len(st.candidates) > 1
        self.prev_button.setEnabled(several)
        self.next_button.setEnabled(several)
        self.original_button.setChecked(st.show_original)
        self.split_button.setChecked(st.split is not None)
        current = st.current()
        self.regenerate_button.setEnabled(current is not None and current.request is not None)
        if active:
            self.adjustSize()
            self._place()
            self.show()
            self.raise_()
        else:
            self.hide()
        self._set_key_filter(active)

    def _place(self) -> None:
        c = self.canvas
        self.move(QPoint(max(0, (c.width() - self.width()) // 2), max(0, c.height() - self.height() - 10)))

    # -- keys ------------------------------------------------------------------------------------------

    def _set_key_filter(self, on: bool) -> None:
        app = QApplication.instance()
        if app is None or on == self._filtering:
            return
        self._filtering = on
        if on:
            app.installEventFilter(self)
        else:
            app.removeEventFilter(self)
            if self._held:
                self._held = False

    def handle_key(self, event: QKeyEvent, pressed: bool) -> bool:
        """A staging key: True when taken."""
        key, mods = event.key(), event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        st = self.staging
        if not st.active() or mods != Qt.KeyboardModifier.NoModifier:
            return False
        if key == Qt.Key.Key_O:
            if not event.isAutoRepeat() and pressed != self._held:
                self._held = pressed
                st.set_show_original(pressed)
            return True
        if not pressed:
            return False
        if key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            st.step(-1 if key == Qt.Key.Key_Left else 1)
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            st.accept()
        elif key == Qt.Key.Key_Escape and not self.session.jobs():  # a job queued or running: Esc cancels it
            st.discard()
        else:
            return False
        return True

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        kind = event.type()
        if obj is self.canvas and kind == QEvent.Type.Resize and self.isVisible():
            self._place()
        elif kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and isinstance(obj, QWidget):
            focus = QApplication.focusWidget()
            esc = event.key() == Qt.Key.Key_Escape  # (no text box wants Esc: it discards from the prompt box too)
            if not esc and focus is not None and any(focus.inherits(name) for name in _OWN_KEYS):
                return False
            if obj.window() is not self.window():
                return False  # a dialog's keys are its own
            return self.handle_key(event, kind == QEvent.Type.KeyPress)
        return False
