"""Building diffusers schedulers from the sampler table (imports diffusers; studio.core.samplers stays pure data)."""

from __future__ import annotations

from typing import Any

from ..core.samplers import scheduler_spec


def build_scheduler(base_config: Any, sampler: str, schedule: str = "Normal", seed: int | None = None):
    """A fresh scheduler from the model's own config (betas, prediction_type kept) plus overrides."""
    import diffusers

    cls_name, overrides = scheduler_spec(sampler, schedule)
    if cls_name == "DPMSolverSDEScheduler" and seed is not None:
        overrides["noise_sampler_seed"] = seed  # its Brownian tree is otherwise seeded at random
    cls = getattr(diffusers, cls_name)
    return cls.from_config(base_config, **overrides)
