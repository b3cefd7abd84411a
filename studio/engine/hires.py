"""Hires fix (A1111's two-pass text to image), called by Engine.generate for a txt2img request with
``request.hires.enabled``.

1. The first pass: text to image at the request's size (the model's native size by default), kept as latents.
2. The upscale by ``hires.scale`` to ``hires.size(...)`` (down to the model's size multiple):
   - a latent upscaler (``LATENT_UPSCALERS``: "Latent", "Latent (bicubic)"...): the latents are interpolated
     (torch's interpolate, A1111's modes) and the second pass starts from them, with no decode;
   - "Lanczos": the first pass is decoded and resized;
   - an upscaler model file: the first pass is decoded, upscaled by the model (``engine.upscaler``: its tiles
     report stage "upscaler"), then Lanczos-resized to the exact size.
3. The second pass: the engine's img2img at ``hires.strength`` on the same model, prompt, sampler, LoRAs and
   seeds (image i of a batch: seed + i, as in the first pass), running ``hires.steps`` steps (0: the request's
   steps). As in A1111, the hires steps are the steps that run: the schedule is stretched to
   ``schedule_steps(steps, strength)`` and its last ``steps`` run from the strength's noise level.

Progress: one count over both passes (first pass steps, then the second's): stage "first pass", then "hires".
The step timeline gets every step's preview of image 0 (``result.step_previews``: the second pass's are larger);
a run of two sizes keeps no latents to decode (``result.latents`` None), as a tiled upscale keeps none.

The result's request is the request as run: the first pass's size (A1111's "Size"), the seed, the hires options.
A model with a 9-channel inpainting U-Net runs its second pass from pixels: a latent upscale is decoded first.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

import numpy as np
import torch

from ..core.errors import EngineError, ModelError, RequestError, first_line, is_out_of_memory
from ..core.requests import LATENT_UPSCALERS, MAX_SEED, GenerateRequest, GenerateResult, StepInfo
from ..core.requests import hires_schedule_steps as schedule_steps
from ..core.variation import settle
from . import runaddons, speed
from .preview import latent_to_rgb
from .schedulers import build_scheduler
from .steps import Cancelled, StepTracker
from .upscale import lanczos


def latent_upscale(latents: torch.Tensor, size: tuple[int, int], factor: int, upscaler: str) -> torch.Tensor:
    """A1111's latent upscale: the latents interpolated to `size` (px) / the VAE's `factor`."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    w, h = size
    out = torch.nn.functional.interpolate(latents.float(), size=(h // factor, w // factor), mode=mode,
                                          antialias=antialias)  # fmt: skip
    return out.to(latents.dtype)


def run(engine, request: GenerateRequest, on_step, cancel, t_start: float) -> GenerateResult:
    """One hires-fix run on `engine` (the caller holds its lock and has validated the request)."""
    hires = request.hires
    latent = hires.is_latent()
    if not latent and hires.upscaler != "Lanczos" and not Path(hires.upscaler).expanduser().is_file():
        raise ModelError(f"Hires upscaler not found: {hires.upscaler} (use Latent, Lanczos or an upscaler model file)")
    model = engine.load(request.model, request.prediction)
    t_loaded = time.perf_counter()
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    width, height = engine._size_for(request, model)
    used, seeds, _ = settle(request.replace(seed=seed, width=width, height=height), seed,
                            lambda: secrets.randbelow(MAX_SEED + 1))  # variation seeds: the first pass's noise
    used.validate_hires(width, height)  # the final size, now that the first pass's is known
    big = hires.size(width, height, model.size_multiple)
    steps2 = hires.steps or used.steps
    second = used.replace(mode="img2img", width=big[0], height=big[1], steps=schedule_steps(steps2, hires.strength),
                          strength=hires.strength, init_image=np.zeros((height, width, 3), np.uint8))  # fmt: skip
    n1 = used.steps
    total = n1 + steps2
    extra = runaddons.prepare(model, used, engine.folders)
    # The speed mode holds for both passes (after the LoRAs: turbo converts them); a new size compiles once.
    fast = speed.plan_speed(used.speed, engine.device, model.dtype)
    used = used.replace(speed=fast.used)
    extra[speed.METADATA_KEY] = fast.used
    notes = []
    if used.deep_cache > 1:  # DeepCache wraps one pipeline call; two passes of other sizes are not measured with it
        used = used.replace(deep_cache=0)
        notes.append("Deep cache is not applied to a hires fix run")
    trackers: list[StepTracker] = []
    timings = {"sample": 0.0, "decode": 0.0}

    def result(images: list[np.ndarray], cancelled: bool) -> GenerateResult:
        previews: dict[str, list[np.ndarray]] = {}
        if not cancelled and used.preview != "none":
            for kind in ("x0", "latent"):
                previews[kind] = [latent_to_rgb(lat[0], *model.latent_rgb) for t in trackers
                                  for lat in (t.x0 if kind == "x0" else t.latents)]  # fmt: skip
        return GenerateResult(
            images=images, request=used, seeds=seeds, cancelled=cancelled, model_name=model.name,
            model_hash=model.hash, steps_done=sum(len(t.latents) for t in trackers), step_previews=previews,
            extra_params=dict(extra),
            timings={"load": t_loaded - t_start, **timings, "preview": sum(t.preview_s for t in trackers),
                     "total": time.perf_counter() - t_start},
        )  # fmt: skip

    encoded: dict = {}  # the prompt, encoded once for both passes

    def sample(req: GenerateRequest, stage: str, offset: int, image=None) -> torch.Tensor:
        pipe, kwargs = engine.pipeline_call(model, req, seeds, embeds=encoded.get("embeds"))
        encoded["embeds"] = {k: v for k, v in kwargs.items() if k.endswith("prompt_embeds")}
        if image is not None:
            kwargs["image"] = image  # the upscaled latents or pictures of the whole batch
        scheduler = build_scheduler(model.scheduler_config, req.sampler, req.schedule, seed)
        pipe.scheduler = scheduler

        def shifted(info: StepInfo) -> None:  # one count over both passes
            if on_step is not None:
                on_step(dataclasses.replace(info, step=info.step + offset, total=total))

        tracker = StepTracker(scheduler, req, model, shifted, cancel, t_start, part=dict(stage=stage))
        trackers.append(tracker)
        t = time.perf_counter()
        try:
            fast.apply(pipe, model, engine.device, on_step, total, cancel, t_start)
            if cancel is not None and cancel.is_set():
                raise Cancelled
            with torch.inference_mode():
                return pipe(**kwargs, callback_on_step_end=tracker.callback).images
        finally:
            tracker.restore()
            fast.restore()
            timings["sample"] += time.perf_counter() - t

    def decode(latents: torch.Tensor) -> list[np.ndarray]:
        t = time.perf_counter()
        try:
            return engine.decode(model, latents, autocast=fast.decode_autocast)
        finally:
            timings["decode"] += time.perf_counter() - t

    try:
        latents = sample(used, "first pass", 0)
        if cancel is not None and cancel.is_set():
            raise Cancelled
        if latent and not model.inpainting_unet:
            start = latent_upscale(latents, big, model.vae_scale_factor, hires.upscaler)
        else:
            if latent:  # a 9-channel U-Net's img2img takes pictures: the upscaled latents, decoded
                pictures = decode(latent_upscale(latents, big, model.vae_scale_factor, hires.upscaler))
            else:
                pictures = [_upscale_pixels(engine, img, big, hires.upscaler, cancel, on_step, t_start)
                            for img in decode(latents)]  # fmt: skip
            from PIL import Image

            start = [Image.fromarray(np.ascontiguousarray(p)) for p in pictures]
        final = sample(second, "hires", n1, image=start)
        if cancel is not None and cancel.is_set():
            raise Cancelled
        images = decode(final)
    except Cancelled:
        return result([], cancelled=True)
    except (EngineError, RequestError):
        raise
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise EngineError(engine.out_of_memory()) from e
    except Exception as e:  # noqa: BLE001 - one readable line for the artist; the chain keeps the cause
        if is_out_of_memory(e):
            raise EngineError(engine.out_of_memory()) from e
        raise EngineError(f"Hires fix failed: {first_line(e)}") from e
    return dataclasses.replace(result(images, cancelled=False), notice=fast.notice, notes=notes)


def _upscale_pixels(engine, image: np.ndarray, size: tuple[int, int], upscaler: str, cancel, on_step,
                    t0: float) -> np.ndarray:  # fmt: skip
    """Lanczos, or the upscaler model then Lanczos to the exact size (its tiles report stage "upscaler")."""
    if upscaler == "Lanczos":
        return lanczos(image, size)
    from .upscalers import UpscaleCancelled

    up = engine.upscaler(upscaler)

    def on_tile(part: int, parts: int, rect, pixels) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        if on_step is not None:
            on_step(StepInfo(0, 0, time.perf_counter() - t0, None, stage="upscaler", part=part, parts=parts))

    try:
        out = up.upscale(np.array(image, np.uint8, copy=True), 0, 0, on_tile, cancel)
    except UpscaleCancelled as e:
        raise Cancelled from e
    if out is None or (cancel is not None and cancel.is_set()):
        raise Cancelled
    return lanczos(np.asarray(out, np.uint8), size)
