"""Branching a run from step k: the kept sampler state, the branch spec a request carries, what changed, its
metadata keys and the latent sidecar file (numpy only: no torch, no Qt).

Rules of a branch (the engine's studio.engine.branching follows them):
- It continues from the parent's x_t after step k (1-based), with no re-noising, on the parent's schedule: its
  steps k+1.. use the parent's timesteps and sigmas.
- Unchanged sampler, schedule and step count: the sampler's own state at step k is restored too (a multistep
  solver's history of model outputs, the generator state of an ancestral / SDE sampler), so a branch with
  nothing changed is the parent, pixel for pixel, and a changed prompt or CFG equals a run that changed them at
  step k.
- A new sampler or schedule, or another step count, continues from sigma_k: the new sampler starts fresh there
  (a multistep solver first-order, as ComfyUI's KSamplerAdvanced does at start_at_step); a new schedule or
  count re-spaces the remaining sigmas from sigma_k down to the parent's last one (sigma-based samplers only).
- A new seed seeds the noise of the remaining steps (ancestral and SDE samplers) at step k.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RequestError

# A GenerateRequest (studio.core.requests imports this module, so the type is not named here).
GenerateRequest = Any

# Our own A1111-style keys: a branch's PNG names its parent, the step and what changed.
KEY_OF, KEY_HASH, KEY_STEP, KEY_CHANGES = "Branch of", "Branch parent hash", "Branch step", "Branch changes"
BRANCH_KEYS = (KEY_OF, KEY_HASH, KEY_STEP, KEY_CHANGES)
SIDECAR_SUFFIX = ".latents.npz"
# Samplers whose step is two model calls on an interleaved schedule: a kept step is not a whole sampler state.
SECOND_ORDER = ("Heun", "DPM2", "DPM2 a", "DPM++ SDE")
# Samplers that step by a fixed stride of timesteps (or a consistency model's): they cannot take over another
# schedule from sigma_k, only continue their own run.
FIXED_GRID = ("DDIM", "PLMS", "DDPM", "LCM", "TCD")
# The fields a branch may change, by what the artist calls them.
CHANGEABLE = {"prompt": "prompt", "negative_prompt": "negative prompt", "cfg": "CFG scale", "sampler": "sampler",
              "schedule": "schedule", "seed": "seed", "loras": "LoRA weights", "steps": "steps"}  # fmt: skip


@dataclass(frozen=True, eq=False)
class SamplerState:
    """A run's sampler after one step: x_t (batch, C, h, w, the sampler's dtype), each image's noise generator
    state (uint8, torch's CPU generator), and the scheduler's per-step history (arrays, lists of them, numbers)."""

    step: int
    latent: np.ndarray = field(repr=False)
    generators: tuple[np.ndarray, ...] = field(default=(), repr=False)
    history: dict = field(default_factory=dict, repr=False)

    def image(self, i: int) -> SamplerState:
        """Image i of a batch alone (a branch continues one image)."""

        def pick(v):
            if isinstance(v, np.ndarray) and v.ndim == self.latent.ndim and v.shape[0] == self.latent.shape[0]:
                return v[i : i + 1]
            if isinstance(v, list):
                return [pick(x) for x in v]
            return v

        gens = self.generators[i : i + 1] if len(self.generators) > i else ()
        return SamplerState(self.step, self.latent[i : i + 1], gens, {k: pick(v) for k, v in self.history.items()})


@dataclass(frozen=True, eq=False)
class BranchSpec:
    """A run that branches from step `step` of a parent run (image 0 of `state`). `parent` is the parent's request
    as it ran (seed and size filled in); the branch request's own fields say what the branch changes.
    `before_latents` / `before_x0` / `before_states`: the parent's kept steps 1..k (float16), for the branch's
    timeline, and their states (so the branch can itself be branched before k); optional."""

    step: int
    state: SamplerState | None = field(repr=False)  # None: the engine re-runs the parent's first k steps for it
    parent: GenerateRequest = field(repr=False)
    parent_name: str = ""  # the parent PNG's file name
    parent_hash: str = ""  # image_hash of that file
    before_latents: np.ndarray | None = field(default=None, repr=False)
    before_x0: np.ndarray | None = field(default=None, repr=False)
    before_states: tuple[SamplerState, ...] = field(default=(), repr=False)  # the parent's states 1..k

    def same_grid(self, request: GenerateRequest) -> bool:
        """Whether the branch continues the parent's own sampler on its own schedule (its state restored)."""
        p = self.parent
        return (request.sampler, request.schedule, request.steps) == (p.sampler, p.schedule, p.steps)

    def validate(self, request: GenerateRequest) -> None:
        p, k = self.parent, self.step
        if request.mode != "txt2img" or p.mode != "txt2img":
            raise RequestError("Only a text-to-image run can be branched")
        if request.hires.runs() or p.hires.runs():
            raise RequestError("A run with the hires fix cannot be branched: branch its first pass without it")
        if request.batch != 1:
            raise RequestError("A branch continues one image: use batch 1")
        if not 1 <= k < p.steps:
            raise RequestError(f"Branch step {k} is out of range: the parent ran {p.steps} steps (use 1 to {p.steps - 1})")
        if request.steps <= k:
            raise RequestError(f"A branch at step {k} needs more than {k} steps in all, got {request.steps}")
        if request.width and request.height and (request.width, request.height) != (p.width, p.height):
            raise RequestError("A branch keeps the parent's size")
        for name in (request.sampler, p.sampler):
            if name in SECOND_ORDER:
                raise RequestError(f"{name} cannot branch: each of its steps is two model calls on an interleaved "
                                   "schedule, so a kept step is not where the sampler can resume")  # fmt: skip
        if not self.same_grid(request) and request.sampler in FIXED_GRID and (request.sampler != p.sampler or
                                                                              request.steps != p.steps):
            raise RequestError(f"{request.sampler} steps by a fixed stride of timesteps: it can continue only its own "
                               "run (same sampler and steps); pick a sigma sampler (Euler, DPM++ 2M, UniPC...)")  # fmt: skip
        if self.state is not None and self.state.latent.shape[0] != 1:
            raise RequestError("A branch continues one image: pass state.image(i)")


def changes(parent: GenerateRequest, branch: GenerateRequest) -> list[str]:
    """What the branch changes, in the artist's words ("prompt", "CFG scale"...), in CHANGEABLE's order."""
    return [label for name, label in CHANGEABLE.items() if getattr(parent, name) != getattr(branch, name)]


def image_hash(path: str | os.PathLike) -> str:
    """The parent's image hash: the first 10 hex digits of the SHA-256 of the file (as A1111's model hash)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:10]


def metadata(spec: BranchSpec, request: GenerateRequest) -> dict[str, object]:
    """The branch's metadata keys for its PNG."""
    return {KEY_OF: spec.parent_name or None, KEY_HASH: spec.parent_hash or None, KEY_STEP: spec.step,
            KEY_CHANGES: ", ".join(changes(spec.parent, request)) or "nothing"}  # fmt: skip


@dataclass(frozen=True)
class BranchInfo:
    """A branch's keys read back from its parameters text."""

    parent_name: str
    parent_hash: str
    step: int
    changes: tuple[str, ...]

    def label(self) -> str:
        return f"branch of {self.parent_name or 'an image'} at step {self.step}"


def read_info(params: dict[str, str]) -> BranchInfo | None:
    """The branch keys of parsed parameters (metadata.parse_parameters()["params"]); None for a plain run."""
    if KEY_STEP not in params:
        return None
    try:
        step = int(params[KEY_STEP].strip())
    except ValueError:
        return None
    raw = params.get(KEY_CHANGES, "").strip()
    changed = () if raw in ("", "nothing") else tuple(c.strip() for c in raw.split(",") if c.strip())
    return BranchInfo(params.get(KEY_OF, "").strip(), params.get(KEY_HASH, "").strip(), step, changed)


# ---------------------------------------------------------------------------------------------------------------
# The sidecar: every kept step's sampler state next to the PNG (`<stem>.latents.npz`), numpy's own format (no
# pickle): arrays under "s<step>.*" and one JSON skeleton of the histories.


def sidecar_path(png: str | os.PathLike) -> Path:
    p = Path(png)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def save_sidecar(png: str | os.PathLike, states: list[SamplerState]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    skeleton: dict[str, object] = {}

    def put(prefix: str, v):
        if isinstance(v, np.ndarray):
            arrays[prefix] = v
            return {"a": prefix}
        if isinstance(v, list):
            return [put(f"{prefix}.{j}", x) for j, x in enumerate(v)]
        return v

    for st in states:
        s = f"s{st.step}"
        arrays[f"{s}.latent"] = st.latent
        for i, g in enumerate(st.generators):
            arrays[f"{s}.gen{i}"] = g
        skeleton[str(st.step)] = {"gens": len(st.generators),
                                  "history": {k: put(f"{s}.h.{k}", v) for k, v in st.history.items()}}  # fmt: skip
    arrays["skeleton"] = np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8)
    path = sidecar_path(png)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle typed as a kwarg
    os.replace(tmp, path)
    return path


def load_sidecar(png: str | os.PathLike, step: int) -> SamplerState | None:
    """The kept state of `step` from the PNG's sidecar; None when there is no sidecar. RequestError when the
    sidecar lacks the step or cannot be read."""
    path = sidecar_path(png)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            skeleton = json.loads(bytes(z["skeleton"]).decode())
            entry = skeleton.get(str(step))
            if entry is None:
                raise RequestError(f"{path.name} keeps no step {step}")

            def get(v):
                if isinstance(v, dict) and set(v) == {"a"}:
                    return np.array(z[v["a"]])
                if isinstance(v, list):
                    return [get(x) for x in v]
                return v

            gens = tuple(np.array(z[f"s{step}.gen{i}"]) for i in range(entry["gens"]))
            history = {k: get(v) for k, v in entry["history"].items()}
            return SamplerState(step, np.array(z[f"s{step}.latent"]), gens, history)
    except (OSError, ValueError, KeyError) as e:
        raise RequestError(f"The latent sidecar {path.name} cannot be read: {e}") from e

