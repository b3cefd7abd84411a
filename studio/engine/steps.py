"""One run's steps, shared by the engine and the upscaler: the step tracker that counts steps as the artist set
them and keeps each step's latent and x0 estimate, the cancel exception that leaves a pipeline's loop, and the crop
of a kept latent to the picture's part."""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.requests import GenerateRequest, StepInfo
from .preview import latent_to_rgb

if TYPE_CHECKING:
    from .loader import LoadedModel


# A tiny decoder's preview may take this share of a step's time; a slower one runs every 2nd, 4th... step (the linear
# factors in between), so the preview never slows the run down noticeably.
TINY_PREVIEW_SHARE = 0.25
TINY_PREVIEW_MAX_EVERY = 8


class Cancelled(Exception):
    """Raised inside the step callback to leave the pipeline loop at once."""


def effective_steps(r: GenerateRequest) -> int:
    """Steps the sampler will actually run: `r.steps` for text to image (and at strength 1); image to image
    and inpaint skip the first (1 - strength) of them and run int(steps * strength), as diffusers'
    get_timesteps does (its `num_inference_steps - t_start`)."""
    n = r.steps
    if r.mode in ("img2img", "inpaint") and r.strength < 1.0:
        return min(int(n * r.strength), n)
    return n


class StepTracker:
    """Follows one run: counts the steps the sampler runs (`effective_steps`; a second-order sampler's two model
    calls count once), keeps x_t and the x0 estimate of each."""

    def __init__(
        self,
        scheduler,
        request: GenerateRequest,
        model: LoadedModel,
        on_step,
        cancel,
        t0: float,
        *,
        total: int | None = None,
        part: dict | None = None,
        preview_crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    ):
        self.scheduler = scheduler
        self.request = request
        self.model = model
        self.on_step = on_step
        self.cancel = cancel
        self.t0 = t0
        self.last_x0: torch.Tensor | None = None
        self.latents: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []
        self.total = effective_steps(request) if total is None else total
        self.preview_s = 0.0
        # One part of a multi-pass run (a tile of an upscale): StepInfo's stage, part, parts and region.
        self.part = part or {}
        # The share (height, width) of the latent that is real image: a tile padded to the model's multiple
        # previews only its own pixels.
        self.preview_crop = preview_crop
        self.tiny = getattr(model, "tiny", None)  # the tiny decoder: true-colour previews; None: linear factors
        self.tiny_every = 1  # how often the tiny decoder previews (grows when it costs more than its share)
        self.tiny_steps: list[int] = []  # the steps the tiny decoder previewed (the rest: the linear factors)
        self._last_record = t0
        self._orig_step = scheduler.step
        # Branching (studio.core.branch): the generators whose state each step keeps (None: keep no states), the
        # steps before this run's first (a branch from step k counts on from k), and a step to stop after.
        self.generators = None
        self.states: list = []
        self.offset = 0
        self.stop_after: int | None = None

        # functools.wraps keeps step's signature visible: the pipelines inspect it to decide whether
        # to pass `generator` and `eta`; without them ancestral samplers would draw unseeded noise.
        @functools.wraps(self._orig_step)
        def step(*args, **kwargs):
            return self._step(*args, **kwargs)

        scheduler.step = step  # instance attribute: only this run's scheduler is wrapped

    def _step(self, model_output, timestep, sample, *args, **kwargs):
        # The pipelines drop the scheduler's x0 prediction; keep it for the preview (diffusers issue 3579).
        want_dict = kwargs.pop("return_dict", True)
        out = self._orig_step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None:
            x0 = getattr(out, "denoised", None)  # LCM
        if x0 is None:
            history = getattr(self.scheduler, "model_outputs", None)  # multistep solvers: data predictions
            if history and history[-1] is not None and self._history_is_x0():
                x0 = history[-1]
        if x0 is None:
            x0 = self._x0_from_alphas(model_output, timestep, sample)
        self.last_x0 = x0
        return out if want_dict else out.to_tuple()

    def _history_is_x0(self) -> bool:
        cfg = self.scheduler.config
        algo = cfg.get("algorithm_type", "")
        return bool(cfg.get("predict_x0", True)) and algo not in ("dpmsolver", "sde-dpmsolver")

    def _x0_from_alphas(self, eps, timestep, sample):
        ac = getattr(self.scheduler, "alphas_cumprod", None)
        if ac is None:
            return None
        t = int(timestep)
        if not 0 <= t < len(ac):
            return None
        a = ac[t].to(sample.device, sample.dtype)
        if self.scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
            return a.sqrt() * sample - (1 - a).sqrt() * eps
        return (sample - (1 - a).sqrt() * eps) / a.sqrt()

    def callback(self, pipe, i: int, t, kwargs: dict) -> dict:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled
        n_calls = pipe.num_timesteps
        order = getattr(self.scheduler, "order", 1)
        warmup = n_calls - self.total * order  # PLMS spends one extra call warming up
        # A full artist step ends here (the rule the pipelines use for their progress bars):
        # second-order samplers call the model twice per step, and count once.
        if not (i == n_calls - 1 or ((i + 1) > warmup and (i + 1) % order == 0)):
            return {}
        self.record(kwargs["latents"])
        return {}

    def legacy_callback(self, step: int, timestep, latents) -> None:
        """The legacy `callback(step, t, latents)` (StableDiffusionUpscalePipeline has only this one); the
        pipeline calls it once per artist step (callback_steps=1). Raises Cancelled to leave the loop."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled
        self.record(latents)

    def record(self, latents: torch.Tensor) -> None:
        """One artist step done: keep x_t and the x0 estimate, hand out the preview, honour cancel."""
        x0 = self.last_x0 if self.last_x0 is not None and self.last_x0.shape == latents.shape else latents
        self.latents.append(latents.detach().to("cpu", torch.float16).numpy())
        self.x0.append(x0.detach().to("cpu", torch.float16).numpy())
        step_no = self.offset + len(self.latents)
        if self.generators is not None:
            from .branching import capture

            self.states.append(capture(self.scheduler, step_no, latents, self.generators))
        if self.on_step is not None:
            p0 = time.perf_counter()
            preview = None
            if self.request.preview != "none":
                src = self.x0[-1] if self.request.preview == "x0" else self.latents[-1]
                lat = src[0]
                lat = crop_fractions(lat, self.preview_crop)
                preview = self._preview(lat, p0)
            self.preview_s += time.perf_counter() - p0
            self._last_record = time.perf_counter()
            step = StepInfo(step_no, self.total, time.perf_counter() - self.t0, preview, **self.part)
            self.on_step(step)
        if (self.cancel is not None and self.cancel.is_set()) or step_no == self.stop_after:
            raise Cancelled

    def _preview(self, lat: np.ndarray, now: float) -> np.ndarray:
        """The tiny decoder's true colours when one is loaded and this step is due, else the linear factors."""
        k = len(self.latents)
        last = k == self.total
        if self.tiny is None or not (last or (k - 1) % self.tiny_every == 0):
            return latent_to_rgb(lat, *self.model.latent_rgb)
        image = self.tiny.preview(lat)
        cost = time.perf_counter() - now
        step_time = max(now - self._last_record, 1e-6)
        if cost > TINY_PREVIEW_SHARE * step_time and self.tiny_every < TINY_PREVIEW_MAX_EVERY:
            self.tiny_every *= 2
        self.tiny_steps.append(k)
        return image

    def restore(self) -> None:
        self.scheduler.__dict__.pop("step", None)


def crop_fractions(a: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The (top, left, bottom, right) fractions of the last two axes of ``a``, at least one element each."""
    y0f, x0f, y1f, x1f = box
    if (y0f, x0f, y1f, x1f) == (0.0, 0.0, 1.0, 1.0):
        return a
    h, w = a.shape[-2:]
    y0, x0 = min(h - 1, math.floor(h * y0f)), min(w - 1, math.floor(w * x0f))
    return a[..., y0 : max(y0 + 1, math.ceil(h * y1f)), x0 : max(x0 + 1, math.ceil(w * x1f))]
