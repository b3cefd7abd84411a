"""The live preview of the denoising steps and, after a run, the step timeline."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from studio.session import Session
from studio.ui.theme import icon
from studio.ui.widgets import format_eta, section

PREVIEW_KINDS = (("x0", "Estimate"), ("latent", "Noisy latent"))


class ImageView(QWidget):
    """A QImage fitted into the widget; small previews are enlarged smoothly."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._image = QImage()
        self._placeholder = placeholder
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def image(self) -> QImage:
        return self._image

    def set_image(self, image: QImage | None) -> None:
        self._image = QImage(image) if image is not None else QImage()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(256, 256)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#141518"))
        if self._image.isNull():
            p.setPen(QColor("#5c616b"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._placeholder)
            return
        w, h = self._image.width(), self._image.height()
        scale = min(self.width() / w, self.height() / h)
        dw, dh = w * scale, h * scale
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        p.drawImage(QRectF((self.width() - dw) / 2, (self.height() - dh) / 2, dw, dh), self._image)


class PreviewPanel(QWidget):
    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.setObjectName("PreviewPanel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setMinimumWidth(220)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 10, 10, 10)
        lay.setSpacing(6)
        head = QHBoxLayout()
        head.addWidget(section("Live preview"))
        head.addStretch(1)
        self.kind = QComboBox()
        self.set_preview_kinds(session.info.preview_kinds)
        self.kind.setToolTip(
            "What the preview shows: the model's estimate of the final image at each step, or the noisy latent "
            "itself. A running image keeps the view it started with; after a run both views can be scrubbed."
        )
        head.addWidget(self.kind)
        lay.addLayout(head)

        self.view = ImageView("Steps appear here while\nan image is generated")
        self.view.setToolTip("Each step of the run as it happens; after the run, the step picked on the timeline")
        lay.addWidget(self.view, 1)

        info = QHBoxLayout()
        self.step_label = QLabel("")
        self.step_label.setObjectName("StepLabel")
        self.step_label.setToolTip("The step shown")
        self.eta_label = QLabel("")
        self.eta_label.setObjectName("Muted")
        self.eta_label.setToolTip("Estimated time left for this image")
        info.addWidget(self.step_label)
        info.addStretch(1)
        info.addWidget(self.eta_label)
        lay.addLayout(info)

        self.timeline = QSlider(Qt.Orientation.Horizontal)
        self.timeline.setRange(1, 1)
        self.timeline.setEnabled(False)
        self.timeline.setPageStep(1)
        self.timeline.setToolTip("Step timeline: after a run, drag to look back at every step")
        lay.addWidget(self.timeline)
        self.decode_button = QPushButton(icon("decode"), " Decode this step")
        self.decode_button.setToolTip("Fully decode the selected step with the VAE and show it on the canvas")
        self.decode_button.setEnabled(False)
        lay.addWidget(self.decode_button)
        # Branch from here (studio.core.branch): also on a right-click on the timeline or the preview.
        self.branch_button = QPushButton(" Branch from here")
        self.branch_button.setEnabled(False)
        self.branch_button.setToolTip("Keep this step's composition: the next runs continue from it with what you "
                                      "change (prompt, CFG, sampler, schedule, seed, steps)")  # fmt: skip
        lay.addWidget(self.branch_button)
        branch_row = QHBoxLayout()
        self.branch_label = QLabel("")
        self.branch_label.setObjectName("Muted")
        self.branch_label.setWordWrap(True)
        self.stop_branch_button = QPushButton("Stop branching")
        self.stop_branch_button.setToolTip("The next runs start from pure noise again")
        branch_row.addWidget(self.branch_label, 1)
        branch_row.addWidget(self.stop_branch_button)
        lay.addLayout(branch_row)
        self.keep_latents = QCheckBox("Keep step latents with each image")
        self.keep_latents.setToolTip("Write every step's latent next to the PNG (<name>.latents.npz, 1-4 MB for "
                                     "20 steps at 512 px): `studio generate --branch-from` then starts at once")  # fmt: skip
        self.keep_latents.setChecked(session.settings.keep_latents)
        self.keep_latents.toggled.connect(lambda on: setattr(session.settings, "keep_latents", bool(on)))
        lay.addWidget(self.keep_latents)
        self._show_branch("")
        for w in (self.timeline, self.view):
            w.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            w.customContextMenuRequested.connect(lambda pos, w=w: self.step_menu().popup(w.mapToGlobal(pos)))
        self.branch_button.clicked.connect(lambda: session.branch_from(self.timeline.value()))
        self.stop_branch_button.clicked.connect(session.stop_branching)
        session.branch_changed.connect(self._show_branch)

        self.kind.currentIndexChanged.connect(lambda _i: session.set_preview_kind(self.kind.currentData()))
        self.timeline.valueChanged.connect(self._scrub)
        self.decode_button.clicked.connect(lambda: session.decode_step(self.timeline.value()))
        session.preview_changed.connect(self.view.set_image)
        session.progress.connect(self._progress)
        session.step_info.connect(self._step_info)
        session.timeline_changed.connect(self._timeline_changed)
        session.timeline_image.connect(self._timeline_image)
        session.running_changed.connect(self._running)
        session.capabilities_changed.connect(lambda info: self.set_preview_kinds(info.preview_kinds))

    def set_preview_kinds(self, offered) -> None:
        """The views the backend sends (a server: its estimates only); the session's view selected."""
        self.kind.blockSignals(True)
        self.kind.clear()
        for value, label in PREVIEW_KINDS:
            if value in offered:
                self.kind.addItem(label, value)
        self.kind.setCurrentIndex(max(0, self.kind.findData(self.session.preview_kind)))
        self.kind.setEnabled(self.kind.count() > 1)
        self.kind.blockSignals(False)

    def _progress(self, step: int, total: int, eta: float) -> None:
        if total <= 0:
            self.eta_label.setText("")
            return
        self.step_label.setText(f"step {step}/{total}")
        self.eta_label.setText(format_eta(eta) if step < total else "")

    def _step_info(self, info) -> None:
        # After `progress`: a phase ("loading model") or a pass without steps ("tile 3/9") says so itself.
        if info.stage and (not info.step or not info.total):
            self.step_label.setText(info.label())

    def _running(self, running: bool) -> None:
        if running:
            self.timeline.setEnabled(False)
            self.decode_button.setEnabled(False)
            self.branch_button.setEnabled(False)

    def step_menu(self) -> QMenu:
        """The right-click menu of the timeline's step: Branch from here (or why not), Decode this step."""
        menu = QMenu(self)
        step = self.timeline.value()
        why = self.session.why_no_branch(step) if self.timeline.isEnabled() else "Wait for the run to finish"
        act = menu.addAction(f"Branch from here (step {step})", lambda: self.session.branch_from(step))
        act.setEnabled(not why)
        act.setToolTip(why or self.branch_button.toolTip())
        menu.setToolTipsVisible(True)
        dec = menu.addAction("Decode this step", lambda: self.session.decode_step(step))
        dec.setEnabled(self.decode_button.isEnabled())
        if self.branch_label.text():
            menu.addAction("Stop branching", self.session.stop_branching)
        return menu

    def _update_branch_button(self) -> None:
        why = self.session.why_no_branch(self.timeline.value()) if self.timeline.isEnabled() else "Run first"
        self.branch_button.setEnabled(not why)
        if not why and self.session.info.remote_files:  # a ComfyUI server: what it cannot do, said before the run
            why = ("On the ComfyUI server the parent's first steps run again there (KSamplerAdvanced); change the "
                   "prompt, CFG, sampler or seed: the schedule and step count stay the parent's")  # fmt: skip
        self.branch_button.setToolTip(why or "Keep this step's composition: the next runs continue from it with what "
                                      "you change (prompt, CFG, sampler, schedule, seed, steps)")  # fmt: skip

    def _show_branch(self, label: str) -> None:
        self.branch_label.setText(f"Next runs: {label}" if label else "")
        self.branch_label.setVisible(bool(label))
        self.stop_branch_button.setVisible(bool(label))

    def _timeline_changed(self, n: int) -> None:
        self.timeline.blockSignals(True)
        self.timeline.setRange(1, max(1, n))
        self.timeline.setValue(max(1, n))
        self.timeline.blockSignals(False)
        ready = n > 0 and not self.session.is_running()
        self.timeline.setEnabled(ready)
        self.decode_button.setEnabled(ready and self.session.can_decode())
        self.decode_button.setToolTip(self.session.decode_tooltip())
        self._update_branch_button()
        if ready:
            self.session.select_step(self.timeline.value())

    def _scrub(self, step: int) -> None:
        self.session.select_step(step)
        self._update_branch_button()

    def _timeline_image(self, step: int, image: QImage) -> None:
        self.view.set_image(image)
        self.step_label.setText(self.session.timeline_label(step))
