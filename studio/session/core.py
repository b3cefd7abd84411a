"""The session: the observable state the widgets bind to, and the actions they call.

Widgets talk to the session only; the session talks to the worker, by typed job requests, and
knows no concrete backend. It composes the parts: parameters (`params`), the document (image
and mask), the job book (routing worker signals by job kind) and the step timeline.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QImage, QImageReader

from studio.backends.base import BackendInfo
from studio.core.errors import EngineError, RequestError, describe_error
from studio.core.jobs import DecodedStep, JobKind, JobOutput, LoadModel, ModelLoaded
from studio.core.memory import MemoryOptions
from studio.core.output import check_output_dir
from studio.core.requests import MAX_SEED, StepInfo
from studio.core.speed import DEFAULT_SPEED
from studio.qimage import array_to_qimage, qimage_to_array, qimage_to_gray
from studio.qtcompat import emit
from studio.settings import Settings
from studio.worker import Worker

from . import library
from .branching import PendingBranch, why_no_branch
from .document import Document
from .jobs import JobBook, JobView, TrackedJob
from .params import MODES, Params
from .runplan import CROP_FIELDS, MODE_LABELS, RunPlan, crop_rect
from .staging import Candidate, Staging
from .timeline import VIEWS, StepTimeline

log = logging.getLogger(__name__)
MAX_CANVAS = 4096  # px on a side: what a request accepts
# The engine's states: starting the backend, loading a model (the engine thread is busy), ready, failed to start,
# lost (a started server stopped answering; it is checked again and becomes ready by itself).
ENGINE_STATES = ("loading", "busy", "ready", "failed", "lost")


class Session(QObject):
    params_changed = Signal(object)  # Params, when set from outside the panel (a PNG, settings)
    params_edited = Signal()  # any change of the parameters, from the panel or outside (the window saves them)
    jobs_changed = Signal()
    job_queued = Signal(int)
    job_cancelled = Signal(int)
    job_failed = Signal(int, str)
    running_changed = Signal(bool)
    progress = Signal(int, int, float)  # step, total, ETA seconds (-1 unknown)
    step_info = Signal(object)  # StepInfo of the running generation (stage and pass included)
    preview_changed = Signal(QImage)  # the live preview (small)
    result_image = Signal(str, QImage)  # a finished image and its path; "" when it could not be written
    current_image_changed = Signal(QImage)  # what the canvas shows
    timeline_changed = Signal(int)  # number of steps the timeline can scrub (0: none)
    timeline_image = Signal(int, QImage)  # step (1-based), its preview
    decoded = Signal(int, QImage)  # step (1-based), its full decode
    message = Signal(str, str)  # text, level: info / warning / attention (a warning shown in the banner) / error
    engine_state = Signal(str, str)  # one of ENGINE_STATES, and a message ("" or why it failed)
    capabilities_changed = Signal(object)  # BackendInfo, once the backend has started
    crop_changed = Signal(object)  # the "only masked" inpaint area (x, y, w, h) a run would use, or None
    live_overlay = Signal(object, object)  # QImage (ARGB, alpha = feathered mask) and its rect, or None, None
    live_canvas = Signal(QImage)  # an upscale forming: the output with its finished tiles in place
    branch_changed = Signal(str)  # "branch of x.png at step 8" while the next runs branch; "" when they do not

    def __init__(
        self,
        worker: Worker,
        settings: Settings,
        parent: QObject | None = None,
        model_override: str | None = None,
        output_dir: str | Path | None = None,
        backend_factory: Callable[[Settings], Any] | None = None,
    ):
        super().__init__(parent)
        self._worker = worker
        # Makes the backend the settings name (the composition root's): switching engines, and the fallback to
        # the local one when a server is not there.
        self._backend_factory = backend_factory
        self._fallen_back = False
        self.settings = settings
        self.params = Params.from_dict(settings.params)
        # --model is for this run only: the saved choice is put back when settings are stored.
        self._model_override = str(Path(model_override).expanduser().resolve()) if model_override else None
        self._saved_model = settings.params.get("model", "")
        if self._model_override:
            self.params.model = self._model_override
        self.output_dir: Path = (
            Path(output_dir).expanduser().resolve() if output_dir else settings.resolved_output_dir()
        )
        self.document = Document(self)
        self.results_as_layer = True  # a result lands as a new layer on top (False: it replaces the active layer)
        self.staging = Staging(self._apply_candidate, self.document, self)  # results wait here (studio.session.staging)
        self._regenerating: set[int] = set()  # Regenerate's jobs: their images are staged even with staging off
        self.timeline = StepTimeline(settings.preview_kind)
        if self.timeline.view not in self.info.preview_kinds:
            self.timeline.view = "x0"
        self._fit_to_backend(self.params)
        self.book = JobBook()
        self.last_seed: int | None = None
        self._engine_ready = False
        self._warm_enabled = False
        self._warm_model: str | None = None
        self._loaded_model: str | None = None  # the last model the backend loaded ("" = built-in)
        self._runs_done = 0  # finished runs: a warm-up that ends after one has nothing to announce
        self._unsaved_text: dict[int, str] = {}  # QImage.cacheKey() -> parameters, for images not on disk
        self._run_started = 0.0
        self._first_step: tuple[int, float] | None = None
        self._phases: dict[int, str] = {}  # job id -> what a run does before its first step ("loading model")
        self._last_info: StepInfo | None = None
        self.branch: PendingBranch | None = None  # Branch from here: the run and step the next runs continue

        self.document.image_changed.connect(lambda image: emit(self.current_image_changed, image))
        self.document.changed.connect(self._update_crop)
        self._crop: tuple[int, int, int, int] | None = None
        w = worker
        w.queued.connect(self._on_queued)
        w.queue_changed.connect(self._on_jobs)
        w.started.connect(self._on_started)
        w.step.connect(self._on_step)
        w.finished.connect(self._on_finished)
        w.cell_finished.connect(self._on_cell_finished)
        w.decoded.connect(self._on_decoded)
        w.model_loaded.connect(self._on_model_loaded)
        w.cancelled.connect(self._on_cancelled)
        w.failed.connect(self._on_failed)
        w.engine_ready.connect(self._on_engine_ready)
        w.engine_failed.connect(self._on_engine_failed)
        w.engine_lost.connect(self._on_engine_lost)
        w.engine_back.connect(self._on_engine_back)

    # -- what the backend can do --------------------------------------------------------------

    @property
    def info(self) -> BackendInfo:
        return self._worker.info()

    def _fit_to_backend(self, params: Params) -> bool:
        """Keep the params to what the backend offers (a server has no x4 latent upscaler); True if changed."""
        info, changed = self.info, False
        if params.mode not in info.modes and "txt2img" in info.modes:
            params.mode, changed = "txt2img", True
        if params.upscale_mode not in info.upscale_modes and info.upscale_modes:
            params.upscale_mode = "diffusion" if "diffusion" in info.upscale_modes else info.upscale_modes[0]
            changed = True
        return changed

    def _engine_state(self, state: str, text: str = "") -> None:
        assert state in ENGINE_STATES, state
        emit(self.engine_state, state, text)

    # -- parameters -------------------------------------------------------------------------

    def update_params(self, **changes: Any) -> None:
        """From the panel: no params_changed echo."""
        model_before = self.params.model
        for k, v in changes.items():
            if not hasattr(self.params, k):
                raise AttributeError(k)
            setattr(self.params, k, v)
        if self.params.model != model_before:
            self.warm_up()
        if CROP_FIELDS.intersection(changes):
            self._update_crop()
        emit(self.params_edited)

    def set_params(self, params: Params) -> None:
        model_before = self.params.model
        self._fit_to_backend(params)
        self.params = params
        if params.model != model_before:
            self.warm_up()
        emit(self.params_changed, params)
        self._update_crop()
        emit(self.params_edited)

    def set_mode(self, mode: str) -> None:
        """The panel's mode switch: txt2img, img2img, inpaint or upscale, where the backend offers it."""
        if mode in MODES and mode in self.info.modes and mode != self.params.mode:
            self.update_params(mode=mode)
            emit(self.params_changed, self.params)

    def random_seed(self) -> None:
        self.update_params(seed=-1)
        emit(self.params_changed, self.params)

    def reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.update_params(seed=self.last_seed)
            emit(self.params_changed, self.params)

    @property
    def preview_kind(self) -> str:
        return self.timeline.view

    def speed(self) -> str:
        """The speed mode the next run asks for: the panel's choice, else the backend's default for its device (a
        backend without speed modes: the request's default, which it ignores)."""
        info = self.info
        if self.params.speed in info.speeds:
            return self.params.speed
        return info.default_speed if info.default_speed in info.speeds else DEFAULT_SPEED

    def set_preview_kind(self, kind: str) -> None:
        if kind in VIEWS and kind in self.info.preview_kinds and kind != self.timeline.view:
            before = self.timeline_length()
            self.timeline.view = kind
            self.settings.preview_kind = kind
            if self.timeline_length() != before:
                emit(self.timeline_changed, self.timeline_length())
            elif self.timeline.selected and not self.is_running():
                self.select_step(self.timeline.selected)

    # -- actions ------------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Start the backend in the background (torch, or a connection) and load the chosen model."""
        if not self._engine_ready:  # a run queued before this may have started it already
            self._engine_state("loading")
        self._worker.start(preload=True)
        self.enable_warm_up()

    def generate(self) -> int | None:
        """Queue a generation from the current parameters. None (and a message) if invalid."""
        try:
            request = self.params.to_request(self.preview_kind)
            if request.mode != "upscale":
                request = request.replace(speed=self.speed())
            region = self.refine_region(request.mode)
            if request.mode != "txt2img":
                request = self._with_canvas(request, region)
            elif self.branch is not None:
                request = request.replace(branch=self.branch.spec())
            request = self._with_controls(request, region)
            request.validate()
            out_dir = check_output_dir(self.output_dir)  # before the run: it is never wasted on a folder taking no file
        except EngineError as exc:
            emit(self.message, describe_error(exc), "error")
            return None
        return self._submit(request, out_dir, region)

    def regenerate(self) -> int | None:
        """The staging bar's Regenerate: the request of the candidate shown, sent again with a new seed; its images
        are staged beside the others. None (and a message) when there is nothing to send again."""
        chosen = self.staging.current()
        if chosen is None or chosen.request is None:
            emit(self.message, "Nothing to regenerate: this candidate came from a project file, generate again", "error")
            return None
        try:
            request = chosen.request.replace(seed=random.randrange(MAX_SEED + 1))
            request.validate()
            out_dir = check_output_dir(self.output_dir)
        except EngineError as exc:
            emit(self.message, describe_error(exc), "error")
            return None
        job_id = self._submit(request, out_dir, chosen.region)
        self._regenerating.add(job_id)
        return job_id

    def _submit(self, request, out_dir: Path, region: tuple[tuple[int, int, int, int], int] | None = None) -> int:
        label = " ".join(request.prompt.split()) or "(no prompt)"
        if request.mode != "txt2img":
            label = f"{MODE_LABELS[request.mode].lower()}: {label}"
        elif request.branch is not None:
            label = f"branch at step {request.branch.step}: {label}"
        self._worker.set_memory(MemoryOptions(self.settings.attention_slicing, self.settings.vae_tiling,
                                              self.settings.offload))  # fmt: skip
        keep, controls = self.settings.keep_latents, self.settings.save_control_images
        job_id = self._worker.submit(request, save=lambda result: library.save_result(result, out_dir, keep, controls),
                                     label=label)  # fmt: skip
        stepless = request.mode == "upscale" and request.upscale.method in ("resize", "model")  # no sampler
        self._phases[job_id] = ("preparing" if stepless or self._loaded_model == (request.model or "")
                                else "loading model")  # fmt: skip
        hires = request.hires.steps or request.steps if request.mode == "txt2img" and request.hires.runs() else 0
        plan = RunPlan.for_request(request)
        if region is not None:  # a refined region: its previews form over the selection
            plan = RunPlan.for_region(request.mode, *region) if request.mode == "img2img" else plan
            plan.rect = region[0]
        job = self.book.add(TrackedJob(job_id, JobKind.GENERATE, label, total=0 if stepless else request.steps + hires,
                                       width=request.width or 0, height=request.height or 0,
                                       plan=plan, region=region))  # fmt: skip
        if request.mode == "upscale":
            job.width, job.height = request.upscale_size()
        elif request.mode != "txt2img":  # the run keeps the canvas size
            job.height, job.width = request.input_image().shape[:2]
        self._on_jobs()
        return job_id

    def generate_grid(self, axes: list[tuple[str, str]], stacked: bool = False) -> int | None:
        """Queue a comparison grid (A1111's X/Y/Z plot) of the current parameters: `axes` are (kind, values) for
        X, Y, Z ((kind "" or values "": no such axis). One job; every cell lands in the gallery as it finishes,
        then the labelled grid on the canvas. None (and one line) when an axis or a cell is invalid."""
        from studio.core import grid

        try:
            request = self.params.to_request(self.preview_kind)
            if request.mode == "upscale":
                raise RequestError("A grid runs text to image, image to image or inpaint: not an upscale")
            request = request.replace(speed=self.speed())
            if request.mode != "txt2img":
                request = self._with_canvas(request)
            elif self.branch is not None:  # the cells are branches (a "Branch step" axis moves their step)
                request = request.replace(branch=self.branch.spec())
            request = self._with_controls(request)
            parsed = [grid.parse_axis(kind, values) for kind, values in axes if kind.strip() and values.strip()]
            planned = grid.plan(request, parsed, stacked=stacked)
            out_dir = check_output_dir(self.output_dir)
        except EngineError as exc:
            emit(self.message, describe_error(exc), "error")
            return None
        nx, ny, nz = planned.shape
        size = "x".join(str(n) for n in (nx, ny, nz)[: len(parsed)])
        label = f"grid {size}: " + (" ".join(request.prompt.split()) or "(no prompt)")
        self._worker.set_memory(MemoryOptions(self.settings.attention_slicing, self.settings.vae_tiling,
                                              self.settings.offload))  # fmt: skip
        job_id = self._worker.submit(planned, save=lambda result: library.save_result(result, out_dir), label=label)
        self._phases[job_id] = "preparing" if self._loaded_model == (request.model or "") else "loading model"
        self.book.add(TrackedJob(job_id, JobKind.GRID, label, total=planned.cells[0].request.steps,
                                 width=request.width or 0, height=request.height or 0))  # fmt: skip
        self._on_jobs()
        return job_id

    def _on_cell_finished(self, job_id: int, out: JobOutput) -> None:
        """A grid's cell: into the gallery (saved already); the canvas waits for the grid."""
        for i, a in enumerate(out.result.images):
            image = array_to_qimage(np.asarray(a))
            path = out.paths[i] if i < len(out.paths) else None
            if path is None:
                self._unsaved_text[image.cacheKey()] = library.parameters_text(out.result, i)
            emit(self.result_image, str(path) if path else "", image)

    def inpaint(self) -> int | None:
        """The Inpaint button: switch to inpaint mode and run it on the canvas and its mask."""
        self.set_mode("inpaint")
        return self.generate()

    def refine_region(self, mode: str | None = None) -> tuple[tuple[int, int, int, int], int] | None:
        """The selection an Image or Upscale run refines in place, and its feather (px); None: the whole image."""
        p, selection = self.params, self.document.selection
        if selection is None or (mode or p.mode) not in ("img2img", "upscale") or not p.region_in_place:
            return None
        return selection, max(0, int(p.region_feather))

    def _with_canvas(self, request, region=None):
        doc = self.document
        what = MODE_LABELS[request.mode]
        if not doc.has_image():
            raise RequestError(f"{what} works on the canvas: open, paste or generate an image first")
        mask = None
        if request.mode == "inpaint":
            if not doc.has_mask():
                raise RequestError("Paint a mask over the area to repaint first (the brush: B)")
            mask = doc.mask
        image = doc.image_array()
        if image is not None and request.mode == "img2img" and region is not None:
            from .region import crop_for_run  # the selection at a working size near the model's native side

            image = crop_for_run(image, region[0], self.native_side())
            return request.replace(init_image=image, width=image.shape[1], height=image.shape[0])
        if image is not None and request.mode == "upscale" and doc.selection is not None:
            x, y, w, h = doc.selection  # a region: upscaled, then pasted back in place (region) or the new canvas
            image = image[y : y + h, x : x + w]
        return request.replace(init_image=image, mask=mask)

    def _with_controls(self, request, region=None):
        """The visible control layers become the request's ControlNets, in every mode (the flattened picture stays
        the init image); a refined region, or an upscale of a selected region, takes that region of them."""
        doc = self.document
        if not doc.has_image():
            return request
        crop = region[0] if region is not None else doc.selection if request.mode == "upscale" else None
        return request.replace(controls=doc.control_specs(crop))

    def inpaint_crop(self) -> tuple[int, int, int, int] | None:
        """The rectangle an "only masked" inpaint would work on (image px), or None."""
        return self._crop

    def _update_crop(self, *_: Any) -> None:
        crop = None
        p, doc = self.params, self.document
        if p.mode == "inpaint" and p.inpaint_area == "masked" and doc.mask is not None and not doc.in_stroke():
            crop = crop_rect(doc.mask, p.mask_blur, p.inpaint_padding, doc.size(), (p.width or 1, p.height or 1))
        if crop != self._crop:
            self._crop = crop
            emit(self.crop_changed, crop)

    def enable_warm_up(self) -> None:
        """From now on, load the chosen model in the background (once the engine is wanted)."""
        self._warm_enabled = True
        self.warm_up()

    def warm_up(self) -> int | None:
        """Load the chosen model on the engine thread while the artist writes the prompt."""
        if not self._warm_enabled or self._warm_model == self.params.model:
            return None
        self._warm_model = model = self.params.model
        self._runs_at_warm_up = self._runs_done
        job_id = self._worker.submit(LoadModel(model or None), label="load model")
        self.book.add(TrackedJob(job_id, JobKind.LOAD_MODEL, "load model"))
        return job_id

    def cancel(self) -> bool:
        """Esc / the Cancel button: stop the running job (queued ones stay)."""
        jobs = [j for j in self._worker.jobs() if j.kind is not JobKind.LOAD_MODEL]
        if not jobs:
            return False
        return self._worker.cancel(jobs[0].id)

    def cancel_job(self, job_id: int) -> bool:
        return self._worker.cancel(job_id)

    def cancel_all(self) -> None:
        self._worker.cancel_all()

    def jobs(self) -> list[JobView]:
        return self.book.views(self._worker.jobs())

    def running_mode(self) -> str:
        """The mode of the generation on screen ("" when none runs)."""
        job = self.book.get(self.book.running) if self.book.running is not None else None
        return job.plan.mode if job is not None and job.plan is not None else ""

    def previews_in_place(self) -> bool:
        """The running job's previews go onto the canvas image where it works (an inpaint's or a region's area, an
        upscale's tiles), not over the whole canvas."""
        job = self.book.get(self.book.running) if self.book.running is not None else None
        plan = job.plan if job is not None else None
        return plan is not None and (plan.mode in ("inpaint", "upscale") or plan.rect is not None)

    def running_size(self) -> tuple[int, int]:
        """Width and height the running job asked for; (0, 0) for the model's native size or no job."""
        job = self.book.get(self.book.running) if self.book.running is not None else None
        return (job.width, job.height) if job is not None else (0, 0)

    def is_running(self) -> bool:
        return self.book.running is not None

    # -- timeline -----------------------------------------------------------------------------

    def timeline_length(self) -> int:
        return self.timeline.length()

    def timeline_label(self, step: int) -> str:
        return self.timeline.label(step)

    def select_step(self, step: int) -> None:
        self.timeline.selected = step
        arr = self.timeline.preview(step)
        if arr is not None:
            emit(self.timeline_image, step, array_to_qimage(arr))

    def why_no_branch(self, step: int) -> str:
        """Why the timeline's step cannot be branched from; "" when it can."""
        if self.is_running():
            return "Wait for the run to finish"
        return why_no_branch(self.timeline.output, step, remote=self.info.remote_files)

    def branch_from(self, step: int) -> bool:
        """Branch from here: the panel gets the run's parameters, and the next runs continue its step `step` with
        what the artist changes (prompt, CFG, sampler, schedule, seed, steps), until stop_branching."""
        why = self.why_no_branch(step)
        if why or self.timeline.output is None:
            emit(self.message, why, "warning")
            return False
        self.branch = PendingBranch(self.timeline.output, step)
        p = self.params.with_fields(self.branch.panel_fields())
        p.mode, p.batch, p.hires_fix = "txt2img", 1, False
        self.set_params(p)
        emit(self.branch_changed, self.branch.label())
        emit(self.message, f"Next runs: {self.branch.label()}. Change the prompt, CFG, sampler, seed or steps and "
                           "Generate", "info")  # fmt: skip
        return True

    def stop_branching(self) -> None:
        if self.branch is not None:
            self.branch = None
            emit(self.branch_changed, "")

    def can_decode(self) -> bool:
        return self.info.decodes_steps and self.timeline.has_latents()

    def decode_tooltip(self) -> str:
        """Why 'Decode this step' is off, or what it does."""
        return self.info.why_no_decode() or "Fully decode the selected step with the VAE and show it on the canvas"

    def decode_step(self, step: int) -> int | None:
        """Full decode of the selected step of the last run, as a job on the engine thread."""
        if not self.info.decodes_steps:
            emit(self.message, self.info.why_no_decode(), "warning")
            return None
        request = self.timeline.decode_request(step)
        if isinstance(request, str):
            emit(self.message, request, "warning")
            return None
        job_id = self._worker.submit(request, label=f"decode {step}")
        self.book.add(TrackedJob(job_id, JobKind.DECODE_STEP, f"decode {step}"))
        emit(self.message, f"Decoding step {step}…", "info")
        return job_id

    # -- images -------------------------------------------------------------------------------

    @property
    def current_image(self) -> QImage | None:
        return self.document.image

    @property
    def current_path(self) -> Path | None:
        return self.document.path

    @property
    def current_caption(self) -> str:
        return self.document.caption

    def show_image(self, image: QImage, path: Path | None = None, caption: str = "") -> None:
        self.document.set_image(image, path, caption)

    def show_gallery_image(self, image: QImage, path: Path | None = None) -> None:
        """A gallery image on the canvas, undoably: undo brings back the image before it and its mask (a mask of
        another size is dropped from the canvas, kept in the history). Browsing the gallery is one entry."""
        if path is not None and path == self.document.path:
            return  # already shown: no entry, the mask stays
        self.document.show_layer_image(image, path, "Show gallery image")  # a layer on top, as paste and open

    def save_current_as(self, dest: Path | str) -> Path:
        """Save the image on the canvas as a PNG that keeps its generation parameters.

        Raises OSError or EngineError with a readable message.
        """
        image, src = self.document.image, self.document.path
        if image is None or image.isNull():
            raise OSError("there is no image to save yet")
        dest = Path(dest)
        if dest.suffix.lower() != ".png":
            dest = dest.with_suffix(".png")
        if src is not None and src.is_file() and src.suffix.lower() == ".png":
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)  # byte for byte: the stored parameters stay
            return dest
        text = self._unsaved_text.get(image.cacheKey())
        if text is not None:
            from studio.core.output import save_image

            return save_image(qimage_to_array(image), dest, text)
        if not image.save(str(dest), "PNG"):  # type: ignore[call-overload]  # the stubs say bytes; PySide6 takes str
            raise OSError(f"{dest.name} could not be written")
        return dest

    # -- the canvas: an image to work on, its mask, undo ----------------------------------------

    def use_as_input(self, image: QImage, path: Path | None = None, label: str = "Use as input",
                     as_layer: bool = False) -> None:  # fmt: skip
        """Put an image on the canvas to work on (a gallery image, a pasted one), undoably; as_layer: as a new layer
        over what is there (the canvas keeps its size)."""
        if image is None or image.isNull():
            emit(self.message, "There is no image to use", "warning")
            return
        if as_layer:
            self.document.add_image_layer(image, path, "" if path else "Pasted", label)
        else:
            self.document.set_image(image, path, caption="" if path else "pasted", record=label)
        if self.params.mode == "txt2img":
            self.set_mode("img2img")

    def paste_image(self, image: QImage | None) -> bool:
        if image is None or image.isNull():
            emit(self.message, "The clipboard holds no image", "warning")
            return False
        layered = self.document.has_image()  # pasted as a new layer; into an empty document it sets the size
        if image.hasAlphaChannel() and layered:
            self.document.add_image_layer(image, None, "Pasted", "Paste image")
        else:
            self.use_as_input(image.convertToFormat(QImage.Format.Format_RGB888), None, "Paste image", as_layer=True)
        where = "as a new layer" if layered else "onto the canvas"
        emit(self.message, f"Pasted a {image.width()}×{image.height()} image {where}", "info")
        return True

    def new_canvas(self, width: int, height: int, color: tuple[int, int, int] = (255, 255, 255)) -> bool:
        if not (8 <= width <= MAX_CANVAS and 8 <= height <= MAX_CANVAS):
            emit(self.message, f"A canvas must be 8 to {MAX_CANVAS} pixels on a side, not {width}×{height}", "error")
            return False
        image = QImage(width, height, QImage.Format.Format_RGB888)
        image.fill(QColor(*color))
        self.document.set_image(image, None, caption="new canvas", record="New canvas")
        emit(self.message, f"New {width}×{height} canvas", "info")
        return True

    def extend_canvas(self, left: int, top: int, right: int, bottom: int, overlap: int = 16) -> bool:
        """Outpainting: a larger canvas whose new area is the mask (filled, blended into the old edge)."""
        from studio.core.inpaint import outpaint_canvas

        arr = self.document.image_array()
        if arr is None:
            emit(self.message, "Open, paste or generate an image before extending it", "error")
            return False
        try:
            image, mask = outpaint_canvas(arr, left, top, right, bottom, overlap=overlap)
        except (EngineError, ValueError) as exc:
            emit(self.message, describe_error(exc), "error")
            return False
        h, w = image.shape[:2]
        if self.document.single_layer():
            self.document.replace(array_to_qimage(image), mask, "Extend canvas", caption="extended")
        else:  # every layer grows (transparent), the fill becomes a layer of its own at the bottom
            self.document.extend_layers(left, top, image, mask)
        self.update_params(mode="inpaint", inpaint_area="whole")
        emit(self.params_changed, self.params)
        emit(self.message, f"Canvas extended to {w}×{h}: the new area is masked, ready to inpaint", "info")
        return True

    def undo(self) -> None:
        label = self.document.undo()
        emit(self.message, f"Undid: {label}" if label else "Nothing to undo", "info")

    def redo(self) -> None:
        label = self.document.redo()
        emit(self.message, f"Redid: {label}" if label else "Nothing to redo", "info")

    def save_mask(self, dest: Path | str) -> Path | None:
        """The mask as a greyscale PNG (white = repaint), written atomically."""
        mask = self.document.mask
        if mask is None:
            emit(self.message, "There is no mask to save: paint one first", "warning")
            return None
        dest = Path(dest)
        if dest.suffix.lower() != ".png":
            dest = dest.with_suffix(".png")
        try:
            library.write_png_atomic(mask, dest)
        except OSError as exc:
            emit(self.message, f"Could not save the mask: {describe_error(exc)}", "error")
            return None
        emit(self.message, f"Mask saved to {dest}", "info")
        return dest

    def load_mask(self, path: Path | str) -> bool:
        """A mask PNG (white = repaint; its luminance). Another size is scaled to the image, and said."""
        path = Path(path)
        if not self.document.has_image():
            emit(self.message, "Open or paste the image before its mask", "error")
            return False
        image = self._read_image_file(path)
        if image is None:
            return False
        w, h = self.document.size()
        note = ""
        if (image.width(), image.height()) != (w, h):
            note = f" (it was {image.width()}×{image.height()}: scaled to the image's {w}×{h})"
            image = image.scaled(w, h, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
        mask = qimage_to_gray(image)
        if image.hasAlphaChannel():  # a transparent pixel is not painted (as the CLI reads a mask)
            alpha = qimage_to_array(image, alpha=True)[:, :, 3].astype(np.uint32)
            mask = ((mask * alpha + 127) // 255).astype(np.uint8)
        self.document.set_mask(mask, "Load mask")
        emit(self.message, f"Mask loaded from {path.name}{note}", "info")
        return True

    def open_image(self, path: Path | str) -> bool:
        """Show a PNG and fill the panel with its stored parameters (ours or A1111's)."""
        path = Path(path)
        image = self._read_image_file(path)
        if image is None:
            return False
        self.document.add_image_layer(image, path, label="Open image")  # a layer; the first image sets the size
        refused: list = []
        try:
            found = library.read_png_fields(path, refused)
        except Exception as exc:  # noqa: BLE001 - a broken chunk is a message, not a crash
            log.exception("reading parameters of %s", path)
            emit(self.message, f"Could not read the parameters of {path.name}: {describe_error(exc)}", "warning")
            return True
        if not found:
            emit(self.message, f"Opened {path.name}: it stores no generation parameters", "info")
            return True
        refused_lines = self.params.refused_lines(refused)  # with the values kept: before they change
        model, model_line = self._image_model(found)
        refused_lines += [model_line] if model_line else []
        self.apply_fields(found)
        if model is not None and model != self.params.model:
            p = self.params.copy()
            p.model = model
            self.set_params(p)
        from studio.core.metadata import branch_info

        level = "attention" if refused_lines else "info"
        refused_lines += self._restore_controls(path)
        if (binfo := branch_info(path)) is not None:  # a branch: its parent and step, in words
            refused_lines.insert(0, f"it is a {binfo.label()} ({', '.join(binfo.changes) or 'nothing'} changed)")
        emit(self.message, "; ".join([f"Parameters loaded from {path.name}", *refused_lines]),
             level)
        return True

    def _restore_controls(self, path: Path) -> list[str]:
        """The image's ControlNets (A1111's "ControlNet N" keys) as control layers, their images from the files
        saved beside it (<name>.control<N>.png, "Save with images"); a line for each that cannot come back."""
        from studio.core.metadata import control_fields, read_parameters

        from .controls import ControlProps

        try:
            found = control_fields(read_parameters(path) or "")
        except ValueError:
            return []
        choices = self.addon_choices("controlnet")  # a folder scan: once
        models = {**{Path(fid).stem.lower(): fid for _label, fid in choices},
                  **{label.lower(): fid for label, fid in choices}}  # fmt: skip
        lines = []
        for i, c in enumerate(found):
            name = str(c["model"])
            side = path.with_name(f"{path.stem}.control{i}.png")
            image = QImage(str(side)) if side.is_file() else QImage()
            if image.isNull():
                lines.append(f"ControlNet {i} ({name}): its control image is not beside the PNG (Save with images)")
                continue
            w, h = self.document.size()
            if (image.width(), image.height()) != (w, h):
                image = image.scaled(w, h, Qt.AspectRatioMode.IgnoreAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation)  # fmt: skip
            model = models.get(name.lower(), "")
            if not model:
                lines.append(f"ControlNet {i}: {name} is not in your model folders (choose a model for the layer)")
            weight, start, end = (float(c[k]) for k in ("weight", "start", "end"))  # type: ignore[arg-type]
            props = ControlProps(str(c["module"]), model, weight, start, end, str(c["mode"]))
            self.document.add_control_layer(props, image=qimage_to_array(image)[..., :3])
        return lines

    def _image_model(self, found: dict[str, Any]) -> tuple[str | None, str]:
        """The local model an image's "Model" names (by name or A1111 hash; "" the built-in), or None and the
        line that says it is missing. A server's files are matched by apply_fields."""
        name = str(found.get("model_name") or "").strip()
        if not name or self.info.remote_files:
            return None, ""
        current = self.params.model
        if current and name.lower() in (Path(current).stem.lower(), Path(current).name.lower()):
            return current, ""  # the model in use (it may live outside the model folders: --model)
        digest = str(found.get("model_hash") or "").strip()
        model = library.find_model(self.settings.model_folders, name, digest)
        if model is not None:
            return model, ""
        kept = Path(current).stem if current else "the built-in model"
        made = f"{name} (hash {digest})" if digest else name
        return None, f"The image was made with {made}, which is not in your model folders: kept {kept}"

    def _read_image_file(self, path: Path) -> QImage | None:
        """The image file at `path` (Qt reads 16-bit, CMYK and palette files right), or None after one message:
        unreadable, or past the largest size the studio takes (said from its header, before decoding)."""
        from studio.core.requests import MAX_UPSCALE_PIXELS, MAX_UPSCALE_SIDE

        reader = QImageReader(str(path))
        size = reader.size()
        w, h = size.width(), size.height()
        if size.isValid() and (max(w, h) > MAX_UPSCALE_SIDE or w * h > MAX_UPSCALE_PIXELS):
            emit(self.message, f"Could not open {path.name}: {w}×{h} is too large (at most {MAX_UPSCALE_SIDE} px a side)",
                 "error")  # fmt: skip
            return None
        image = reader.read()
        if image.isNull():
            emit(self.message, f"Could not open {path.name}: not an image Latent Studio can read", "error")
            return None
        return image

    def apply_fields(self, found: dict[str, Any]) -> None:
        params = self.params.with_fields(found)
        if self.info.remote_files:  # the server's model and VAE files, by the names the image records
            for name, value in library.server_names(found, self.info).items():
                setattr(params, name, value)
        self.set_params(params)

    def output_images(self, limit: int = 400) -> list[Path]:
        return library.output_images(self.output_dir, limit)

    def native_side(self) -> int:
        """The chosen model's native side in px (0 when unknown), read from its files, not loaded."""
        return library.native_side(self.params.model)

    def model_choices(self) -> list[tuple[str, str]]:
        info = self.info
        if info.remote_files:  # the server's checkpoints; "" = its first one
            first = info.models[0][1] if info.models else "none on the server"
            return [(f"Server default ({first})", ""), *((label, mid) for mid, label in info.models)]
        latent = self.params.mode == "upscale" and self.params.upscale_mode == "latent"
        return library.model_choices(self.settings.model_folders, self.params.model, latent_upscale=latent)

    def addon_choices(self, kind: str) -> list[tuple[str, str]]:
        """(label, id) of the "vae", "lora", "embedding" or "controlnet" files: the model folders', or the server's."""
        info = self.info
        if info.remote_files:
            files = {"vae": info.vaes, "lora": info.loras, "embedding": info.embeddings,
                     "controlnet": info.controlnets}.get(kind, ())  # fmt: skip
            return [(label, fid) for fid, label in files]
        found = library.addon_choices(self.settings.model_folders, kind)
        return library.controlnets_for(found, self.params.model) if kind == "controlnet" else found

    # -- engines ------------------------------------------------------------------------------

    def switch_engine(self, backend: str, url: str = "", token: str | None = None) -> bool:
        """Use the local engine or a ComfyUI server from the next job on (the settings keep the choice)."""
        if self._backend_factory is None:
            emit(self.message, "This window cannot switch engines", "error")
            return False
        self.settings.backend = backend
        if url:
            self.settings.server_url = url
        if token is not None:
            self.settings.server_token = token
        self._fallen_back = False
        self._engine_ready = False
        self._warm_model = None
        self._engine_state("loading")
        self._worker.switch_backend(self._backend_factory(self.settings))
        self._worker.start(preload=True)
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    def turbo_cache_usage(self) -> int:
        """Bytes of converted U-Nets and compiled blobs on disk (this machine's turbo cache)."""
        from studio.core.turbocache import turbo_cache_usage

        return turbo_cache_usage()

    def clear_turbo_cache(self) -> int | None:
        """Remove the turbo cache; the bytes freed, or None (with a message) while a run may be converting."""
        from studio.core.turbocache import clear_turbo_cache, format_size

        if self.is_running():
            emit(self.message, "Wait for the run to end before clearing the turbo cache", "warning")
            return None
        freed = clear_turbo_cache()
        emit(self.message, f"Cleared the turbo cache ({format_size(freed)}): the next turbo run converts again", "info")
        return freed

    def store_settings(self) -> None:
        self.settings.params = self.params.to_dict()
        if self._model_override and self.params.model == self._model_override:
            self.settings.params["model"] = self._saved_model  # --model overrides this run only
        self.settings.preview_kind = self.preview_kind

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        self.store_settings()
        return self._worker.shutdown(timeout)

    # -- worker signals ------------------------------------------------------------------------

    def _on_jobs(self, *_: Any) -> None:
        emit(self.jobs_changed)

    def _on_queued(self, job_id: int) -> None:
        emit(self.job_queued, job_id)
        emit(self.jobs_changed)

    def _on_engine_ready(self, info: BackendInfo) -> None:
        self._engine_ready = True
        if info.remote_files and self.params.model and self.params.model not in {m for m, _ in info.models}:
            self.params.model = ""  # a local file the server does not have: its default model instead
        if info.remote_files and self.params.vae and self.params.vae not in {v for v, _ in info.vaes}:
            self.params.vae = ""
        if not info.remote_files and self.params.model and not Path(self.params.model).exists():
            self.params.model = ""  # a server's file name, back on this machine: the built-in model
        if self.preview_kind not in info.preview_kinds:  # a server sends estimates only
            self.set_preview_kind("x0")
        refit = self._fit_to_backend(self.params)
        emit(self.capabilities_changed, info)
        if refit:
            emit(self.params_changed, self.params)
        self._engine_state("ready")
        if info.notice:
            emit(self.message, info.notice, "warning")
        self.warm_up()

    def _on_engine_failed(self, text: str) -> None:
        if self.settings.backend != "local" and self._backend_factory is not None and not self._fallen_back:
            # A server that is not there: say so once and keep working on this machine.
            self._fallen_back = True
            emit(self.message, f"{text}. Using the local engine instead", "error")
            local = dataclasses.replace(self.settings, backend="local")
            self._worker.switch_backend(self._backend_factory(local))
            return
        self._engine_state("failed", text)
        emit(self.message, text, "error")

    def _on_engine_lost(self, text: str) -> None:
        self._engine_state("lost", text)

    def _on_engine_back(self) -> None:
        self._engine_state("ready")

    def _on_started(self, job_id: int) -> None:
        kind = self.book.kind(job_id)
        if kind is JobKind.LOAD_MODEL:
            self._engine_state("busy", "loading the model")
        elif kind in (JobKind.GENERATE, JobKind.GRID):
            self._start_run(job_id)

    def _start_run(self, job_id: int) -> None:
        job = self.book.get(job_id)
        plan = job.plan if job is not None else None
        if plan is not None and job is not None and plan.mode == "upscale":
            plan.start_canvas(job.width, job.height)  # the input, resized: tiles form over it
            self._show_upscale(plan)
        self.book.running = job_id
        self._run_started = time.monotonic()
        self._first_step = None
        self._last_info = None
        self.timeline.reset()
        emit(self.timeline_changed, 0)
        emit(self.running_changed, True)
        emit(self.progress, 0, max(1, job.total) if job else 0, -1.0)
        # A phase until the first step ends (a model load, the prompt, a large first step), not "step 0/20"
        emit(self.step_info, StepInfo(0, job.total if job else 0, 0.0, stage=self._phases.pop(job_id, "preparing")))
        emit(self.message, f"Generating: {job.label if job else ''}", "info")
        emit(self.jobs_changed)

    def _on_step(self, job_id: int, info: StepInfo) -> None:
        job = self.book.get(job_id)
        if job is None or job_id != self.book.running:
            return
        self._last_info = info
        # a pass without steps (an upscaler model's tiles) counts its own parts
        step, total = (info.part, info.parts) if not info.total and info.parts else (info.step, info.total)
        job.step, job.total = step, total
        emit(self.progress, step, total, self._eta(step, total, info.elapsed))
        emit(self.step_info, info)
        if info.preview is not None:
            arr = np.asarray(info.preview)
            self.timeline.add_live(info.step, arr)
            emit(self.preview_changed, array_to_qimage(arr))
            plan = job.plan
            if plan is not None and plan.mode == "upscale" and plan.canvas is not None:
                plan.paint(arr, info.region)
                self._show_upscale(plan)
            elif plan is not None and plan.rect is not None:  # an inpaint's area, or a refined region
                overlay = plan.overlay(arr)
                if overlay is not None:
                    emit(self.live_overlay, overlay, plan.rect)
        emit(self.jobs_changed)

    def _show_upscale(self, plan: RunPlan) -> None:
        """An upscale forming: in place of a refined region over the canvas image, else as the canvas."""
        if plan.canvas is not None:
            if plan.rect is not None:
                emit(self.live_overlay, plan.canvas, plan.rect)
            else:
                emit(self.live_canvas, plan.canvas)

    def _eta(self, step: int, total: int, elapsed: float) -> float:
        """Seconds left, from the pace since the first step (the first one carries the prompt
        encoding and any model load, and would inflate the estimate)."""
        if step <= 0:
            return -1.0
        if self._first_step is None or step <= self._first_step[0]:
            self._first_step = (step, elapsed)
            return elapsed / step * (total - step)
        s0, e0 = self._first_step
        return (elapsed - e0) / (step - s0) * (total - step)

    def apply_result(self, image: QImage, path: Path | None, label: str, request: Any = None) -> None:
        """A result onto the document, one undo entry: as a new layer or in place of the active one (the artist's
        choice). The one place a result reaches the document, staged (Accept) or not; `request` made it."""
        init = getattr(request, "init_image", None)  # an upscale of the whole canvas (not a region) scales the stack
        whole = init is not None and (init.shape[1], init.shape[0]) == self.document.size()
        scaled = getattr(request, "mode", "") == "upscale" and whole and self.document.scales_to(image)
        land = self.document.land_scaled if scaled else self.document.land_result
        land(image, path, label, as_layer=self.results_as_layer)

    def _apply_candidate(self, c: Candidate) -> None:
        self.apply_result(c.image, c.path, c.label, c.request)

    def _end_run(self, job_id: int) -> None:
        self._regenerating.discard(job_id)
        was_running = job_id == self.book.running
        job = self.book.pop(job_id)
        self._phases.pop(job_id, None)  # a job dropped from the queue never started
        if was_running:
            if job is not None and job.plan is not None and job.plan.rect is not None:
                emit(self.live_overlay, None, None)
            emit(self.running_changed, False)
        emit(self.jobs_changed)

    def _on_finished(self, job_id: int, out: JobOutput) -> None:
        result = out.result
        self.timeline.finish(out)
        if result.seeds:
            self.last_seed = int(result.seeds[0])
        images = [array_to_qimage(np.asarray(a)) for a in result.images]
        for i, image in enumerate(images):
            path = out.paths[i] if i < len(out.paths) else None
            if path is None:  # not on disk: keep its parameters for Save as
                self._unsaved_text[image.cacheKey()] = library.parameters_text(result, i)
            emit(self.result_image, str(path) if path else "", image)
        if images:
            label = MODE_LABELS.get(result.request.mode, "Result")
            landed, kept = self._in_place(job_id, images, list(out.paths))  # a region: pasted back at its place
            paths = [kept[i] if i < len(kept) else None for i in range(len(landed))]
            if self.staging.enabled or job_id in self._regenerating:  # candidates over the canvas, the artist picks
                seeds = [int(s) for s in result.seeds] if result.seeds else []
                region = job.region if (job := self.book.get(job_id)) is not None else None
                self.staging.add(Candidate(img, paths[i], label, seeds[i] if i < len(seeds) else None, result.request,
                                           region) for i, img in enumerate(landed))  # fmt: skip
            else:
                self.apply_result(landed[0], paths[0], label, result.request)
        n = self.timeline_length()
        job = self.book.get(job_id)
        last = self._last_info
        if last is not None and not last.total and last.parts:
            emit(self.step_info, last)  # an upscaler model's tiles, all done: no steps to complete
        elif job is None or job.total:  # a resize has no steps to show
            total = result.request.steps
            if result.request.mode == "txt2img" and result.request.hires.runs():  # both passes
                total += result.request.hires.steps or total
            emit(self.progress, total, total, 0.0)
        self._end_run(job_id)
        emit(self.timeline_changed, n)
        if n:
            self.select_step(n)
        secs = result.timings.get("total") or (time.monotonic() - self._run_started)
        if out.save_error:
            emit(self.message, f"Not saved ({out.save_error}): use Save as to keep it", "error")
            return
        where = f" → {out.paths[0].parent}" if out.paths else ""
        seed = f", seed {self.last_seed}" if result.seeds else ""  # a resize drew no noise
        notes = "".join(f". {n}" for n in result.notes)  # e.g. "Deep cache off: 10 steps is below 15"
        emit(self.message, f"Done in {secs:.1f} s{seed}{where}{notes}", "info")
        if result.notice:  # the run went otherwise than asked (fast ran as exact on this CPU): the banner says why
            emit(self.message, result.notice, "attention")
        self._runs_done += 1

    def _in_place(self, job_id: int, images: list[QImage], paths: list) -> tuple[list[QImage], list]:
        """A region refine's results pasted into the document at the selection (feathered; every pixel outside it
        the document's as it is now), each the document's size; other results as they came. The file on disk is the
        region's, so a pasted image has no path (Save as writes the canvas, not the region)."""
        job = self.book.get(job_id)
        if job is None or job.region is None:
            return images, paths
        from .region import paste_back

        (x, y, w, h), feather = job.region
        doc = self.document.image_array()
        if doc is None or x + w > doc.shape[1] or y + h > doc.shape[0]:
            emit(self.message, "The canvas changed size during the run: the region's result is shown on its own",
                 "warning")  # fmt: skip
            return images, paths
        return [array_to_qimage(paste_back(doc, qimage_to_array(im)[..., :3], (x, y, w, h), feather))
                for im in images], []  # fmt: skip

    def _on_decoded(self, job_id: int, out: DecodedStep) -> None:
        self.book.pop(job_id)
        try:
            image = array_to_qimage(np.asarray(out.image, dtype=np.uint8))
        except (TypeError, ValueError) as exc:
            emit(self.message, f"Could not show the decoded step: {exc}", "error")
            return
        emit(self.decoded, out.step, image)
        self.document.set_image(image, None, caption=f"step {out.step}, fully decoded", record="Decode a step")
        emit(self.message, f"Step {out.step}, fully decoded", "info")

    def _on_model_loaded(self, job_id: int, out: ModelLoaded) -> None:
        self.book.pop(job_id)
        self._loaded_model = out.model or ""
        self._engine_state("ready")
        if self._runs_done == getattr(self, "_runs_at_warm_up", 0):  # else "Done in ..." stays on show
            emit(self.message, f"Model ready: {Path(out.model).name if out.model else 'built-in'}", "info")

    def _on_cancelled(self, job_id: int) -> None:
        emit(self.job_cancelled, job_id)
        kind = self.book.kind(job_id)
        if kind is JobKind.LOAD_MODEL:
            self.book.pop(job_id)
            self._warm_model = None
            return
        if kind is JobKind.DECODE_STEP:
            self.book.pop(job_id)
            return
        was_running = job_id == self.book.running
        job = self.book.get(job_id)
        self._end_run(job_id)
        if was_running:
            self.timeline.stopped(job.total if job is not None else 0)  # "step 3/20, cancelled", not "3/3"
            emit(self.progress, 0, 0, -1.0)
            emit(self.timeline_changed, self.timeline_length())
            emit(self.message, "Cancelled", "info")

    def _on_failed(self, job_id: int, text: str) -> None:
        emit(self.job_failed, job_id, text)
        kind = self.book.kind(job_id)
        if kind is JobKind.LOAD_MODEL:
            self.book.pop(job_id)
            self._warm_model = None  # try again when it is next wanted
            self._engine_state("ready")
            kept = self._loaded_model
            if kept is not None and kept != self.params.model:
                # The backend still holds the model it had: the picker goes back to it, so Generate works.
                self._warm_model = kept
                p = self.params.copy()
                p.model = kept
                self.set_params(p)
                text = f"{text}. Still using {Path(kept).stem if kept else 'the built-in model'}"
            emit(self.message, text, "error")
            return
        was_running = job_id == self.book.running
        self._end_run(job_id)
        if was_running:
            emit(self.progress, 0, 0, -1.0)
        emit(self.message, text, "error")
