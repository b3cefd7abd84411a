"""Few-step presets in the prompt panel: a small menu beside the sampler, and a one-line hint with an Apply action
when the chosen model or a LoRA in the prompt looks like a few-step model (studio.core.fewstep). Nothing changes the
artist's settings unless they click."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMenu, QPushButton, QToolButton, QWidget

from studio.core.fewstep import PRESETS, Detected, Preset, suggest
from studio.core.prompts import extract_loras
from studio.session import Session


class PresetControls:
    """`button` goes beside the sampler; `hint` is a row of its own (hidden unless a few-step file is in use)."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        self.session = session
        self.button = QToolButton(parent)
        self.button.setObjectName("PresetButton")
        self.button.setText("Fast ▾")
        self.button.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")  # the ▾ says it
        self.button.setToolTip("Few-step presets: the sampler, schedule, steps and CFG that LCM, Turbo, Lightning, "
                               "Hyper-SD and TCD models and LoRAs are made for")  # fmt: skip
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu = QMenu(self.button)
        self.menu.setToolTipsVisible(True)
        for preset in PRESETS.values():
            act = self.menu.addAction(preset.label)
            act.setToolTip(f"For {preset.use}: {preset.sampler}, {preset.schedule}")
            act.triggered.connect(lambda _c=False, p=preset: self.apply(p))
        self.button.setMenu(self.menu)

        self.hint = QFrame(parent)
        self.hint.setObjectName("PresetHint")
        row = QHBoxLayout(self.hint)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(6)
        self.hint_label = QLabel("")
        self.hint_label.setObjectName("Muted")
        self.hint_label.setWordWrap(True)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Set the sampler, schedule, steps and CFG this model is made for")
        self.apply_button.clicked.connect(self._apply_detected)
        row.addWidget(self.hint_label, 1)
        row.addWidget(self.apply_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hint.hide()

        self.detected: Detected | None = None
        self._key: tuple | None = None
        self._loras: dict[str, str] | None = None  # LoRA name -> file, read once per set of LoRA names
        session.params_changed.connect(lambda _p: self.refresh())

    def watch(self, *signals) -> None:
        """Signals (the panel's edits, which the session does not echo) after which the hint is looked at again.
        Connected after the panel's own handlers, so the session already holds the edit. A refresh is cheap: only a
        new model or set of LoRA names reads a file header."""
        for sig in signals:
            sig.connect(lambda *_a: self.refresh())

    def apply(self, preset: Preset) -> None:
        p = self.session.params
        self.session.set_params(dataclasses.replace(p, **preset.fields()))  # the panel shows it via params_changed

    def _apply_detected(self) -> None:
        if self.detected is not None:
            self.apply(self.detected.preset)

    def _find_lora(self, name: str) -> str | None:
        if Path(name).expanduser().is_file():
            return str(Path(name).expanduser())
        if self._loras is None:
            self._loras = {Path(path).stem.lower(): path for _label, path in self.session.addon_choices("lora")}
        return self._loras.get(Path(name).stem.lower())

    def refresh(self) -> None:
        p = self.session.params
        try:
            names = tuple(n for n, _w in extract_loras(p.prompt or "")[1])
        except ValueError:
            names = ()
        key = (p.model, names, p.mode == "upscale")
        if key != self._key:  # only a new model or LoRA set reads a file
            self._key, self._loras = key, None
            self.detected = suggest(p.model, p.prompt, self._find_lora) if p.mode != "upscale" else None
        shown = self.detected is not None and not self.detected.preset.matches(p)
        if (d := self.detected) is not None:
            self.hint_label.setText(f"{d.file}: few-step, {d.preset.label}")  # one short line; the rest in the tip
            self.hint.setToolTip(f"{d.hint}. For {d.preset.use}. Apply sets {d.preset.sampler}, {d.preset.schedule}, "
                                 f"{d.preset.steps} steps, CFG {d.preset.cfg:g}; nothing changes until you click.")  # fmt: skip
        self.hint.setVisible(shown)
