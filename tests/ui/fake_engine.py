"""A fake engine for deterministic worker and UI tests: each step waits until the test allows it.

Pixel code: the latent kept at step k has the value k and its x0 estimate 100 + k; the
preview of either (live or on the timeline) is a flat image whose red channel is that value.
A finished image is flat with red = seed % 256. A decoded step is 32x32 with red = its value.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from studio.engine.errors import ModelError
from studio.engine.requests import GenerateRequest, GenerateResult, StepInfo

PREVIEW = 8
LATENT = 8


def flat(value: int, size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = int(value) % 256
    img[..., 1] = 7
    img[..., 2] = 9
    return img


class FakeEngine:
    def __init__(self, auto: bool = False, step_delay: float = 0.0, fail: str | None = None, size: int = 64):
        self.auto = auto  # steps run without waiting for allow()
        self.step_delay = step_delay
        self.fail = fail  # an EngineError message every generate raises
        self.size = size
        self.requests: list[GenerateRequest] = []
        self.thread_names: list[str] = []
        self.steps_run = 0
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

    # -- the engine API -----------------------------------------------------------------------

    def generate(self, request: GenerateRequest, on_step=None, cancel: threading.Event | None = None) -> GenerateResult:
        self.thread_names.append(threading.current_thread().name)
        request.validate()
        if self.fail:
            raise ModelError(self.fail)
        self.requests.append(request)
        t0 = time.perf_counter()
        seed = request.seed if request.seed is not None else 4242
        w, h = request.width or self.size, request.height or self.size
        used = request.replace(seed=seed, width=w, height=h)
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
                preview = None if request.preview == "none" else flat(value, PREVIEW)
                on_step(StepInfo(i, n, time.perf_counter() - t0, preview))
        images = []
        for j in range(b):
            img = flat(seed + j, 1)[0, 0] * np.ones((h, w, 1), dtype=np.uint8)
            images.append(img.astype(np.uint8))
        return GenerateResult(
            images, used, [seed + j for j in range(b)], latents=latents, x0=x0, model_name="fake",
            timings={"total": time.perf_counter() - t0}, steps_done=n,
        )  # fmt: skip

    def latent_preview(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        return flat(int(round(float(np.asarray(latent, dtype=np.float32).mean()))), PREVIEW)

    def decode_latent(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        self.thread_names.append(threading.current_thread().name)
        return flat(int(round(float(np.asarray(latent, dtype=np.float32).mean()))), 32)


class DemoEngine(FakeEngine):
    """For screenshots: runs on its own, slowly, and paints something nicer than flat colour."""

    def __init__(self):
        super().__init__(auto=True, step_delay=0.15, size=512)

    def generate(self, request, on_step=None, cancel=None):
        result = super().generate(request, on_step, cancel)
        if result.cancelled:
            return result
        h, w = result.images[0].shape[:2] if result.images else (512, 512)
        imgs = [self._picture(w, h, s) for s in result.seeds]
        return GenerateResult(imgs, result.request, result.seeds, latents=result.latents, x0=result.x0,
                              model_name="demo", timings=result.timings, steps_done=result.steps_done)  # fmt: skip

    @staticmethod
    def _picture(w: int, h: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        sky = np.stack([40 + 120 * y, 30 + 60 * y, 90 + 80 * (1 - y)], -1)
        sun = (r < 0.18)[..., None] * np.array([210.0, 60, 50])
        return np.clip(sky + sun, 0, 255).astype(np.uint8)

    def latent_preview(self, model, latent):
        v = float(np.asarray(latent, dtype=np.float32).mean())
        return self._picture(32, 32, 7)[..., :3] // 2 + int(v) % 100

    def decode_latent(self, model, latent):
        return self._picture(256, 256, 7)
