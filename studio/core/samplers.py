"""Samplers as data: the names artists know -> a diffusers scheduler class and its overrides.

Pure Python at import time (the UI reads the names); diffusers is imported only to build one.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError


@dataclass(frozen=True)
class Sampler:
    name: str
    cls: str  # diffusers scheduler class name
    overrides: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ("Normal", "Karras", "Exponential", "SGM Uniform")
    needs: str | None = None  # an optional module it needs
    fallback: tuple[str, dict[str, Any]] | None = None  # used when `needs` is missing
    # The pipelines pass their `eta` call argument to scheduler.step (0.0 unless given); TCD's stochasticity
    # ("gamma" in the TCD paper) is that argument, so the sampler carries the value its authors recommend.
    eta: float | None = None


_SIGMA_SCHEDULES = ("Normal", "Karras", "Exponential", "SGM Uniform")
_PLAIN = ("Normal", "SGM Uniform")  # schedulers without a sigma-schedule choice

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("Euler", "EulerDiscreteScheduler"),
        Sampler("Euler a", "EulerAncestralDiscreteScheduler", schedules=_PLAIN),
        Sampler("Heun", "HeunDiscreteScheduler"),
        Sampler("LMS", "LMSDiscreteScheduler"),
        Sampler("DPM2", "KDPM2DiscreteScheduler"),
        Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        Sampler(
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        ),
        Sampler(
            "DPM++ SDE",
            "DPMSolverSDEScheduler",
            needs="torchsde",
            fallback=("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++"}),
        ),
        Sampler("UniPC", "UniPCMultistepScheduler"),
        Sampler("DDIM", "DDIMScheduler", {"set_alpha_to_one": False}, schedules=_PLAIN),
        Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, schedules=_PLAIN),
        Sampler("DDPM", "DDPMScheduler", schedules=_PLAIN),
        # Few-step samplers. LCM and TCD pick their own timesteps from the distillation's 50-step skeleton (their
        # timestep_spacing is unused): both schedules are the scheduler's own. Turbo (Euler a), Lightning (Euler)
        # and Hyper-SD (DDIM) use the samplers above with SGM Uniform (diffusers' "trailing" spacing).
        Sampler("LCM", "LCMScheduler", schedules=_PLAIN),
        Sampler("TCD", "TCDScheduler", schedules=_PLAIN, eta=0.3),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
SCHEDULE_NAMES: tuple[str, ...] = _SIGMA_SCHEDULES
# The panel's and the CLI's default. Euler, not A1111's "Euler a": deterministic, and the one the built-in model is
# measured with (held-out colour 100% with Euler, 80% with Euler a, whose fresh noise at every step drifts this small
# model's colours). GenerateRequest keeps "Euler a" as its bare default, A1111's, which PNG texts without a Sampler
# key mean.
DEFAULT_SAMPLER = "Euler"
DEFAULT_SCHEDULE = "Normal"

SCHEDULE_OVERRIDES: dict[str, dict[str, Any]] = {
    "Normal": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}

# A1111 writes combined names ("DPM++ 2M Karras"); A1111 also calls some samplers differently.
_ALIASES = {
    "euler_a": "Euler a",
    "euler a": "Euler a",
    "k_euler_a": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "k_dpmpp_2m": "DPM++ 2M",
    "dpm++ 2m sde": "DPM++ 2M SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
    "lcm": "LCM",
    "tcd": "TCD",
}


def resolve_sampler(name: str) -> Sampler:
    """Find a sampler by its name, case-insensitively; a clear error lists the known names."""
    key = name.strip()
    if key in SAMPLERS:
        return SAMPLERS[key]
    lower = {n.lower(): n for n in SAMPLERS}
    if key.lower() in lower:
        return SAMPLERS[lower[key.lower()]]
    if key.lower() in _ALIASES:
        return SAMPLERS[_ALIASES[key.lower()]]
    raise RequestError(f"Unknown sampler {name!r}. Known samplers: {', '.join(SAMPLER_NAMES)}")


def resolve_schedule(name: str) -> str:
    if name in ("", "Automatic", "Default", None):
        return "Normal"
    for s in SCHEDULE_NAMES:
        if s.lower() == name.strip().lower():
            return s
    raise RequestError(f"Unknown schedule {name!r}. Known schedules: {', '.join(SCHEDULE_NAMES)}")


def scheduler_spec(sampler: str, schedule: str = "Normal") -> tuple[str, dict[str, Any]]:
    """The diffusers class name and the overrides for a sampler + schedule."""
    s = resolve_sampler(sampler)
    sched = resolve_schedule(schedule)
    if sched not in s.schedules:
        raise RequestError(
            f"The {s.name} sampler has no {sched} schedule; use one of: {', '.join(s.schedules)}"
        )
    cls, overrides = s.cls, dict(s.overrides)
    if s.needs and importlib.util.find_spec(s.needs) is None and s.fallback:
        cls, overrides = s.fallback[0], dict(s.fallback[1])
    overrides.update(SCHEDULE_OVERRIDES[sched])
    return cls, overrides


def sampler_eta(sampler: str) -> float | None:
    """The `eta` the pipeline passes to this sampler's step (TCD's gamma), or None for the pipeline's default."""
    return resolve_sampler(sampler).eta
