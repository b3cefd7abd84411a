"""DeepCache (Ma et al. 2023, arXiv 2312.00858): reuse the U-Net's deep features for N-1 of every N steps.

Neighbouring denoising steps change the U-Net's high-level (deep) features very little. On a "full" step the
whole U-Net runs and the outputs of its deep part are kept; on the steps between, only the shallow branch runs:
the input conv, the time embedding, the last resnet (and attention) of the last up-block, fed with the kept deep
feature and the fresh skip connection from the input conv, and the output conv. That is the paper's skip branch
0 with uniform spacing, the setting its Stable Diffusion results use.

Why our own module and not the PyPI `DeepCache` package (0.1.1): we evaluated it. Its helper
(`DeepCacheSDHelper`) does import cleanly (pure Python, it imports nothing) and works beside torch 2.13 and
diffusers 0.42, but: it is one release of research code from December 2023 with no tests and no upkeep since;
it finds the step by looking each timestep up in `pipe.scheduler.timesteps` (assumes the pipeline's own
scheduler object and a positional timestep); it wraps about 50 modules' `forward` per SD 1.5 U-Net (every resnet
and attention) where eight suffice; and its `disable()` leaves a bound `forward` attribute on every one of them
instead of removing it, so the "loaded U-Net is shared and unchanged after the run" rule would need a second
pass of our own anyway. The mechanism is small (below), so we keep it here, tested on our pipelines, with our
step counting (a new timestep value starts a new step: second-order samplers and PLMS' warm-up repeat a
timestep, and those calls share the step's decision).

Applied per run as a context manager and always undone: the engine's loaded U-Net is shared across runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..core.requests import DEEP_CACHE_MIN_STEPS


class DeepCache:
    """Wraps one U-Net for one run: `with DeepCache(unet, 3): pipe(...)`. `full_calls` and `cached_calls` count
    the U-Net calls of each kind (a CFG batch is one call)."""

    def __init__(self, unet: Any, interval: int):
        self.unet = unet
        self.interval = int(interval)
        self.full_calls = 0
        self.cached_calls = 0
        self._step = -1
        self._last_t: float | None = None
        self._full = True
        self._cache: dict[int, Any] = {}
        self._patched: list[tuple[torch.nn.Module, Any]] = []  # (module, its own `forward` attribute or None)
        self._hook: Any = None

    @staticmethod
    def supports(unet: Any) -> str:
        """"" when DeepCache can wrap this U-Net, else why not (one line for the artist)."""
        from diffusers import UNet2DConditionModel

        if not isinstance(unet, UNet2DConditionModel):
            return f"Deep cache skipped: the U-Net is a {type(unet).__name__}, not a PyTorch UNet2DConditionModel"
        last = unet.up_blocks[-1] if len(unet.up_blocks) else None
        if last is None or len(getattr(last, "resnets", ())) < 2 or getattr(last, "upsamplers", None):
            return "Deep cache skipped: this U-Net's last up-block has no shallow branch to keep"
        return ""

    def _deep_modules(self) -> list[torch.nn.Module]:
        """The modules whose outputs are kept: every down-block, the mid-block, every up-block but the last, and
        the last up-block's resnets and attentions but its final ones (the shallow branch)."""
        u = self.unet
        last = u.up_blocks[-1]
        mods: list[torch.nn.Module] = [*u.down_blocks, *([u.mid_block] if u.mid_block is not None else []),
                                       *u.up_blocks[:-1], *last.resnets[:-1]]  # fmt: skip
        attentions = getattr(last, "attentions", None)
        if attentions is not None:
            mods += list(attentions[:-1])
        return mods

    def __enter__(self) -> DeepCache:
        self._hook = self.unet.register_forward_pre_hook(self._on_call, with_kwargs=True)
        for i, m in enumerate(self._deep_modules()):
            own = m.__dict__.get("forward")  # an accelerate offload hook's forward, or None (the class's)
            self._patched.append((m, own))
            m.forward = self._wrap(i, m.forward)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for m, own in reversed(self._patched):
            if own is None:
                del m.forward  # back to the class's method: the module is as it was
            else:
                m.forward = own
        self._patched.clear()
        self._cache.clear()

    def _on_call(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        value = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t) if t is not None else None
        if value is None or value != self._last_t:  # a new timestep: a new step
            self._step += 1
            self._last_t = value
        # Full on the first step of every interval (and whenever nothing is kept yet).
        self._full = self._step % self.interval == 0 or not self._cache
        if self._full:
            self.full_calls += 1
        else:
            self.cached_calls += 1
        return None

    def _wrap(self, i: int, forward):
        def cached_forward(*args, **kwargs):
            if self._full or i not in self._cache:
                self._cache[i] = forward(*args, **kwargs)
            return self._cache[i]

        return cached_forward


def deep_cache_plan(unet: Any, interval: int, steps: int) -> tuple[contextlib.AbstractContextManager, str]:
    """The context to run a pipeline in, and a one-line note ("" when none): DeepCache for `interval` >= 2 on a
    torch U-Net with at least DEEP_CACHE_MIN_STEPS steps; otherwise a context that does nothing."""
    if interval < 2:
        return contextlib.nullcontext(), ""
    if steps < DEEP_CACHE_MIN_STEPS:
        return contextlib.nullcontext(), (f"Deep cache off: {steps} steps is below {DEEP_CACHE_MIN_STEPS} "
                                          "(too few steps to reuse features without harm)")  # fmt: skip
    why = DeepCache.supports(unet)
    if why:
        return contextlib.nullcontext(), why
    return DeepCache(unet, interval), ""


@contextlib.contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts `module`'s calls while open (tests and the benchmark: which blocks ran)."""
    calls = [0]
    handle = module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()
