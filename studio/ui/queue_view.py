"""The job queue: the running job with its progress, then the queued ones (removable)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidgetItem, QToolButton, QVBoxLayout, QWidget

from studio.session import Session
from studio.ui.theme import icon
from studio.ui.widgets import HintList, section

JOB_ROLE = Qt.ItemDataRole.UserRole


class QueuePanel(QWidget):
    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.setObjectName("QueuePanel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.setSpacing(6)
        head = QHBoxLayout()
        head.addWidget(section("Queue"))
        self.count_label = QLabel("")
        self.count_label.setObjectName("Muted")
        head.addWidget(self.count_label)
        head.addStretch(1)
        self.remove_button = QToolButton()
        self.remove_button.setIcon(icon("remove"))
        self.remove_button.setToolTip("Remove the selected job from the queue, or stop it if it is running (Delete)")
        self.remove_button.setEnabled(False)
        self.clear_button = QToolButton()
        self.clear_button.setIcon(icon("clear"))
        self.clear_button.setToolTip("Cancel the running job and empty the queue")
        self.clear_button.setEnabled(False)
        head.addWidget(self.remove_button)
        head.addWidget(self.clear_button)
        lay.addLayout(head)
        self.list = HintList("Nothing queued. Ctrl+Enter queues another image.")
        self.list.setToolTip("Jobs waiting for the engine, in order. Select one and press Delete to remove it.")
        self.list.setMinimumHeight(60)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        lay.addWidget(self.list, 1)

        self.remove_button.clicked.connect(self.remove_selected)
        self.clear_button.clicked.connect(session.cancel_all)
        self.list.itemSelectionChanged.connect(self._selection)
        QShortcut(
            QKeySequence.StandardKey.Delete, self.list, self.remove_selected, context=Qt.ShortcutContext.WidgetShortcut
        )
        session.jobs_changed.connect(self.refresh)
        self.refresh()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.refresh()  # re-elide the prompts to the new width

    def refresh(self) -> None:
        jobs = self.session.jobs()
        selected = self.list.currentItem().data(JOB_ROLE) if self.list.currentItem() else None
        self.list.blockSignals(True)
        self.list.clear()
        metrics = self.list.fontMetrics()
        room = max(80, self.list.viewport().width() - 48)
        for job in jobs:
            if job.state == "running":
                status = f"{job.step}/{job.total}" if job.step else "starting"  # never "0/20" before the first step
            else:
                status = "queued"
            text = metrics.elidedText(f"{status}  ·  {' '.join(job.label.split())}", Qt.TextElideMode.ElideRight, room)
            item = QListWidgetItem(icon("running" if job.state == "running" else "queued"), text)
            item.setData(JOB_ROLE, job.id)
            item.setToolTip(f"{status}: {job.label}")
            self.list.addItem(item)
            if job.id == selected:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        queued = sum(1 for j in jobs if j.state == "queued")
        self.count_label.setText(f"{queued} waiting" if queued else "")
        self.clear_button.setEnabled(bool(jobs))
        self._selection()

    def _selection(self) -> None:
        self.remove_button.setEnabled(self.list.currentItem() is not None)

    def remove_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.session.cancel_job(item.data(JOB_ROLE))
