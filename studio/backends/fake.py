"""A deterministic fake backend: UI tests, the UI benchmark and `studio --demo` run on it (no torch).

Pixel code: the latent kept at step k has the value k and its x0 estimate 100 + k; the preview
of either (live or on the timeline) is a flat image whose red channel is that value. A finished
image is flat with red = seed % 256 (image to image and inpaint: at the input's size; an inpaint keeps
the input's pixels where the mask is 0). A decoded step is 32x32 with red = its value.

Steps can be held: unless `auto`, each step waits until `allow()` lets it go, so "cancel while
running" and "the UI is behind" are exact in tests.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from studio.core.errors import ModelError
from studio.core.memory import MemoryOptions
from studio.core.requests import MODES, UPSCALE_MODES, GenerateRequest, GenerateResult, StepInfo
from studio.core.samplers import SAMPLER_NAMES, SCHEDULE_NAMES
from studio.core.speed import SPEEDS

from .base import BackendInfo, StepCallback, UnsupportedError

PREVIEW = 8
LATENT = 8


def flat(value: int, size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = int(value) % 256
    img[..., 1] = 7
    img[..., 2] = 9
    return img


class FakeBackend:
    def __init__(self, auto: bool = False, step_delay: float = 0.0, fail: str | None = None, size: int = 64,
                 keeps_latents: bool = True, upscale_modes: tuple[str, ...] = UPSCALE_MODES):  # fmt: skip
        self.auto = auto  # steps run without waiting for allow()
        self.step_delay = step_delay
        self.fail = fail  # an EngineError message every generate raises
        self.start_error: Exception | None = None  # raised by start(): a backend that cannot start
        self.size = size
        self.keeps_latents = keeps_latents  # False: behave like a remote server (previews only)
        self.upscale_modes = tuple(upscale_modes)  # fewer: a backend that lacks a method, as a server lacks "latent"
        self.requests: list[GenerateRequest] = []
        # Speed modes it runs as another (asked -> (used, the line that says why)): a CPU without bf16, say.
        self.speed_fallback: dict[str, tuple[str, str]] = {}
        self.loaded: list[str | None] = []
        self.thread_names: list[str] = []
        self.steps_run = 0
        self.memory = MemoryOptions()
        self.started = self.closed = False
        self._cond = threading.Condition()
        self._allowed = 0
        self.in_step = threading.Event()  # set while a step waits for allow()

    # -- test control -------------------------------------------------------------------------

    def allow(self, n: int = 1) -> None:
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def run_free(self) -> None:
        with self._cond:
            self.auto = True
            self._cond.notify_all()

    def _wait_step(self, cancel: threading.Event | None) -> bool:
        """True: go on with the step; False: cancelled."""
        with self._cond:
            while not (self.auto or self._allowed > 0):
                if cancel is not None and cancel.is_set():
                    return False
                self.in_step.set()
                self._cond.wait(0.005)
            self.in_step.clear()
            if not self.auto:
                self._allowed -= 1
        return not (cancel is not None and cancel.is_set())

    # -- the Backend protocol -----------------------------------------------------------------

    def info(self) -> BackendInfo:
        return BackendInfo(
            name="Fake backend", modes=MODES, upscale_modes=self.upscale_modes, samplers=tuple(SAMPLER_NAMES), schedules=tuple(SCHEDULE_NAMES),
            keeps_latents=self.keeps_latents, decodes_steps=self.keeps_latents,
            preview_kinds=("x0", "latent") if self.keeps_latents else ("x0",), devices=("cpu",),
            device="cpu" if self.started else "", speeds=SPEEDS,
        )  # fmt: skip

    def start(self) -> BackendInfo:
        self.thread_names.append(threading.current_thread().name)
        if self.start_error is not None:
            raise self.start_error
        self.started = True
        return self.info()

    def load(self, model: str | None) -> None:
        self.thread_names.append(threading.current_thread().name)
        self.loaded.append(model)

    def generate(
        self, request: GenerateRequest, on_step: StepCallback | None = None, cancel: threading.Event | None = None
    ) -> GenerateResult:
        self.thread_names.append(threading.current_thread().name)
        request.validate()
        if self.fail:
            raise ModelError(self.fail)
        if request.mode == "upscale" and request.upscale.method not in self.upscale_modes:
            raise UnsupportedError(f"The {request.upscale.method} upscale is not available on the {self.info().name}")
        self.requests.append(request)
        t0 = time.perf_counter()
        seed = request.seed if request.seed is not None else 4242
        w, h = request.width or self.size, request.height or self.size
        if request.mode == "upscale":
            w, h = request.upscale_size()
            return self._upscale(request, request.replace(seed=seed), w, h, on_step, cancel, t0)
        if request.init_image is not None and request.mode != "txt2img":
            h, w = request.init_image.shape[:2]  # like the engine: the result has the input's size
        speed, notice = self.speed_fallback.get(request.speed, (request.speed, ""))
        used = request.replace(seed=seed, width=w, height=h, speed=speed)
        n, b = request.steps, request.batch
        latents = np.zeros((n, b, 4, LATENT, LATENT), dtype=np.float16)
        x0 = np.zeros_like(latents)
        for i in range(1, n + 1):
            if not self._wait_step(cancel):
                return GenerateResult([], used, [], cancelled=True, steps_done=i - 1)
            if self.step_delay:
                time.sleep(self.step_delay)
            latents[i - 1] = i
            x0[i - 1] = 100 + i
            self.steps_run += 1
            if on_step is not None:
                value = 100 + i if request.preview == "x0" else i
                preview = None if request.preview == "none" else self.preview_image(value)
                on_step(StepInfo(i, n, time.perf_counter() - t0, preview))
        hires = request.mode == "txt2img" and request.hires.runs()  # like the engine: the final size
        images = [self.picture(*(used.hires.size(w, h) if hires else (w, h)), seed + j) for j in range(b)]
        if request.mode == "inpaint":  # like the engine: pixels outside the mask are the input's
            keep = (request.input_mask() == 0)[..., None]
            images = [np.where(keep, request.input_image(), img) for img in images]
        previews = {}
        if request.preview != "none":
            previews["x0"] = [self.preview_image(100 + i) for i in range(1, n + 1)]
            if self.keeps_latents:
                previews["latent"] = [self.preview_image(i) for i in range(1, n + 1)]
        return GenerateResult(
            images, used, [seed + j for j in range(b)],
            latents=latents if self.keeps_latents else None, x0=x0 if self.keeps_latents else None,
            model_name="fake", timings={"total": time.perf_counter() - t0}, steps_done=n, step_previews=previews,
            extra_params={"Speed": speed}, notice=notice,
        )  # fmt: skip

    def _upscale(self, request, used, w, h, on_step, cancel, t0) -> GenerateResult:
        """Four tiles (2x2) of `steps` steps each, previews placed by region; the result is the input,
        nearest-neighbour enlarged (red + 1 so a test can tell it from the input)."""
        tiles = [(x, y, w // 2 if x == 0 else w - w // 2, h // 2 if y == 0 else h - h // 2)
                 for y in (0, h // 2) for x in (0, w // 2)]  # fmt: skip
        n = request.steps
        for part, region in enumerate(tiles, 1):
            for i in range(1, n + 1):
                if not self._wait_step(cancel):
                    return GenerateResult([], used, [], cancelled=True, steps_done=i - 1)
                self.steps_run += 1
                if on_step is not None:
                    on_step(StepInfo(i, n, time.perf_counter() - t0, self.preview_image(100 + part), stage="tile",
                                     part=part, parts=len(tiles), region=region))  # fmt: skip
        src = request.init_image
        ys = np.arange(h) * src.shape[0] // h
        xs = np.arange(w) * src.shape[1] // w
        out = src[ys][:, xs].copy()
        out[..., 0] = np.minimum(out[..., 0].astype(np.int16) + 1, 255).astype(np.uint8)
        return GenerateResult([out], used.replace(width=w, height=h), [used.seed], model_name="fake",
                              timings={"total": time.perf_counter() - t0}, steps_done=n * len(tiles))  # fmt: skip

    def health(self) -> str:
        return ""

    def set_memory(self, memory: MemoryOptions) -> None:
        self.memory = memory  # nothing to slice or offload; kept so tests can see what the worker sent

    def decode_step(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        self.thread_names.append(threading.current_thread().name)
        if not self.keeps_latents:
            raise UnsupportedError(self.info().why_no_decode())
        return self.decoded_image(int(round(float(np.asarray(latent, dtype=np.float32).mean()))))

    def close(self) -> None:
        self.closed = True

    # -- pixels (a subclass paints something else) ------------------------------------------

    def picture(self, w: int, h: int, seed: int) -> np.ndarray:
        return np.broadcast_to(flat(seed, 1), (h, w, 3)).copy()

    def preview_image(self, value: int) -> np.ndarray:
        return flat(value, PREVIEW)

    def decoded_image(self, value: int) -> np.ndarray:
        return flat(value, 32)


class DemoBackend(FakeBackend):
    """`studio --demo` and screenshots: runs on its own, slowly, and paints a small landscape."""

    def __init__(self, step_delay: float = 0.15):
        super().__init__(auto=True, step_delay=step_delay, size=512)

    def info(self) -> BackendInfo:
        return dataclasses.replace(super().info(), name="Demo backend")

    def picture(self, w: int, h: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        sky = np.stack([40 + 120 * y, 30 + 60 * y, 90 + 80 * (1 - y)], -1)
        sun = (r < 0.18)[..., None] * np.array([210.0, 60, 50])
        return np.clip(sky + sun, 0, 255).astype(np.uint8)

    def preview_image(self, value: int) -> np.ndarray:
        return self.picture(32, 32, 7) // 2 + int(value) % 100

    def decoded_image(self, value: int) -> np.ndarray:
        return self.picture(256, 256, 7)
