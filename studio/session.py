"""The session: the observable state the widgets bind to, and the actions they call.

Widgets talk to the session only; the session talks to the worker. No torch here.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio import __version__
from studio.engine.errors import EngineError
from studio.engine.requests import MAX_SEED, GenerateRequest, GenerateResult
from studio.paths import BUILTIN_MODEL, MODELS_DIR
from studio.qimage import array_to_qimage, qimage_to_array
from studio.settings import Settings
from studio.worker import JobOutput, Worker, emit, error_message

log = logging.getLogger(__name__)

# DESIGN.md's names, used until studio.engine.samplers is importable.
_FALLBACK_SAMPLERS = (
    "Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE",
    "DPM++ SDE", "UniPC", "DDIM", "PLMS", "DDPM", "LCM",
)  # fmt: skip
_FALLBACK_SCHEDULES = ("Normal", "Karras", "Exponential", "SGM Uniform")
MODEL_SUFFIXES = (".safetensors", ".ckpt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def sampler_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        from studio.engine.samplers import SAMPLER_NAMES, SCHEDULE_NAMES

        return tuple(SAMPLER_NAMES), tuple(SCHEDULE_NAMES)
    except Exception:  # noqa: BLE001 - module not there yet, or broken: keep the UI usable
        return _FALLBACK_SAMPLERS, _FALLBACK_SCHEDULES


@dataclass
class Params:
    """The prompt panel's values. seed -1 = random; width/height 0 = the model's native size."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""  # a model folder or file; "" = the built-in model
    sampler: str = "Euler a"
    schedule: str = "Normal"
    steps: int = 20
    cfg: float = 7.0
    seed: int = -1
    width: int = 0
    height: int = 0
    batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Params:
        p = cls()
        for f in fields(cls):
            if data and f.name in data and data[f.name] is not None:
                value = data[f.name]
                try:
                    setattr(p, f.name, type(getattr(p, f.name))(value))
                except (TypeError, ValueError):
                    pass
        return p

    def to_request(self, preview: str = "x0") -> GenerateRequest:
        return GenerateRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            model=self.model or None,
            sampler=self.sampler,
            schedule=self.schedule,
            steps=int(self.steps),
            cfg=float(self.cfg),
            seed=None if self.seed < 0 else int(self.seed),
            width=int(self.width) or None,
            height=int(self.height) or None,
            batch=int(self.batch),
            preview=preview,
        )


# -- saving and reading metadata (studio.engine.output / .metadata: numpy and Pillow, no torch) ------


def save_result(result: GenerateResult, out_dir: Path) -> list[Path]:
    """Write every image of a run with its `parameters` text, atomically; returns the paths."""
    from studio.engine.output import save_result as engine_save

    return [Path(p) for p in engine_save(result, out_dir, __version__)]


def read_png_fields(path: Path) -> dict[str, Any] | None:
    """GenerateRequest field names -> values from an image's stored parameters (ours or A1111's)."""
    from studio.engine.metadata import read_parameters, request_fields

    text = read_parameters(path)
    return request_fields(text) if text else None


# -- the session -----------------------------------------------------------------------------------


@dataclass
class JobView:
    id: int
    label: str
    state: str  # queued or running
    step: int = 0
    total: int = 0


