"""Torch U-Net -> OpenVINO IR in the cache folder: traced once per cache key, written atomically, cancellable.

Why a worker thread that the caller may stop waiting for (and not a subprocess): the U-Net to convert is the one
in this process, LoRAs already applied; a subprocess would have to be given its 3.4 GB of weights (a copy on disk
or a fork of a process with live thread pools, which libgomp does not survive reliably). In a thread,
`ov.convert_model` shares the torch weights instead of copying them. Cancel is then prompt in two ways: during the
trace (the first half of the conversion, Python-driven) forward pre-hooks on every submodule raise in the worker
thread, so the trace ends within one submodule's forward; during OpenVINO's own graph conversion and the save
(native calls that cannot be interrupted) the caller returns at once (it polls every 0.1 s) and the abandoned
worker, once its native call returns, deletes its temporary folder instead of renaming it into place. Measured on
the tiny test U-Net: Cancelled is raised within 0.1 s of the event, in either phase.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..steps import Cancelled
from . import cache
from .errors import TurboUnavailable, one_line

Progress = Callable[[float, str], None]

# How many conversions this process ran (tests: a cache hit converts nothing).
conversions = 0
# The share of the conversion's progress bar given to the trace (the rest: OpenVINO's conversion and the save).
TRACE_SHARE = 0.5
# ov.convert_model runs the module's forward this many times while tracing (once to see the outputs, once traced,
# once to check the trace): the progress estimate's denominator; a different count only makes the bar less even.
TRACE_PASSES = 3


def input_names(config) -> list[str]:
    """The converted model's inputs, in order: what the U-Net's config says its forward needs."""
    if getattr(config, "num_class_embeds", None) or getattr(config, "class_embed_type", None):
        raise TurboUnavailable("Turbo does not support this U-Net (class labels, as the x4 upscaler's)")
    if getattr(config, "addition_embed_type", None) not in (None, "text_time"):
        raise TurboUnavailable(f"Turbo does not support this U-Net ({config.addition_embed_type} embeddings)")
    names = ["sample", "timestep", "encoder_hidden_states"]
    if getattr(config, "time_cond_proj_dim", None) is not None:
        names.append("timestep_cond")  # LCM-distilled U-Nets: the guidance-scale embedding
    if config.addition_embed_type == "text_time":
        names += ["text_embeds", "time_ids"]  # SDXL's added_cond_kwargs
    return names


class Traceable(torch.nn.Module):
    """The U-Net with positional tensor inputs and one tensor output, so the trace is clean (no dicts, no None)."""

    def __init__(self, unet: torch.nn.Module, names: list[str]):
        super().__init__()
        self.unet = unet
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype  # inputs and output stay f32 whatever the U-Net holds
        a = {n: x if n == "timestep" else x.to(dtype) for n, x in zip(self.names, inputs, strict=True)}
        added = {k: a.pop(k) for k in ("text_embeds", "time_ids") if k in a}
        out = self.unet(
            a.pop("sample"), a.pop("timestep"), a.pop("encoder_hidden_states"),
            added_cond_kwargs=added or None, return_dict=False, **a,
        )
        return out[0].float()


def example_inputs(unet: torch.nn.Module, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Small inputs for the trace: the graph does not depend on the spatial size (reshaped later per run) as long
    as the latent side divides by the U-Net's total upsampling, so the trace takes the same branches as runs."""
    c = unet.config
    up = 2 ** (len(c.block_out_channels) - 1)
    side = max(8, 2 * up)
    g = torch.Generator().manual_seed(0)
    shapes = {
        "sample": lambda: (2, c.in_channels, side, side),
        "encoder_hidden_states": lambda: (2, 77, c.cross_attention_dim),
        "timestep_cond": lambda: (2, c.time_cond_proj_dim),
        "text_embeds": lambda: (2, _pooled_dim(unet)),
        "time_ids": lambda: (2, 6),
    }
    out = []
    for n in names:
        if n == "timestep":
            out.append(torch.full((2,), 500.0))
        else:
            out.append(torch.randn(shapes[n](), generator=g))
    return tuple(out)


def _pooled_dim(unet) -> int:
    c = unet.config
    return int(c.projection_class_embeddings_input_dim) - 6 * int(c.addition_time_embed_dim)


class _Abandoned(Exception):
    pass


