"""Shared training helpers: seeding, checkpoints, schedules, EMA, logging."""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

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