class Session(QObject):
    params_changed = Signal(object)  # Params, when set from outside the panel (a PNG, settings)
    jobs_changed = Signal()
    running_changed = Signal(bool)
    progress = Signal(int, int, float)  # step, total, ETA seconds (-1 unknown)
    preview_changed = Signal(QImage)  # the live preview (small)
    image_saved = Signal(str, QImage)  # a finished image, already on disk
    current_image_changed = Signal(QImage)  # what the canvas shows
    timeline_changed = Signal(int)  # number of steps the timeline can scrub (0: none)
    timeline_image = Signal(int, QImage)  # step (1-based), its preview
    decoded = Signal(int, QImage)  # step (1-based), its full VAE decode
    message = Signal(str, str)  # text, level: info / warning / error
    engine_state = Signal(str)  # loading / ready / error text

    def __init__(self, worker: Worker, settings: Settings, parent: QObject | None = None):
        super().__init__(parent)
        self.worker = worker
        self.settings = settings
        self.params = Params.from_dict(settings.params)
        self.preview_kind = settings.preview_kind if settings.preview_kind in ("x0", "latent") else "x0"
        self.output_dir: Path = settings.resolved_output_dir()
        self.current_image: QImage | None = None
        self.current_path: Path | None = None
        self.current_caption = ""
        self.last_seed: int | None = None
        self._labels: dict[int, str] = {}
        self._progress: dict[int, tuple[int, int]] = {}
        self._running: int | None = None
        self._decode_jobs: dict[int, int] = {}  # job id -> step
        self._warm_enabled = False
        self._warm_model: str | None = None
        self._warm_jobs: set[int] = set()
        self._unsaved_text: dict[int, str] = {}  # QImage.cacheKey() -> parameters, for images not on disk
        self._run_started = 0.0
        self._first_step: tuple[int, float] | None = None
        # The step timeline of the last run (1-based steps map to index step-1).
        self.live_steps: dict[int, np.ndarray] = {}
        self.timeline_x0: list[np.ndarray] = []
        self.timeline_latent: list[np.ndarray] = []
        self.last_output: JobOutput | None = None
        self.selected_step = 0

        w = worker
        w.queued.connect(self._on_jobs)
        w.queue_changed.connect(self._on_jobs)
        w.started.connect(self._on_started)
        w.step.connect(self._on_step)
        w.finished.connect(self._on_finished)
        w.cancelled.connect(self._on_cancelled)
        w.failed.connect(self._on_failed)
        w.call_done.connect(self._on_call_done)
        w.engine_ready.connect(lambda: emit(self.engine_state, "ready"))
        w.engine_failed.connect(self._on_engine_failed)

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

    def set_params(self, params: Params) -> None:
        model_before = self.params.model
        self.params = params
        if params.model != model_before:
            self.warm_up()
        emit(self.params_changed, params)

    def random_seed(self) -> None:
        self.update_params(seed=-1)
        emit(self.params_changed, self.params)

    def reuse_seed(self) -> None:
        if self.last_seed is not None:
            self.update_params(seed=self.last_seed)
            emit(self.params_changed, self.params)

    def set_preview_kind(self, kind: str) -> None:
        if kind in ("x0", "latent") and kind != self.preview_kind:
            before = self.timeline_length()
            self.preview_kind = kind
            self.settings.preview_kind = kind
            if self.timeline_length() != before:
                emit(self.timeline_changed, self.timeline_length())
            elif self.selected_step and not self.is_running():
                self.select_step(self.selected_step)

    # -- actions ------------------------------------------------------------------------------

    def generate(self) -> int | None:
        """Queue a generation from the current parameters. None (and a message) if invalid."""
        try:
            request = self.params.to_request(self.preview_kind)
            request.validate()
        except EngineError as exc:
            emit(self.message, error_message(exc), "error")
            return None
        out_dir = self.output_dir
        label = " ".join(request.prompt.split()) or "(no prompt)"
        job_id = self.worker.submit(request, save=lambda result: save_result(result, out_dir), label=label)
        self._labels[job_id] = label
        self._progress.setdefault(job_id, (0, request.steps))
        self._on_jobs()
        return job_id

    def enable_warm_up(self) -> None:
        """From now on, load the chosen model in the background (once the engine is wanted)."""
        self._warm_enabled = True
        self.warm_up()

    def warm_up(self) -> int | None:
        """Load the chosen model on the engine thread while the artist writes the prompt."""
        if not self._warm_enabled or self._warm_model == self.params.model:
            return None
        self._warm_model = model = self.params.model
        path = model or None

        def load(engine):
            loader = getattr(engine, "load", None)
            if loader is not None:
                loader(path)
            return model

        job_id = self.worker.submit_call(load, label="load model")
        self._warm_jobs.add(job_id)
        return job_id

    def cancel(self) -> bool:
        """Esc / the Cancel button: stop the running job (queued ones stay)."""
        jobs = [j for j in self.worker.jobs() if j.id not in self._warm_jobs]
        if not jobs:
            return False
        return self.worker.cancel(jobs[0].id)

    def cancel_job(self, job_id: int) -> bool:
        return self.worker.cancel(job_id)

    def cancel_all(self) -> None:
        self.worker.cancel_all()

    def jobs(self) -> list[JobView]:
        out = []
        for job in self.worker.jobs():
            if job.kind != "generate":
                continue
            step, total = self._progress.get(job.id, (0, job.request.steps if job.request else 0))
            out.append(JobView(job.id, self._labels.get(job.id, job.label), job.state, step, total))
        return out

    def running_size(self) -> tuple[int, int]:
        """Width and height the running job asked for; (0, 0) for the model's native size or no job."""
        job = self.worker.current_job()
        if job is None or job.request is None:
            return 0, 0
        return job.request.width or 0, job.request.height or 0

    def is_running(self) -> bool:
        return self._running is not None

    # -- timeline -----------------------------------------------------------------------------

    def timeline_length(self) -> int:
        frames = self.timeline_x0 if self.preview_kind == "x0" else self.timeline_latent
        if frames:
            return len(frames)
        return max(self.live_steps) if self.live_steps else 0

    def step_preview(self, step: int) -> np.ndarray | None:
        frames = self.timeline_x0 if self.preview_kind == "x0" else self.timeline_latent
        if frames:
            return frames[step - 1] if 1 <= step <= len(frames) else None
        return self.live_steps.get(step)

    def select_step(self, step: int) -> None:
        self.selected_step = step
        arr = self.step_preview(step)
        if arr is not None:
            emit(self.timeline_image, step, array_to_qimage(arr))

    def can_decode(self) -> bool:
        out = self.last_output
        if out is None:
            return False
        stack = out.result.x0 if self.preview_kind == "x0" else out.result.latents
        return stack is not None

    def decode_step(self, step: int) -> int | None:
        """Full VAE decode of the selected step of the last run, as a job on the engine thread."""
        out = self.last_output
        if out is None:
            emit(self.message, "Nothing to decode yet: run a generation first", "warning")
            return None
        stack = out.result.x0 if self.preview_kind == "x0" else out.result.latents
        if stack is None or not 1 <= step <= len(stack):
            emit(self.message, "This run kept no latents to decode", "warning")
            return None
        latent = np.array(stack[step - 1, 0], copy=True)
        model = out.result.request.model
        job_id = self.worker.submit_call(lambda engine: engine.decode_latent(model, latent), label=f"decode {step}")
        self._decode_jobs[job_id] = step
        emit(self.message, f"Decoding step {step}…", "info")
        return job_id

    # -- images -------------------------------------------------------------------------------

    def show_image(self, image: QImage, path: Path | None = None, caption: str = "") -> None:
        self.current_image = image
        self.current_path = path
        self.current_caption = caption
        emit(self.current_image_changed, image)

    def save_current_as(self, dest: Path | str) -> Path:
        """Save the image on the canvas as a PNG that keeps its generation parameters.

        Raises OSError or EngineError with a readable message.
        """
        image, src = self.current_image, self.current_path
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
            from studio.engine.output import save_image

            return save_image(qimage_to_array(image), dest, text)
        if not image.save(str(dest), "PNG"):
            raise OSError(f"{dest.name} could not be written")
        return dest

    def open_image(self, path: Path | str) -> bool:
        """Show a PNG and fill the panel with its stored parameters (ours or A1111's)."""
        path = Path(path)
        image = QImage(str(path))
        if image.isNull():
            emit(self.message, f"Could not open {path.name}: not an image Latent Studio can read", "error")
            return False
        self.show_image(image, path)
        try:
            found = read_png_fields(path)
        except Exception as exc:  # noqa: BLE001 - a broken chunk is a message, not a crash
            log.exception("reading parameters of %s", path)
            emit(self.message, f"Could not read the parameters of {path.name}: {error_message(exc)}", "warning")
            return True
        if not found:
            emit(self.message, f"Opened {path.name}: it stores no generation parameters", "info")
            return True
        self.apply_fields(found)
        emit(self.message, f"Parameters loaded from {path.name}", "info")
        return True

    def apply_fields(self, found: dict[str, Any]) -> None:
        p = Params.from_dict(self.params.to_dict())
        for name in ("prompt", "negative_prompt", "sampler", "schedule", "steps", "cfg", "seed", "width", "height"):
            if found.get(name) is not None:
                setattr(p, name, type(getattr(p, name))(found[name]))
        if found.get("batch"):
            p.batch = int(found["batch"])
        model = found.get("model")
        if model and Path(str(model)).exists():
            p.model = str(model)
        self.set_params(p)

    def output_images(self, limit: int = 400) -> list[Path]:
        """Earlier results in the output folder, newest first."""
        try:
            files = [p for p in self.output_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError:
            return []
        files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return files[:limit]

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) for the model picker; value "" is the built-in model."""
        builtin = "Built-in" if (BUILTIN_MODEL / "model_index.json").is_file() else "Built-in (not installed yet)"
        out: list[tuple[str, str]] = [(builtin, "")]
        seen: set[str] = set()
        folders = [MODELS_DIR, *map(Path, self.settings.model_folders)]
        for folder in folders:
            try:
                entries = sorted(Path(folder).expanduser().iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.resolve() == BUILTIN_MODEL.resolve():
                    continue
                if (entry.is_dir() and (entry / "model_index.json").is_file()) or (
                    entry.is_file() and entry.suffix.lower() in MODEL_SUFFIXES
                ):
                    key = str(entry.resolve())
                    if key not in seen:
                        seen.add(key)
                        out.append((entry.stem if entry.is_file() else entry.name, str(entry)))
        if self.params.model and str(Path(self.params.model).resolve()) not in seen:
            out.append((Path(self.params.model).name, self.params.model))
        return out

    # -- lifecycle ----------------------------------------------------------------------------

    def store_settings(self) -> None:
        self.settings.params = self.params.to_dict()
        self.settings.preview_kind = self.preview_kind

    def shutdown(self, timeout: float | None = 30.0) -> bool:
        self.store_settings()
        return self.worker.shutdown(timeout)

    # -- worker signals ------------------------------------------------------------------------

    def _on_jobs(self, *_: Any) -> None:
        emit(self.jobs_changed)

    def _on_engine_failed(self, text: str) -> None:
        emit(self.engine_state, text)
        emit(self.message, text, "error")

    def _on_started(self, job_id: int) -> None:
        if job_id in self._warm_jobs:
            emit(self.engine_state, "loading model")
            return
        if job_id in self._decode_jobs:
            return
        self._running = job_id
        self._run_started = time.monotonic()
        self._first_step = None
        self.live_steps = {}
        self.timeline_x0, self.timeline_latent = [], []
        self.last_output = None
        self.selected_step = 0
        emit(self.timeline_changed, 0)
        emit(self.running_changed, True)
        total = self._progress.get(job_id, (0, 0))[1]
        emit(self.progress, 0, total, -1.0)
        emit(self.message, f"Generating: {self._labels.get(job_id, '')}", "info")
        emit(self.jobs_changed)

    def _on_step(self, job_id: int, step: int, total: int, elapsed: float, preview: Any) -> None:
        if job_id != self._running:
            return
        self._progress[job_id] = (step, total)
        emit(self.progress, step, total, self._eta(step, total, elapsed))
        if preview is not None:
            arr = np.asarray(preview)
            self.live_steps[step] = arr
            emit(self.preview_changed, array_to_qimage(arr))
        emit(self.jobs_changed)

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

    def _end_run(self, job_id: int) -> None:
        self._progress.pop(job_id, None)
        self._labels.pop(job_id, None)
        if job_id == self._running:
            self._running = None
            emit(self.running_changed, False)
        emit(self.jobs_changed)

    def _on_finished(self, job_id: int, out: JobOutput) -> None:
        result = out.result
        self.last_output = out
        self.timeline_x0, self.timeline_latent = out.timeline_x0, out.timeline_latent
        if result.seeds:
            self.last_seed = int(result.seeds[0])
        images = [array_to_qimage(np.asarray(a)) for a in result.images]
        for i, image in enumerate(images):
            path = out.paths[i] if i < len(out.paths) else None
            if path is None:  # not on disk: keep its parameters for Save as
                self._unsaved_text[image.cacheKey()] = self._parameters_text(result, i)
            emit(self.image_saved, str(path) if path else "", image)
        if images:
            self.show_image(images[0], out.paths[0] if out.paths else None)
        n = self.timeline_length()
        total = result.request.steps
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
        emit(self.message, f"Done in {secs:.1f} s, seed {self.last_seed}{where}", "info")

    @staticmethod
    def _parameters_text(result: GenerateResult, i: int) -> str:
        from studio.engine.metadata import parameters_for

        req = result.request
        if not (req.width and req.height) and i < len(result.images):
            h, w = np.asarray(result.images[i]).shape[:2]
            req = req.replace(width=int(w), height=int(h))
        seed = result.seeds[i] if i < len(result.seeds) else (req.seed or 0)
        return parameters_for(req, seed, result.model_name, result.model_hash, __version__)

    def _on_cancelled(self, job_id: int) -> None:
        if job_id in self._warm_jobs:
            self._warm_jobs.discard(job_id)
            self._warm_model = None
            return
        if self._decode_jobs.pop(job_id, None) is not None:
            return
        was_running = job_id == self._running
        self._end_run(job_id)
        if was_running:
            emit(self.progress, 0, 0, -1.0)
            n = self.timeline_length()
            emit(self.timeline_changed, n)
            emit(self.message, "Cancelled", "info")

    def _on_failed(self, job_id: int, text: str) -> None:
        if job_id in self._warm_jobs:
            self._warm_jobs.discard(job_id)
            self._warm_model = None  # try again when it is next wanted
            emit(self.engine_state, "ready")
            emit(self.message, text, "error")
            return
        self._decode_jobs.pop(job_id, None)
        was_running = job_id == self._running
        self._end_run(job_id)
        if was_running:
            emit(self.progress, 0, 0, -1.0)
        emit(self.message, text, "error")

    def _on_call_done(self, job_id: int, value: Any) -> None:
        if job_id in self._warm_jobs:
            self._warm_jobs.discard(job_id)
            emit(self.engine_state, "ready")
            emit(self.message, f"Model ready: {Path(value).name if value else 'built-in'}", "info")
            return
        step = self._decode_jobs.pop(job_id, None)
        if step is None:
            return
        try:
            image = array_to_qimage(np.asarray(value, dtype=np.uint8))
        except (TypeError, ValueError) as exc:
            emit(self.message, f"Could not show the decoded step: {exc}", "error")
            return
        emit(self.decoded, step, image)
        self.show_image(image, None, caption=f"step {step}, fully decoded")
        emit(self.message, f"Step {step}, fully decoded", "info")


def random_seed_value() -> int:
    return random.randint(0, MAX_SEED)