class Job:
    """One conversion on its worker thread. `abandoned`: nobody waits for it any more (cancel); it then removes
    its temporary folder and stops at the next submodule if it is still tracing."""

    def __init__(self, unet: torch.nn.Module, final: Path, key: str, precision: str, ov) -> None:
        self.unet, self.final, self.key, self.precision, self.ov = unet, final, key, precision, ov
        self.tmp = final.parent / f"{cache.TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        self.lock = threading.Lock()
        self.abandoned = False
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.progress = (0.0, "Converting the U-Net")
        # Every stage as it begins, so the caller's poll (every 0.1 s) says each one even when a stage is shorter.
        self.stages: list[tuple[float, str]] = [self.progress]
        self.started = time.perf_counter()
        self.native_since: float | None = None
        self.timings: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name="turbo-convert", daemon=True)

    def _run(self) -> None:
        global conversions
        try:
            conversions += 1
            self._convert()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            self.error = e
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self.unet = None  # type: ignore[assignment]  # the job may outlive the run: hold no weights
            self.done.set()

    def _convert(self) -> None:
        ov = self.ov
        unet = self.unet
        names = input_names(unet.config)
        example = example_inputs(unet, names)
        me = threading.get_ident()
        modules = list(unet.modules())
        calls = 0

        def hook(_module, _args):
            nonlocal calls
            if threading.get_ident() != me:
                return  # the same U-Net may run elsewhere (an exact run) meanwhile: only the trace counts
            if self.abandoned:
                raise _Abandoned()
            calls += 1
            f = min(calls / (TRACE_PASSES * len(modules)), 1.0)
            if calls == 1:
                self._stage(0.0, "Converting the U-Net: tracing")
            self.progress = (TRACE_SHARE * f, "Converting the U-Net: tracing")

        passes = 0

        def output_hook(_module, _args, _out):
            nonlocal passes
            # After the last traced pass OpenVINO's native conversion starts (no progress from inside it).
            if threading.get_ident() == me:
                passes += 1
                if passes == TRACE_PASSES:
                    self.native_since = time.perf_counter()

        handles = [m.register_forward_pre_hook(hook) for m in modules]
        handles.append(unet.register_forward_hook(output_hook))
        t = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches
                model = ov.convert_model(Traceable(unet, names), example_input=example)
        finally:
            for h in handles:
                h.remove()
        self.timings["convert_s"] = time.perf_counter() - t
        self._check()
        self._stage(0.85, "Converting the U-Net: saving")
        self.native_since = None
        t = time.perf_counter()
        self.tmp.mkdir(parents=True)
        # f32 weights whatever the run's precision: one IR serves turbo (compiled with the bf16 hint) and exact
        # mode (the f32 hint, within 1/255 of plain diffusers), so exact gains OpenVINO's speed without a second
        # conversion. f16-compressed weights would halve the disk (1.7 GB instead of 3.4 for SD 1.5) but put
        # exact's pixels off by their rounding.
        ov.save_model(model, str(self.tmp / "unet.xml"), compress_to_fp16=False)
        del model
        self.timings["save_s"] = time.perf_counter() - t
        meta = {"key": self.key, "precision": self.precision, "inputs": names, "openvino": ov.get_version(),
                **self.timings}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        with self.lock:
            self._check()
            if self.final.exists():  # another process converted the same key meanwhile: keep theirs
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                self.tmp.rename(self.final)
        self.progress = (1.0, "Converting the U-Net: done")

    def _stage(self, fraction: float, text: str) -> None:
        self.progress = (fraction, text)
        self.stages.append(self.progress)

    def current_progress(self) -> tuple[float, str]:
        """The progress to show. While OpenVINO converts natively (about as long as the trace took, measured on
        SD 1.5: 2.5 and 3 min) the bar creeps on by the clock, so that the artist sees it is still working."""
        since = self.native_since
        if since is None:
            return self.progress
        expected = max(since - self.started, 1.0) * 1.2
        f = 1 - 0.5 ** ((time.perf_counter() - since) / (expected / 2))  # half-way at half the expected time
        return (TRACE_SHARE + (0.85 - TRACE_SHARE) * 0.95 * f, "Converting the U-Net: building the OpenVINO model")

    def _check(self) -> None:
        if self.abandoned:
            raise _Abandoned()

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True


_jobs: dict[Path, Job] = {}
_jobs_lock = threading.Lock()


def ensure_converted(unet: torch.nn.Module, cache_key: str, precision: str, ov, on_progress: Progress | None,
                     cancel: threading.Event | None) -> Path:
    """The cache folder holding this key's IR, converting first if it is not there; Cancelled on `cancel`."""
    final = cache.entry_dir(cache_key, ov.get_version())
    if cache.is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        job = _job_for(unet, final, cache_key, precision, ov)
        last: tuple[float, str] | None = None
        said = 0  # how many of the job's stages were reported

        def report(job: Job = job) -> None:
            nonlocal last, said
            if on_progress is None:
                return
            while said < len(job.stages):  # each stage once, in order, however short it was
                stage = job.stages[said]
                said += 1
                if last is None or stage[1] != last[1]:
                    last = (max(stage[0], last[0]) if last else stage[0], stage[1])
                    on_progress(*last)
            now = job.current_progress()
            if last is None or now[1] != last[1] or now[0] - last[0] >= 0.01:
                last = (max(now[0], last[0]) if last else now[0], now[1])
                on_progress(*last)

        while not job.done.wait(0.1):
            if cancel is not None and cancel.is_set():
                job.abandon()
                raise Cancelled()
            report()
        report()
        if isinstance(job.error, _Abandoned) and not (cancel is not None and cancel.is_set()):
            continue  # an earlier run's cancelled conversion ended as we joined it: convert afresh
        break
    if job.error is not None:
        if isinstance(job.error, _Abandoned):
            raise Cancelled()
        if isinstance(job.error, TurboUnavailable):
            raise job.error
        raise one_line("OpenVINO failed to convert the U-Net", job.error) from job.error
    if on_progress is not None:
        on_progress(1.0, "Converting the U-Net: done")
    return final


def _job_for(unet, final: Path, cache_key: str, precision: str, ov) -> Job:
    with _jobs_lock:
        job = _jobs.get(final)
        if job is not None and not job.done.is_set():
            with job.lock:
                job.abandoned = False  # a cancelled conversion still running: wait for it instead of starting over
            return job
        job = Job(unet, final, cache_key, precision, ov)
        _jobs[final] = job
        job.thread.start()
        return job
