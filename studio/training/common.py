"""Shared training helpers: seeding, checkpoints, schedules, EMA, logging, and the loop around a training step."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from studio.core.errors import RequestError


class TrainingInputError(RequestError):
    """A missing or wrong input of a training command: shown as one line, exit status 2."""


def require(path: Path, what: str, hint: str) -> Path:
    """``path`` if it exists, else a clear error (diffusers would otherwise go looking for it on a hub)."""
    if not Path(path).exists():
        raise TrainingInputError(f"{what} not found: {path} ({hint})")
    return Path(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


def lr_at(step: int, total: int, warmup: int, base: float, final_frac: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``final_frac * base``."""
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def rng_state() -> dict:
    # Only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Atomic save: write to a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resume(ck: dict | None, modules: dict, opt, ema=None, what: str = "training") -> tuple[int, float]:
    """Put a checkpoint back: each module by its name, the optimizer, the EMA and the RNG streams.
    Returns (step, seconds trained); (0, 0.0) with no checkpoint."""
    if ck is None:
        return 0, 0.0
    for name, module in modules.items():
        module.load_state_dict(ck[name])
    opt.load_state_dict(ck["optimizer"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    set_rng_state(ck["rng"])
    step = int(ck["step"])
    print(f"resumed {what} at step {step}")
    return step, float(ck.get("trained_s", 0.0))


def training_state(modules: dict, opt, ema=None, **fields) -> dict:
    """What a checkpoint holds (the mirror of `resume`): each module's state by name, the optimizer, the EMA, the
    RNG streams, and the caller's fields (step, trained_s, preset...)."""
    state = {name: module.state_dict() for name, module in modules.items()}
    state.update(optimizer=opt.state_dict(), rng=rng_state(), **fields)
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


class EMA:
    """Exponential moving average of a set of parameters (with the usual warm-up of the decay)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = {
            name: {k: v.detach().clone().float() for k, v in m.state_dict().items()} for name, m in modules.items()
        }
        self.updates = 0

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, m in modules.items():
            sh = self.shadow[name]
            for k, v in m.state_dict().items():
                if v.dtype.is_floating_point:
                    sh[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
                else:
                    sh[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = state["shadow"]
        self.updates = state["updates"]


class JsonLog:
    """Appends one JSON object per line (loss curves etc.)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **row) -> None:
        row.setdefault("time", round(time.time(), 1))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class AdaptiveThreads:
    """On a shared CPU, 2 threads can be much slower than 1 when another process is busy: re-measure and
    pick the faster count every so often."""

    def __init__(self, choices=(1, 2), period: int = 150, probe: int = 8):
        self.choices = choices
        self.period = period
        self.probe = probe
        self.current = choices[0]
        self.times: dict[int, list[float]] = {c: [] for c in choices}
        self.phase_start = 0
        set_threads(self.current)

    def record(self, step: int, seconds: float) -> None:
        k = step % self.period
        n = len(self.choices)
        if k < self.probe * n:
            c = self.choices[k // self.probe]
            if k % self.probe > 1:  # skip the first steps after a switch
                self.times[c].append(seconds)
            nxt = self.choices[min(n - 1, (k + 1) // self.probe)] if k + 1 < self.probe * n else None
            if nxt is None:
                best = min(self.choices, key=lambda c: np.median(self.times[c]) if self.times[c] else 1e9)
                self.times = {c: [] for c in self.choices}
                self._set(best)
            else:
                self._set(nxt)

    def _set(self, c: int) -> None:
        if c != self.current:
            self.current = c
            torch.set_num_threads(c)


class KeepBest:
    """The best weights by a validation score, in a file of their own (``model`` and the scores' fields)."""

    def __init__(self, path: Path, module: torch.nn.Module):
        self.path, self.module = path, module
        kept = load_checkpoint(path)
        self.best = {k: v for k, v in kept.items() if k != "model"} if kept else {}

    def keep(self, scores: dict) -> None:
        self.best = scores
        save_checkpoint(self.path, {"model": self.module.state_dict(), **scores})

    def offer(self, scores: dict) -> None:
        """Keep ``scores`` (with their ``score``) and the module's weights if they beat the best so far."""
        if scores["score"] > self.best.get("score", -1e9):
            self.keep(scores)

    def restore(self) -> dict | None:
        """Put the kept weights back into the module; their fields (None when none were kept)."""
        kept = load_checkpoint(self.path)
        if not kept:
            return None
        self.module.load_state_dict(kept["model"])
        return {k: v for k, v in kept.items() if k != "model"}


class StepLoop:
    """The loop every trainer runs around its step. Iterating gives the steps under a progress bar: ``start`` to
    ``steps``, or with ``budget_s`` until that much training time is spent. A log line is due every
    ``log_every`` steps (``logs``). ``end_step`` ends each step the same way everywhere: ``validate`` every
    ``validate_every`` steps, a checkpoint (``save(steps_done)``) every ``checkpoint_every_s`` seconds of wall
    time, the stop when the budget is spent, and the stop, saved, after ``max_minutes`` of wall time since
    ``started`` (``stopped_early`` then)."""

    def __init__(
        self,
        save: Callable[[int], None],
        *,
        start: int,
        steps: int,
        desc: str,
        log_every: int,
        checkpoint_every_s: float,
        budget_s: float | None = None,
        max_minutes: float | None = None,
        started: float | None = None,
        progress: bool = True,
        stop_message: str = "stopped at step {step} (--max-minutes)",
        validate: Callable[[int], None] | None = None,
        validate_every: int = 1,
    ):
        self.save = save
        self.steps, self.budget_s, self.max_minutes = steps, budget_s, max_minutes
        self.log_every, self.checkpoint_every_s, self.stop_message = log_every, checkpoint_every_s, stop_message
        self.validate, self.validate_every = validate, validate_every
        it = itertools.count(start) if budget_s else range(start, steps)
        self.bar = tqdm(it, initial=start, total=None if budget_s else steps, desc=desc, disable=not progress,
                        mininterval=5)
        self.last_save = time.time()
        self.started = time.time() if started is None else started
        self.stop = self.stopped_early = False

    def __iter__(self) -> Iterator[int]:
        for step in self.bar:
            yield step
            if self.stop:
                return

    def lr(self, step: int, base: float, warmup: int, trained_s: float = 0.0) -> float:
        """``lr_at`` over the steps or, with a time budget, over the share of it spent (the warm-up still by
        steps): a shared CPU's speed is unpredictable."""
        if self.budget_s:
            return lr_at(int(trained_s / self.budget_s * 100_000), 100_000, 0, base) * min(1.0, (step + 1) / warmup)
        return lr_at(step, self.steps, warmup, base)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0

    def end_step(self, step: int, trained_s: float = 0.0) -> None:
        if self.validate is not None and step % self.validate_every == self.validate_every - 1:
            self.validate(step + 1)
        if time.time() - self.last_save > self.checkpoint_every_s:
            self.save(step + 1)
            self.last_save = time.time()
        if self.budget_s and trained_s >= self.budget_s:
            self.stop = True
        elif self.max_minutes is not None and time.time() - self.started > self.max_minutes * 60:
            self.save(step + 1)
            print(self.stop_message.format(step=step + 1))
            self.stop = self.stopped_early = True
