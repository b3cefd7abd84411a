"""The studio window: prompt panel | canvas over gallery | live preview over queue; status bar."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, QUrl
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio import APP_NAME, __version__
from studio.core.errors import EngineError, describe_error
from studio.session import IMAGE_SUFFIXES, Session, project
from studio.ui.canvas import Canvas
from studio.ui.canvas_tools import CANVAS_KEYS, CanvasToolbar, tint_from_settings
from studio.ui.gallery import IMAGE_ROLE, PATH_ROLE, Gallery
from studio.ui.layers_panel import LayersPanel
from studio.ui.preview import PreviewPanel
from studio.ui.project_actions import ProjectActions, project_paths
from studio.ui.prompt_panel import PromptPanel
from studio.ui.queue_view import QueuePanel
from studio.ui.staging_bar import STAGING_KEYS, StagingBar
from studio.ui.theme import icon
from studio.ui.widgets import format_eta, section

SETTINGS_DELAY_MS = 1000  # the panel is written this long after its last edit

# Keys the help lists that are no window action (the canvas's are canvas_tools.CANVAS_KEYS).
OTHER_KEYS = (
    ("Delete", "Remove the selected job from the queue (the queue has the keyboard)"),
    ("Drop a PNG", "Load its image and parameters (ours or A1111's)"),
    ("Drop a .lsproj", "Open the project"),
)


def image_paths(mime) -> list[Path]:
    if not mime.hasUrls():
        return []
    out = []
    for url in mime.urls():
        if url.isLocalFile():
            p = Path(url.toLocalFile())
            if p.suffix.lower() in IMAGE_SUFFIXES:
                out.append(p)
    return out


class Banner(QFrame):
    """A dismissable message above the canvas, for errors an artist must see."""

    STYLES = {
        "error": "#Banner { background: #3b2326; border: 1px solid #7a3b42; border-radius: 6px; }"
                 "#Banner QLabel { background: transparent; color: #ffd7d4; }",
        "warning": "#Banner { background: #3a3120; border: 1px solid #7a6533; border-radius: 6px; }"
                   "#Banner QLabel { background: transparent; color: #ffe9bd; }",
    }  # fmt: skip

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("Banner")
        self.setStyleSheet(self.STYLES["error"])
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.label, 1)
        close = QToolButton()
        close.setIcon(icon("remove"))
        close.setAutoRaise(True)
        close.setToolTip("Dismiss this message")
        close.clicked.connect(self.hide)
        lay.addWidget(close)
        self.hide()

    def show_message(self, text: str, level: str = "error") -> None:
        self.setStyleSheet(self.STYLES.get(level, self.STYLES["error"]))
        self.label.setText(text)
        self.show()


class MainWindow(QMainWindow):
    """The window binds to a session (built by `studio.app`); it never sees the worker or a backend."""

    def __init__(self, session: Session, config_dir: Path | None = None):
        super().__init__()
        self.session = session
        session.setParent(self)
        self.settings = session.settings
        self.config_dir = config_dir
        self._closed = False
        self.autosaver = None
        self._preview_on_canvas = False
        self._laid_out = False
        self._tick = 0  # when each prompt box and the canvas history last changed: routes Ctrl+Z
        self._ticks: dict[int, int] = {}

        self.setWindowTitle(f"{APP_NAME} {__version__}")
        self.setWindowIcon(icon("app"))
        self.setMinimumSize(QSize(960, 600))
        self.setAcceptDrops(True)
        self._build()
        self._build_menus()
        for button, action in zip(
            self.canvas_buttons, (self.open_action, self.save_action, self.copy_action), strict=True
        ):
            button.setDefaultAction(action)
        self.save_action.setEnabled(False)
        self.copy_action.setEnabled(False)
        self._connect()
        if not self._restore_geometry():
            self.resize(1440, 900)
        self.gallery.load_folder(self.session.output_images)
        self.prompt_panel.prompt.setFocus()

    # -- layout ------------------------------------------------------------------------------

    def _build(self) -> None:
        s = self.session
        self.prompt_panel = PromptPanel(s)
        self.prompt_panel.grid_button.clicked.connect(self.open_grid_dialog)
        self.canvas = Canvas()
        self.banner = Banner()
        self.preview_panel = PreviewPanel(s)
        self.queue_panel = QueuePanel(s)
        self.gallery = Gallery()

        canvas_box = QWidget()
        canvas_box.setObjectName("Panel")
        canvas_box.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        cl = QVBoxLayout(canvas_box)
        cl.setContentsMargins(6, 6, 6, 6)
        cl.setSpacing(6)
        head = QHBoxLayout()
        head.setContentsMargins(4, 2, 0, 0)
        head.addWidget(section("Canvas"))
        head.addStretch(1)
        self.canvas_buttons: list[QToolButton] = []
        for _ in range(3):  # open, save as, copy: their actions are set once the menus exist
            button = QToolButton()
            button.setAutoRaise(True)
            head.addWidget(button)
            self.canvas_buttons.append(button)
        fit = QToolButton()
        fit.setAutoRaise(True)
        fit.setIcon(icon("fit"))
        fit.setToolTip("Fit the image to the canvas (or double-click it). Wheel zooms, drag pans.")
        fit.clicked.connect(self.canvas.fit)
        head.addWidget(fit)
        cl.addLayout(head)
        self.canvas_toolbar = CanvasToolbar(self.canvas, s.document)
        self.canvas.set_mask_tint(tint_from_settings(self.settings.mask_color, self.settings.mask_opacity))
        cl.addWidget(self.canvas_toolbar)
        cl.addWidget(self.banner)
        cl.addWidget(self.canvas, 1)

        gallery_box = QWidget()
        gallery_box.setObjectName("GalleryPanel")
        gallery_box.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        gl = QVBoxLayout(gallery_box)
        gl.setContentsMargins(10, 8, 10, 10)
        gl.setSpacing(6)
        gh = QHBoxLayout()
        gh.addWidget(section("Gallery"))
        gh.addStretch(1)
        self.folder_button = QToolButton()
        self.folder_button.setIcon(icon("open"))
        self.folder_button.setAutoRaise(True)
        self.folder_button.setToolTip("Open the output folder")
        gh.addWidget(self.folder_button)
        gl.addLayout(gh)
        gl.addWidget(self.gallery, 1)

        self.center_split = QSplitter(Qt.Orientation.Vertical)
        self.center_split.addWidget(canvas_box)
        self.center_split.addWidget(gallery_box)
        self.center_split.setStretchFactor(0, 4)
        self.center_split.setStretchFactor(1, 1)
        self.center_split.setSizes([650, 190])
        self.center_split.setChildrenCollapsible(False)

        self.right_split = QSplitter(Qt.Orientation.Vertical)
        # The layers sit between the preview and the queue: beside the canvas, never over it.
        self.layers_panel = LayersPanel(s.document, self.canvas, controlnets=lambda: s.addon_choices("controlnet"),
                                        folders=lambda: s.settings.model_folders)  # fmt: skip
        self.layers_panel.set_results_as_layer(self.settings.results_as_layer)
        s.results_as_layer = self.settings.results_as_layer
        self.layers_panel.results_as_layer_changed.connect(self._results_as_layer)
        # Staged results: candidates over the canvas until the artist accepts, keeps or discards them.
        self.canvas.set_staging(s.staging)
        self.staging_bar = StagingBar(s, self.canvas)
        s.staging.enabled = self.settings.stage_results
        self.layers_panel.set_stage_results(self.settings.stage_results)
        self.layers_panel.stage_results_changed.connect(self._stage_results)
        self.layers_panel.save_controls.setChecked(self.settings.save_control_images)
        self.layers_panel.save_controls_changed.connect(lambda on: setattr(self.settings, "save_control_images", on))
        self.right_split.addWidget(self.preview_panel)
        self.right_split.addWidget(self.layers_panel)
        self.right_split.addWidget(self.queue_panel)
        # The layers get the larger share: a control layer's settings sit under the list (the preview keeps its
        # image square at the column's width).
        self.right_split.setStretchFactor(0, 2)
        self.right_split.setStretchFactor(1, 3)
        self.right_split.setStretchFactor(2, 1)
        self.right_split.setSizes([330, 380, 110])
        self.right_split.setChildrenCollapsible(False)

        self.main_split = QSplitter(Qt.Orientation.Horizontal)
        self.main_split.addWidget(self.prompt_panel)
        self.main_split.addWidget(self.center_split)
        self.main_split.addWidget(self.right_split)
        self.main_split.setStretchFactor(0, 0)
        self.main_split.setStretchFactor(1, 1)
        self.main_split.setStretchFactor(2, 0)
        self.main_split.setSizes([340, 760, 320])
        self.main_split.setChildrenCollapsible(False)

        root = QWidget()
        rl = QVBoxLayout(root)
        rl.setContentsMargins(6, 6, 6, 4)
        rl.addWidget(self.main_split)
        self.setCentralWidget(root)

        sb = self.statusBar()
        sb.setSizeGripEnabled(True)
        self.status_label = QLabel("Ready")
        self.status_label.setToolTip("What the studio is doing")
        self.status_label.setMinimumWidth(120)
        self.engine_label = QLabel("Engine: starting…")
        self.engine_label.setObjectName("Muted")
        self.engine_label.setToolTip("The diffusion engine loads in the background; you can write prompts meanwhile")
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Progress of the running image")
        self.progress.hide()
        self.eta_label = QLabel("")
        self.eta_label.setObjectName("Muted")
        self.eta_label.setToolTip("Estimated time left for the running image")
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.eta_label)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.engine_label)

    def open_grid_dialog(self) -> None:
        from studio.ui.grid_dialog import GridDialog

        dialog = GridDialog(self.session, self)
        self._grid_dialog = dialog  # kept: tests and screenshots reach it
        dialog.open()

    def _action(self, text: str, slot, shortcut=None, icon_name: str = "", tip: str = "") -> QAction:
        act = QAction(text, self)
        if icon_name:
            act.setIcon(icon(icon_name))
        if shortcut is not None:
            if isinstance(shortcut, list):
                act.setShortcuts(shortcut)
            else:
                act.setShortcut(shortcut)
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.setToolTip(tip or text.replace("&", "").rstrip("…"))
        act.setStatusTip(act.toolTip())
        act.triggered.connect(lambda _checked=False: slot())
        self.addAction(act)  # shortcuts work even with the menu bar hidden
        return act

    def _build_menus(self) -> None:
        s = self.session
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        self.open_action = self._action("&Open image…", self.open_dialog, QKeySequence.StandardKey.Open, "open",
                                        "Open a PNG: show it and load its generation parameters")  # fmt: skip
        # Ctrl+S saves the project (self.project); the image alone is exported as a PNG with its parameters.
        self.save_action = self._action("&Export image…", self.save_as, QKeySequence("Ctrl+Shift+E"), "save",
                                        "Save the current image as a PNG with its parameters (Ctrl+Shift+E)")  # fmt: skip
        self.copy_action = self._action("&Copy image", self.copy_image, QKeySequence("Ctrl+Shift+C"), "copy",
                                        "Copy the current image to the clipboard")  # fmt: skip
        self.new_canvas_action = self._action("&New canvas…", self.new_canvas_dialog, QKeySequence.StandardKey.New,
                                              "image", "A blank canvas of a chosen size to paint and inpaint on")  # fmt: skip
        self.project = ProjectActions(self)
        file_menu.addActions([self.open_action, self.project.open_action])
        file_menu.addMenu(self.project.recent_menu)
        file_menu.addAction(self.new_canvas_action)
        file_menu.addSeparator()
        file_menu.addActions([self.project.save_action, self.project.save_as_action, self.save_action, self.copy_action])
        file_menu.addSeparator()
        self.load_mask_action = self._action("Load &mask…", self.load_mask_dialog, None, "open",
                                             "Load a mask PNG (white = repaint) for the canvas image")  # fmt: skip
        self.save_mask_action = self._action("Save mask &as…", self.save_mask_dialog, None, "save",
                                             "Save the mask as a PNG (white = repaint)")  # fmt: skip
        file_menu.addActions([self.load_mask_action, self.save_mask_action])
        file_menu.addSeparator()
        file_menu.addAction(self._action("Open output &folder", self.open_output_folder, None, "folder"))
        file_menu.addAction(self._action("Choose output folder…", self.choose_output_folder))
        file_menu.addAction(self._action("Add &model folder…", self.add_model_folder, None, "folder",
                                         "Add a folder of models (diffusers folders or .safetensors files)"))  # fmt: skip
        device_menu = file_menu.addMenu("Engine &device")
        device_menu.setToolTipsVisible(True)
        group = QActionGroup(self)
        for dev, label in (("auto", "Automatic"), ("cuda", "CUDA (NVIDIA)"), ("mps", "Apple MPS"), ("cpu", "CPU")):
            act = QAction(label, self, checkable=True)
            act.setChecked(self.settings.device == dev)
            act.setToolTip("Takes effect the next time the studio starts")
            act.triggered.connect(lambda _c=False, d=dev: self._set_device(d))
            group.addAction(act)
            device_menu.addAction(act)
        self._build_memory_menu(file_menu.addMenu("&Memory"))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit))

        edit_menu = mb.addMenu("&Edit")
        self.undo_action = self._action("&Undo", s.undo, QKeySequence.StandardKey.Undo, "undo",
                                        "Undo the last stroke, mask change or image change (Ctrl+Z)")  # fmt: skip
        self.redo_action = self._action("&Redo", s.redo, [QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")], "redo",
                                        "Redo what was undone (Ctrl+Shift+Z)")  # fmt: skip
        self.paste_action = self._action("&Paste image", self.paste_image, QKeySequence.StandardKey.Paste, "paste",
                                         "Paste an image from the clipboard onto the canvas (Ctrl+V)")  # fmt: skip
        self.extend_action = self._action("&Extend canvas (outpaint)…", self.extend_canvas_dialog,
                                          QKeySequence("Ctrl+E"), "extend",
                                          "Add pixels on any side; the new area is masked and inpainted")  # fmt: skip
        self.fill_mask_action = self._action("&Fill mask", s.document.fill_mask, None, "", "Mask the whole image")
        self.clear_mask_action = self._action("C&lear mask", s.document.clear_mask, QKeySequence("Ctrl+Shift+X"), "",
                                              "Remove the mask")  # fmt: skip
        self.invert_mask_action = self._action("&Invert mask", s.document.invert_mask, QKeySequence("Ctrl+I"), "",
                                               "Swap masked and unmasked areas")  # fmt: skip
        edit_menu.addActions([self.undo_action, self.redo_action])
        edit_menu.addSeparator()
        edit_menu.addActions([self.paste_action, self.extend_action])
        edit_menu.addSeparator()
        edit_menu.addActions([self.fill_mask_action, self.clear_mask_action, self.invert_mask_action])
        self.deselect_action = self._action("&Deselect", lambda: s.document.set_selection(None),
                                            QKeySequence("Ctrl+Shift+A"), "",
                                            "Clear the selection: runs work on the whole image again")  # fmt: skip
        edit_menu.addSeparator()
        edit_menu.addAction(self.deselect_action)

        gen_menu = mb.addMenu("&Generate")
        self.generate_action = self._action("&Generate", s.generate, [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")],
                                            "generate", "Generate from the prompt (Ctrl+Enter)")  # fmt: skip
        self.cancel_action = self._action("&Cancel", s.cancel, QKeySequence(Qt.Key.Key_Escape), "cancel",
                                          "Stop the running image at its next step (Esc)")  # fmt: skip
        self.cancel_all_action = self._action("Cancel &all", s.cancel_all, None, "clear", "Stop and empty the queue")
        self.random_action = self._action("&Random seed", s.random_seed, None, "dice")
        self.reuse_action = self._action("Reuse &last seed", s.reuse_seed, None, "reuse")
        self.inpaint_action = self._action("&Inpaint", s.inpaint, QKeySequence("Ctrl+Shift+Return"), "generate",
                                           "Repaint the masked area of the canvas from the prompt")  # fmt: skip
        self.grid_action = self._action("Comparison &grid…", self.open_grid_dialog, None, "",
                                        "A grid of images over up to three parameters (A1111's X/Y/Z plot)")  # fmt: skip
        gen_menu.addActions([self.generate_action, self.inpaint_action, self.cancel_action, self.cancel_all_action,
                             self.grid_action])  # fmt: skip
        gen_menu.addSeparator()
        self.mode_actions: dict[str, QAction] = {}
        for n, (mode, label) in enumerate((("txt2img", "&Text to image"), ("img2img", "I&mage to image"),
                                           ("inpaint", "I&npaint mode"), ("upscale", "&Upscale mode")), 1):  # fmt: skip
            act = self._action(label, lambda m=mode: s.set_mode(m), QKeySequence(f"Ctrl+{n}"), "",
                               f"Switch the panel to {label.replace('&', '').lower()} (Ctrl+{n})")  # fmt: skip
            self.mode_actions[mode] = act
        gen_menu.addActions(list(self.mode_actions.values()))
        self._offer_modes(s.info)
        gen_menu.addSeparator()
        gen_menu.addActions([self.random_action, self.reuse_action])

        engine_menu = mb.addMenu("E&ngine")
        group = QActionGroup(self)
        self.local_engine_action = QAction("&Local engine", self, checkable=True)
        self.local_engine_action.setToolTip("Run on this machine's CPU or GPU")
        self.local_engine_action.triggered.connect(lambda: self.session.switch_engine("local"))
        self.server_engine_action = QAction("&ComfyUI server…", self, checkable=True)
        self.server_engine_action.setToolTip("Run on a ComfyUI server (a GPU elsewhere): its address and token")
        self.server_engine_action.triggered.connect(self.choose_server)
        for act in (self.local_engine_action, self.server_engine_action):
            group.addAction(act)
            engine_menu.addAction(act)
        (self.server_engine_action if self.settings.backend == "comfyui" else self.local_engine_action).setChecked(True)
        engine_menu.addSeparator()
        self.turbo_cache_action = self._action("Clear the &turbo cache…", lambda: self.clear_turbo_cache(), None, "",
                                               "Converted U-Nets of turbo mode: minutes to make again, gigabytes on disk")  # fmt: skip
        engine_menu.addAction(self.turbo_cache_action)
        # Exact's OpenVINO f32 (the same conversion as turbo's): an opt-in, since each model's first Exact run then
        # converts it (minutes, gigabytes); remembered with the panel's settings.
        self.prepare_exact_action = QAction("Prepare &Exact with OpenVINO", self, checkable=True)
        self.prepare_exact_action.setToolTip("Exact converts each model once for OpenVINO f32 (minutes, gigabytes "
                                             "on disk; Esc cancels), then runs it 1.16x (idle) to 1.6x (busy machine) faster at 512 px, at the same pixels")  # fmt: skip
        self.prepare_exact_action.setChecked(bool(s.params.prepare_exact))
        self.prepare_exact_action.toggled.connect(lambda on: self.session.update_params(prepare_exact=on))
        engine_menu.addAction(self.prepare_exact_action)
        engine_menu.aboutToShow.connect(self._show_turbo_cache)

        help_menu = mb.addMenu("&Help")
        help_menu.addAction(self._action("&Keyboard shortcuts", self.show_shortcuts, QKeySequence("F1")))
        help_menu.addAction(self._action("&About Latent Studio", self.about))

        for menu in (file_menu, edit_menu, gen_menu, engine_menu, help_menu):
            menu.setToolTipsVisible(True)

    def _connect(self) -> None:
        s = self.session
        s.current_image_changed.connect(self._show_current)
        s.preview_changed.connect(self._show_preview)
        s.result_image.connect(self.gallery.add_result)
        s.message.connect(self.show_message)
        s.progress.connect(self._progress)
        s.running_changed.connect(self._running)
        s.engine_state.connect(self._engine_state)
        s.capabilities_changed.connect(self._offer_modes)
        s.jobs_changed.connect(self._jobs)
        s.job_queued.connect(lambda _job_id: self.save_settings())  # a crash never loses the prompt
        # After a crash the panel comes back as it was at the last edit, not as of the last run: a quiet
        # moment after each change writes the settings (one small JSON file, atomically).
        self._settings_timer = QTimer(self, singleShot=True, interval=SETTINGS_DELAY_MS)
        self._settings_timer.timeout.connect(self.save_settings)
        s.params_edited.connect(self._settings_timer.start)
        s.step_info.connect(self._step_info)
        s.crop_changed.connect(self.canvas.set_crop_rect)
        s.live_overlay.connect(self.canvas.set_live_overlay)
        s.live_canvas.connect(self._show_live_canvas)
        s.params_changed.connect(self._mode_tools)
        s.document.image_changed.connect(self._fit_brush)
        s.document.image_changed.connect(lambda _image: self._mode_tools(s.params))
        s.document.history_changed.connect(self._history_changed)
        s.document.mask_changed.connect(lambda _rect=None: self._mask_actions())
        self._history_changed()
        self._mask_actions()
        self.canvas.set_document(s.document)  # the mask overlay and painting work on the document
        self.gallery.image_activated.connect(self._gallery_show)
        self.gallery.parameters_requested.connect(lambda p: p and s.open_image(p))
        self.gallery.customContextMenuRequested.connect(self._gallery_menu)
        self.folder_button.clicked.connect(self.open_output_folder)
        # Ctrl+Enter inside the prompt boxes: they would otherwise take the key as a new line.
        for edit in (self.prompt_panel.prompt, self.prompt_panel.negative):
            edit.installEventFilter(self)
            edit.document().contentsChanged.connect(lambda e=edit: self._touched(e))
        s.document.history_changed.connect(lambda: self._touched(s.document))
        # A result lands: its mask tint is hidden (the mask stays for the next inpaint) until the mask is edited.
        self._result_landing = False
        s.result_image.connect(lambda *_: setattr(self, "_result_landing", True))
        s.document.image_changed.connect(self._hide_tint_on_result)
        # Staged results land on Accept (the tint hides then); discarded, they never land.
        s.staging.changed.connect(lambda: s.staging.active() or setattr(self, "_result_landing", False))

    def _hide_tint_on_result(self, _image) -> None:
        if self._result_landing:
            self._result_landing = False
            self.canvas.hide_mask_until_edit()

    def start_autosave(self, folder: Path, ask=None) -> bool:
        """Offer to restore what an unclean exit left in `folder`, then keep the canvas saved there.
        ask(info) -> bool decides (default: a question box). Returns whether a document was restored."""
        from studio.session import autosave

        restored = False
        info = autosave.pending_restore(folder)
        if info is not None:
            ask = ask or self._ask_restore
            if ask(info):
                loaded = autosave.load(folder)
                if loaded is not None:
                    state, entries, cursor = loaded
                    self.session.document.restore(state, entries, cursor)
                    self.session.staging.restore(*autosave.load_staged(folder))
                    restored = True
                    self.show_message(f"Restored the canvas ({info.size[0]}×{info.size[1]}, "
                                      f"{info.undo_steps} undo steps) from the last session")  # fmt: skip
                else:
                    self.show_message("The saved canvas could not be read; starting empty", "warning")
            else:
                autosave.discard(folder)
        self.autosaver = autosave.Autosaver(self.session.document, folder, parent=self, staging=self.session.staging)
        self.autosaver.failed.connect(lambda text: self.show_message(f"Autosave failed: {text}", "error"))
        if not self.autosaver.enabled:
            # Another running studio holds the save folder; saying it only on stderr leaves the artist unaware.
            self.show_message("Another Latent Studio window is open: crash protection (autosave) is off in this "
                              "one. Save your work from the File menu.", "attention")  # fmt: skip
        return restored

    def _ask_restore(self, info) -> bool:
        import datetime

        when = datetime.datetime.fromtimestamp(info.saved_at).strftime("%H:%M:%S on %d %b")
        mask = " with its mask" if info.has_mask else ""
        answer = QMessageBox.question(
            self, "Restore the canvas?",
            f"Latent Studio did not close cleanly last time. Restore the canvas{mask} "
            f"({info.size[0]}×{info.size[1]}, {info.undo_steps} undo steps), saved at {when}?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes,
        )  # fmt: skip
        return answer == QMessageBox.StandardButton.Yes

    def start_engine(self) -> None:
        """Start the backend on the engine thread (after the window shows: torch takes a while)."""
        if not self._closed:
            self.session.start_engine()

    # -- event filter: Ctrl+Enter in text boxes ------------------------------------------------

    def _touched(self, what) -> None:
        self._tick += 1
        self._ticks[id(what)] = self._tick

    def _undo_goes_to_canvas(self, edit, redo: bool) -> bool:
        """Ctrl+Z / Ctrl+Shift+Z in a prompt box (where it has the focus after Ctrl+Enter): the text box undoes
        typing while it has a step to undo (redo) AND was edited after the canvas last changed; else the canvas
        does (Krita's and Photoshop's rule: canvas undo wins outside text editing). A canvas with nothing to undo
        leaves the key to the text."""
        doc, history = edit.document(), self.session.document.history
        if not (history.can_redo() if redo else history.can_undo()):
            return False
        text_newer = self._ticks.get(id(edit), -1) > self._ticks.get(id(self.session.document), -1)
        return not ((doc.isRedoAvailable() if redo else doc.isUndoAvailable()) and text_newer)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        from PySide6.QtCore import QEvent

        if event.type() in (QEvent.Type.KeyPress, QEvent.Type.ShortcutOverride):
            mods = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
            ctrl, shift = Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.ShiftModifier
            redo = (event.key() == Qt.Key.Key_Z and mods == ctrl | shift) or (event.key() == Qt.Key.Key_Y and mods == ctrl)
            if ((event.key() == Qt.Key.Key_Z and mods == ctrl) or redo) and self._undo_goes_to_canvas(obj, redo):
                if event.type() == QEvent.Type.KeyPress:
                    (self.session.redo if redo else self.session.undo)()
                event.accept()  # an accepted override: the key comes here as a press, not to the text box's undo
                return True
            if (
                event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier
            ):
                if event.type() == QEvent.Type.KeyPress:
                    self.session.generate()
                event.accept()
                return True
        return super().eventFilter(obj, event)

    # -- slots -------------------------------------------------------------------------------

    def show_message(self, text: str, level: str = "info") -> None:
        self.status_label.setText(text)
        self.status_label.setObjectName("StatusError" if level == "error" else "")
        self.status_label.setStyleSheet("color: #ff8a80;" if level == "error" else "")
        if level == "error":
            self.banner.show_message(text)
        elif level == "attention":
            # A warning the artist must see (values of an opened PNG the panel did not take): the status bar alone
            # is overwritten by the next routine message ("Model ready").
            self.banner.show_message(text, "warning")
        elif level == "info" and text.startswith("Generating"):
            self.banner.hide()

    def _show_current(self, image: QImage) -> None:
        self._preview_on_canvas = False
        path, size = self.session.current_path, f"{image.width()}×{image.height()}"
        name = path.name if path else self.session.current_caption
        caption = f"{name}  ·  {size}" if name else size
        self.canvas.set_image(image, caption)
        self.save_action.setEnabled(not image.isNull())
        self.copy_action.setEnabled(not image.isNull())

    def _fit_brush(self, image: QImage) -> None:
        # A brush wider than a quarter of the image masks it all in one dab: scale it to a new image.
        side = min(image.width(), image.height())
        if side > 0 and self.canvas.brush_size() > side / 4:
            self.canvas.set_brush_size(max(1, round(side / 8)))

    def _mode_tools(self, params) -> None:
        # Inpaint mode is about painting the mask: hand the artist the brush; Upscale mode about picking a
        # region (or none: the whole image): the selection tool. Middle-drag or Space pans with either.
        if not self.session.document.has_image():
            return
        if params.mode == "inpaint" and self.canvas.tool() in ("pan", "select"):
            self.canvas.set_tool("brush")
        elif params.mode == "upscale" and self.canvas.tool() != "select":
            self.canvas.set_tool("select")

    def _history_changed(self) -> None:
        h = self.session.document.history
        self.undo_action.setEnabled(h.can_undo())
        self.redo_action.setEnabled(h.can_redo())
        self.undo_action.setText(f"&Undo {h.undo_label()}".rstrip())
        self.redo_action.setText(f"&Redo {h.redo_label()}".rstrip())

    def _mask_actions(self) -> None:
        doc = self.session.document
        self.save_mask_action.setEnabled(doc.mask is not None)
        self.clear_mask_action.setEnabled(doc.mask is not None)

    def _show_preview(self, image: QImage) -> None:
        """While a run goes, the canvas shows its live preview, enlarged (an inpaint: over its area)."""
        if self.session.previews_in_place():
            return  # drawn over the canvas image through the mask or the region (live_overlay), or as tiles
        if self.session.is_running():
            self._preview_on_canvas = True
            w, h = self.session.running_size()
            if not (w and h):  # the model's native size: the preview's own aspect (latent px are 8 image px)
                w, h = image.width() * 8, image.height() * 8
            self.canvas.set_image(image, f"preview · {self.progress.format()}", smooth=True, logical_size=QSize(w, h))

    def _progress(self, step: int, total: int, eta: float) -> None:
        if total <= 0:
            self.progress.hide()
            self.eta_label.setText("")
            return
        self.progress.show()
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        self.progress.setFormat(f"step {step}/{total}")
        self.eta_label.setText(format_eta(eta) if step < total else "")

    def _show_live_canvas(self, image: QImage) -> None:
        """An upscale forming: its output, the finished tiles in place, over the resized input."""
        if self.session.is_running():
            self._preview_on_canvas = True
            self.canvas.set_image(image, f"upscaling · {self.progress.format()}", smooth=True)

    def _step_info(self, info) -> None:
        # After `progress`: a multi-pass run relabels the bar ("tile 3/9, step 4/20").
        if info.stage:
            self.progress.setFormat(info.label())

    def _running(self, running: bool) -> None:
        if not running:
            self.progress.hide()
            self.eta_label.setText("")
            if self._preview_on_canvas:  # cancelled or failed: back to the last real image
                self._preview_on_canvas = False
                image = self.session.current_image
                if image is not None:
                    self._show_current(image)
                else:
                    self.canvas.set_image(None)

    def _jobs(self) -> None:
        has_jobs = bool(self.session.jobs())
        self.cancel_action.setEnabled(has_jobs)
        self.cancel_all_action.setEnabled(has_jobs)

    def _offer_modes(self, info) -> None:
        for mode, act in self.mode_actions.items():
            act.setEnabled(mode in info.modes)

    def _engine_state(self, state: str, text: str) -> None:
        if state == "ready":
            info = self.session.info
            self.engine_label.setText(f"{info.name}: ready" if info.remote_files else "Engine: ready")
            where = f" on {info.device}" if info.device else ""
            self.engine_label.setToolTip(f"{info.name}{where}" + (f" (version {info.version})" if info.version else ""))
            remote = info.remote_files
            self.local_engine_action.setChecked(not remote)
            self.server_engine_action.setChecked(remote)
            if getattr(self, "_models_from", None) != (info.name, remote):
                self._models_from = (info.name, remote)  # another engine: its files (a rescan costs a folder walk)
                self.prompt_panel.refresh_models()
        elif state in ("loading", "busy"):
            self.engine_label.setText(f"Engine: {text or 'loading'}…")
        elif state == "lost":
            self.engine_label.setText(f"{self.session.info.name}: lost, retrying…")
            self.engine_label.setToolTip(text)
        else:
            self.engine_label.setText("Engine: unavailable")
            self.engine_label.setToolTip(text)

    def _gallery_show(self, path: str) -> None:
        if not path:  # a result that could not be written: the gallery keeps the image itself
            item = self.gallery.currentItem()
            image = item.data(IMAGE_ROLE) if item is not None else None
            if isinstance(image, QImage):
                self.session.show_gallery_image(image, None)
            return
        image = QImage(path)
        if image.isNull():
            self.show_message(f"Could not read {Path(path).name}", "error")
            return
        self.session.show_gallery_image(image, Path(path))

    def _gallery_menu(self, pos) -> None:
        item = self.gallery.itemAt(pos)
        if item is None:
            return
        path = item.data(PATH_ROLE) or ""
        menu = QMenu(self)
        menu.addAction(icon("image"), "Show", lambda: self._gallery_show(path))
        menu.addAction(icon("open"), "Use as input", lambda: self._gallery_use(path, item))
        menu.addAction(icon("extend"), "Upscale…", lambda: self._gallery_upscale(path, item))
        act = menu.addAction(icon("reuse"), "Reuse parameters", lambda: self.session.open_image(path))
        act.setEnabled(bool(path))
        menu.addAction(icon("copy"), "Copy image", lambda: (self._gallery_show(path), self.copy_image()))
        menu.addAction(icon("save"), "Save as…", lambda: (self._gallery_show(path), self.save_as()))
        act = menu.addAction(
            icon("folder"),
            "Show in folder",
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(path).parent))),
        )
        act.setEnabled(bool(path))
        menu.exec(self.gallery.viewport().mapToGlobal(pos))

    def _gallery_use(self, path: str, item) -> None:
        image = QImage(path) if path else item.data(IMAGE_ROLE)
        if not isinstance(image, QImage) or image.isNull():
            self.show_message(f"Could not read {Path(path).name}" if path else "This image is gone", "error")
            return
        self.session.use_as_input(image, Path(path) if path else None)

    def _gallery_upscale(self, path: str, item) -> None:
        """Put the image on the canvas and switch to Upscale: the artist checks the options, then runs it."""
        self._gallery_use(path, item)
        self.session.set_mode("upscale")
        self.show_message("Upscale mode: check the method and factor, then press Upscale (Ctrl+Enter)")

    # -- file actions --------------------------------------------------------------------------

    def paste_image(self) -> None:
        mime = QApplication.clipboard().mimeData()
        if mime is not None and mime.hasImage():
            self.session.paste_image(QImage(QApplication.clipboard().image()))
            return
        paths = image_paths(mime) if mime is not None else []
        if paths:
            self.session.open_image(paths[0])
            return
        self.session.paste_image(None)

    def new_canvas_dialog(self) -> None:
        from studio.ui.dialogs import NewCanvasDialog

        if not self.project.confirm_discard("starting a new canvas"):
            return
        w, h = self.session.document.size()
        dialog = NewCanvasDialog(w or 512, h or 512, self)
        if dialog.exec() and self.session.new_canvas(*dialog.values()):
            self.project.new_document()

    def extend_canvas_dialog(self) -> None:
        from studio.ui.dialogs import ExtendCanvasDialog

        if not self.session.document.has_image():
            self.show_message("Open, paste or generate an image before extending it", "warning")
            return
        dialog = ExtendCanvasDialog(self.session.document.size(), self)
        if dialog.exec() and self.session.extend_canvas(*dialog.values()) and dialog.inpaint_now:
            self.session.inpaint()

    def load_mask_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a mask", str(self.session.output_dir),
                                              "Images (*.png *.jpg *.jpeg *.webp);;All files (*)")  # fmt: skip
        if path:
            self.session.load_mask(path)

    def save_mask_dialog(self) -> None:
        src = self.session.current_path
        suggested = str(Path.home() / ((src.stem + "-mask.png") if src else "mask.png"))
        path, _ = QFileDialog.getSaveFileName(self, "Save the mask as", suggested, "PNG image (*.png)")
        if path:
            self.session.save_mask(path)

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", str(self.session.output_dir),
                                              "Images (*.png *.jpg *.jpeg *.webp);;Latent Studio project (*.lsproj);;"
                                              "All files (*)")  # fmt: skip
        if path and Path(path).suffix.lower() == project.SUFFIX:
            self.project.open(path)
        elif path:
            self.session.open_image(path)

    def save_as(self, target: str | None = None) -> bool:
        image = self.session.current_image
        if image is None or image.isNull():
            self.show_message("No image to save yet", "warning")
            return False
        if target is None:
            src = self.session.current_path
            suggested = str(Path.home() / (src.name if src else "image.png"))
            target, _ = QFileDialog.getSaveFileName(self, "Save image as", suggested, "PNG image (*.png)")
            if not target:
                return False
        try:
            dest = self.session.save_current_as(target)
        except (OSError, EngineError) as exc:
            self.show_message(f"Could not save {Path(target).name}: {describe_error(exc)}", "error")
            return False
        self.show_message(f"Saved {dest}")
        return True

    def copy_image(self) -> None:
        image = self.session.current_image
        if image is None or image.isNull():
            self.show_message("No image to copy yet", "warning")
            return
        QApplication.clipboard().setImage(image)
        self.show_message("Image copied to the clipboard")

    def open_output_folder(self) -> None:
        folder = self.session.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def choose_output_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", str(self.session.output_dir))
        if folder:
            self.settings.output_dir = folder
            self.session.output_dir = Path(folder)
            self.gallery.load_folder(self.session.output_images)
            self.show_message(f"Images are saved to {folder}")

    def add_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a model folder", str(Path.home()))
        if folder and folder not in self.settings.model_folders:
            self.settings.model_folders.append(folder)
            self.prompt_panel.refresh_models()
            self.show_message(f"Models from {folder} added")

    def _show_turbo_cache(self) -> None:
        from studio.core.turbocache import format_size

        used = self.session.turbo_cache_usage()
        self.turbo_cache_action.setText(f"Clear the &turbo cache ({format_size(used)})…")
        self.turbo_cache_action.setEnabled(used > 0 and not self.session.is_running())

    def clear_turbo_cache(self, ask=None) -> None:
        """ask(text) -> bool confirms (default: a question box): a cleared model converts again, for minutes."""
        from studio.core.turbocache import format_size

        text = (f"Remove the turbo cache ({format_size(self.session.turbo_cache_usage())})? The next turbo run "
                "of each model converts it again, which takes minutes.")  # fmt: skip
        ask = ask or (lambda t: QMessageBox.question(self, "Clear the turbo cache", t)
                      == QMessageBox.StandardButton.Yes)  # fmt: skip
        if ask(text):
            self.session.clear_turbo_cache()

    def _build_memory_menu(self, menu) -> None:
        """Attention slicing, VAE tiling and CPU offload: for large models on small GPUs; from the next run."""
        from studio.core.memory import OFFLOAD_LABELS

        menu.setToolTipsVisible(True)
        for attr, label, tip in (
            ("attention_slicing", "&Attention slicing", "Less memory for attention, a little slower"),
            ("vae_tiling", "&VAE tiling", "Decode large images in tiles: much less memory at large sizes"),
        ):
            act = QAction(label, self, checkable=True)
            act.setChecked(bool(getattr(self.settings, attr)))
            act.setToolTip(tip + " (from the next run)")
            act.toggled.connect(lambda on, a=attr: self._set_memory(a, on))
            menu.addAction(act)
            setattr(self, f"{attr}_action", act)
        menu.addSeparator()
        group = QActionGroup(self)
        for value, label in OFFLOAD_LABELS.items():
            act = QAction(label, self, checkable=True)
            act.setChecked(self.settings.offload == value)
            act.setToolTip("GPU only; the model reloads at the next run")
            act.triggered.connect(lambda _c=False, v=value: self._set_memory("offload", v))
            group.addAction(act)
            menu.addAction(act)

    def _set_memory(self, attr: str, value) -> None:
        setattr(self.settings, attr, value)
        self.show_message("Memory settings apply from the next run")

    def choose_server(self) -> None:
        from studio.ui.dialogs import ServerDialog

        dialog = ServerDialog(self.settings.server_url, self.settings.server_token, self)
        if dialog.exec() != ServerDialog.DialogCode.Accepted:
            (self.server_engine_action if self.settings.backend == "comfyui" else self.local_engine_action).setChecked(
                True
            )
            return
        url, token = dialog.values()
        if not url.startswith(("http://", "https://")):
            self.show_message(f"{url or 'An empty address'} is not a server address: use http://host:port", "error")
            self.local_engine_action.setChecked(self.settings.backend != "comfyui")
            return
        self.session.switch_engine("comfyui", url, token)
        self.show_message(f"Connecting to {url}…")

    def _set_device(self, device: str) -> None:
        self.settings.device = device
        self.show_message("The engine device changes the next time the studio starts")

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(keys, what they do) for the help: every window action with a shortcut, then the keys that are no
        action (the canvas's, the queue's Delete, a drop), so the help cannot drift from the menus."""
        rows = []
        for act in self.actions():
            keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts() if not k.isEmpty()]
            if keys:
                rows.append((" or ".join(keys), act.text().replace("&", "").rstrip("…")))
        merged: dict[str, list[str]] = {}  # one row per key: Esc cancels a run, else discards staged results
        for keys, what in rows + list(CANVAS_KEYS) + list(STAGING_KEYS) + list(OTHER_KEYS):
            merged.setdefault(keys, []).append(what)
        return [(keys, "; else ".join(whats)) for keys, whats in merged.items()]

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>&nbsp;&nbsp;{html.escape(v)}</td></tr>"
                       for k, v in self.shortcut_rows())  # fmt: skip
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    def about(self) -> None:
        QMessageBox.about(
            self,
            f"About {APP_NAME}",
            f"<h3>{APP_NAME} {__version__}</h3><p>A desktop studio for latent diffusion models. "
            f"Runs offline; every image is saved with its parameters in<br><code>{self.session.output_dir}</code></p>",
        )

    # -- drag and drop -------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if image_paths(event.mimeData()) or project_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if image_paths(event.mimeData()) or project_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        projects = project_paths(event.mimeData())
        if projects:
            event.acceptProposedAction()
            self.project.open(projects[0])
            return
        paths = image_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.session.open_image(paths[0])

    # -- geometry and closing ---------------------------------------------------------------

    def _restore_geometry(self) -> bool:
        ok = False
        if self.settings.geometry:
            try:
                ok = self.restoreGeometry(QByteArray(base64.b64decode(self.settings.geometry)))
            except (ValueError, TypeError):
                ok = False
        for name, split in self._splitters().items():
            state = self.settings.splitter_state.get(name)
            if state:
                try:
                    split.restoreState(QByteArray(base64.b64decode(state)))
                except (ValueError, TypeError):
                    pass
        return ok

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._laid_out:
            self._laid_out = True
            if not self.settings.splitter_state.get("main"):
                self.fit_splitters()

    def fit_splitters(self) -> None:
        """Panel widths for the window's width: the canvas gets what the side panels do not need."""
        total = max(self.main_split.width(), self.width() - 12)
        left = max(self.prompt_panel.minimumWidth(), min(380, int(total * 0.24)))
        right = max(self.preview_panel.minimumWidth(), min(360, int(total * 0.22)))
        self.main_split.setSizes([left, max(200, total - left - right), right])

    def _splitters(self) -> dict[str, QSplitter]:  # "right3": the right column has three panels since layers
        return {"main": self.main_split, "center": self.center_split, "right3": self.right_split}

    def _results_as_layer(self, on: bool) -> None:
        self.session.results_as_layer = self.settings.results_as_layer = on

    def _stage_results(self, on: bool) -> None:
        self.session.staging.enabled = self.settings.stage_results = on

    def store_settings(self) -> None:
        self.session.store_settings()
        tint = self.canvas.mask_tint()
        self.settings.mask_color, self.settings.mask_opacity = tint.name(), round(tint.alpha() * 100 / 255)
        self.settings.geometry = base64.b64encode(bytes(self.saveGeometry())).decode("ascii")
        self.settings.splitter_state = {
            name: base64.b64encode(bytes(split.saveState())).decode("ascii")
            for name, split in self._splitters().items()
        }

    def save_settings(self) -> None:
        self.store_settings()
        try:
            self.settings.save(self.config_dir)
        except OSError as exc:
            self.show_message(f"Could not save the settings: {exc}", "error")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.project.wait_saved()  # a project being written finishes first (the window keeps painting)
        if not self._closed and not self.project.confirm_discard("closing"):
            event.ignore()  # Cancel (or a Save that did not happen): the window and the document stay
            return
        if not self._closed:
            self._closed = True
            self.save_settings()
            self.hide()  # a run can take a moment to stop: do not leave a frozen window on screen
            self.session.shutdown()
            self.gallery.shutdown()
            if self.autosaver is not None:
                self.autosaver.close()  # the last save, marked clean: nothing to restore next time
        event.accept()
