"""Branching a run from step k inside a diffusers pipeline (the rules: studio.core.branch).

Two pieces: `capture` keeps a scheduler's whole state after each step (x_t, its per-step history, the noise
generators' states), and `BranchRun` makes a pipeline call continue from a kept state: the pipeline's loop runs
only the steps after k, `prepare_latents` hands it the kept x_t as it is (no multiplication by init_noise_sigma,
no re-noising), and the scheduler starts at step index k of the parent's schedule with its history restored.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..core.branch import BranchSpec, SamplerState
from ..core.errors import RequestError
from ..core.requests import GenerateRequest
from .schedulers import build_scheduler

# Everything a diffusers scheduler changes from one step to the next besides its step index: the multistep
# solvers' model outputs (DPM++, UniPC), UniPC's corrector input and order, PLMS's history, LMS's derivatives.
HISTORY_KEYS = ("model_outputs", "timestep_list", "lower_order_nums", "last_sample", "this_order", "ets", "counter",
                "cur_model_output", "cur_sample", "derivatives")  # fmt: skip


def _to_numpy(v):
    if isinstance(v, torch.Tensor):
        return v.detach().to("cpu").numpy().copy()
    if isinstance(v, list):
        return [_to_numpy(x) for x in v]
    return v


def _to_torch(v, device):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.copy()).to(device)
    if isinstance(v, list):
        return [_to_torch(x, device) for x in v]
    return v


def capture(scheduler, step: int, latents: torch.Tensor, generators) -> SamplerState:
    """The sampler's state after `step` (1-based): x_t at full precision, the history, each image's generator."""
    state = vars(scheduler)
    history = {k: _to_numpy(state[k]) for k in HISTORY_KEYS if k in state}
    gens = tuple(g.get_state().numpy().copy() for g in generators or () if g.device.type == "cpu")
    return SamplerState(step, latents.detach().to("cpu").numpy().copy(), gens, history)


def _sigma_table(scheduler) -> np.ndarray:
    ac = scheduler.alphas_cumprod.detach().cpu().double().numpy()
    return np.sqrt((1 - ac) / ac)


def _grid(scheduler, steps: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A scheduler's (timesteps, sigmas) after set_timesteps, from its first real step; and the index of that
    step in its timesteps (PLMS warms up with one extra call)."""
    t = scheduler.timesteps.detach().cpu().double().numpy()
    warmup = len(t) - steps
    t = t[warmup:]
    sig = getattr(scheduler, "sigmas", None)
    if sig is not None and len(sig) == len(t) + 1 + warmup:
        sigmas = sig.detach().cpu().double().numpy()[warmup:]
    else:  # a timestep-only sampler (DDIM, PLMS): its sigmas from the model's noise table, ending at 0
        table = _sigma_table(scheduler)
        sigmas = np.append(np.interp(t, np.arange(len(table)), table), 0.0)
    return t, sigmas, warmup


def _respace(scheduler, schedule: str, sigma_hi: float, sigma_lo: float, m: int):
    """m steps from sigma_hi down to sigma_lo by the schedule's rule (then 0): Karras (rho 7), Exponential (even
    in log sigma), else the model's own spacing (even in timesteps). Returns (timesteps, sigmas + [0])."""
    table = _sigma_table(scheduler)
    log_table = np.log(table)
    ts = np.arange(len(table), dtype=np.float64)
    if schedule == "Karras":
        ramp = np.linspace(0, 1, m)
        rho = 7.0
        lo, hi = sigma_lo ** (1 / rho), sigma_hi ** (1 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
    elif schedule == "Exponential":
        sig = np.exp(np.linspace(math.log(sigma_hi), math.log(sigma_lo), m))
    else:
        t_hi, t_lo = (float(np.interp(math.log(x), log_table, ts)) for x in (sigma_hi, sigma_lo))
        sig = np.exp(np.interp(np.linspace(t_hi, t_lo, m), ts, log_table))
    sig[0] = sigma_hi  # the kept latent's own noise level, exactly
    t = np.interp(np.log(sig), log_table, ts)
    return t, np.append(sig, 0.0)


class BranchRun:
    """Installs, for one pipeline call, the hooks that make it continue `spec` (restore() takes them out)."""

    def __init__(self, spec: BranchSpec, request: GenerateRequest, pipe, scheduler, base_config, generators=()):
        self.spec, self.request, self.pipe, self.scheduler = spec, request, pipe, scheduler
        self.generators = list(generators or ())
        self.start = 0
        if spec.state is None:
            raise RequestError("The branch has no kept state of its parent's step")
        self.state: SamplerState = spec.state
        self.base_config = base_config
        self.same = spec.same_grid(request)
        self.full: torch.Tensor | None = None
        self.device = torch.device("cpu")
        sched = scheduler
        if not self.same and not hasattr(sched, "set_begin_index"):
            raise RequestError(f"{request.sampler} cannot take over another run's schedule")
        orig = sched.set_timesteps

        @functools.wraps(orig)
        def set_timesteps(*args, **kwargs):
            orig(*args, **kwargs)
            self._place_grid()

        sched.set_timesteps = set_timesteps  # instance attributes: only this run's objects change
        self._orig_prepare = pipe.prepare_latents
        pipe.prepare_latents = self._prepare_latents
        orig_scale = sched.scale_model_input

        @functools.wraps(orig_scale)
        def scale_model_input(*args, **kwargs):
            # The first step's: the pipeline has drawn all it draws before the loop (the initial noise, an
            # inpainting model's sampled image latents) as the parent did; from here on, the parent's generator.
            if sched.__dict__.pop("scale_model_input", None) is not None:
                restore_generators(self.generators, self.spec, self.request)
            return orig_scale(*args, **kwargs)

        sched.scale_model_input = scale_model_input

    def restore(self) -> None:
        self.scheduler.__dict__.pop("set_timesteps", None)
        self.scheduler.__dict__.pop("scale_model_input", None)
        self.pipe.__dict__.pop("prepare_latents", None)

    def _place_grid(self) -> None:
        sched, k = self.scheduler, self.spec.step
        self.device = sched.timesteps.device
        if self.same:
            warmup = len(sched.timesteps) - self.request.steps
            start = warmup + k
            self.full = sched.timesteps
        else:
            self.full = self._new_grid()
            start = k
        self.start = start
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        # The pipeline loops over what set_timesteps leaves here: the steps after k. The scheduler gets its whole
        # schedule back in prepare_latents, before its first use (its final-step rules count the whole run).
        sched.timesteps = self.full[start:]

    def _new_grid(self) -> torch.Tensor:
        """A new sampler, schedule or step count: continue from the parent's sigma_k (core.branch's rules)."""
        sched, spec, r = self.scheduler, self.spec, self.request
        p, k = spec.parent, spec.step
        parent = build_scheduler(self.base_config, p.sampler, p.schedule)
        parent.set_timesteps(p.steps, device="cpu")
        pt, psig, _ = _grid(parent, p.steps)
        m = r.steps - k
        if r.schedule == p.schedule and m == p.steps - k:
            t, sig = pt[k:], psig[k:]  # the parent's own remaining grid
        else:
            nonzero = psig[psig > 0]
            t, sig = _respace(parent, r.schedule, float(psig[k]), float(nonzero[-1]), m)
        full_t = np.concatenate([pt[:k], t]) if len(pt) >= k else t
        full_sig = np.concatenate([psig[:k], sig])
        old = getattr(sched, "sigmas", None)
        sig_device = old.device if isinstance(old, torch.Tensor) else torch.device("cpu")
        sched.sigmas = torch.from_numpy(full_sig.astype(np.float32)).to(sig_device)
        sched.num_inference_steps = r.steps
        return torch.from_numpy(full_t.astype(np.float32)).to(self.device)

    def _restore_history(self) -> None:
        for key, value in self.state.history.items():
            setattr(self.scheduler, key, _to_torch(value, self.device))

    def _prepare_latents(self, *args, **kwargs):
        """The pipeline's own prepare_latents (its outputs' shape: the inpainting pipeline, which runs a 9-channel
        model's text to image, returns the noise too), with the kept x_t in place of the initial latents; then the
        scheduler's whole schedule from step k and its history (the parent's generator state: at the first step)."""
        sched, state = self.scheduler, self.state
        out = self._orig_prepare(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        latent = torch.from_numpy(np.array(state.latent, copy=True)).to(first.device, first.dtype)
        sched.timesteps = self.full
        if hasattr(sched, "set_begin_index"):  # img2img-style pipelines set their own (0) after set_timesteps
            sched.set_begin_index(self.start)
        if self.same:  # the parent's sampler continues: its history as it was after step k
            self._restore_history()
        return (latent, *out[1:]) if isinstance(out, tuple) else latent


def restore_generators(generators, spec: BranchSpec, request: GenerateRequest) -> None:
    """The parent's seed: the noise of the steps after k is what the parent drew there (its generator state after
    step k). A new seed: the generators as seeded (fresh at step k)."""
    if spec.state is None or request.seed != spec.parent.seed or not spec.state.generators:
        return
    for g, s in zip(generators, spec.state.generators, strict=False):
        g.set_state(torch.from_numpy(np.array(s, dtype=np.uint8)))
