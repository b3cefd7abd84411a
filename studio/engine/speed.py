"""What each speed mode (studio.core.speed) means on this device, decided once per run.

exact  the U-Net in channels_last on CUDA; on a CPU contiguous, as plain diffusers runs it (channels_last measured
       0.95-1.01x on a quiet machine from 256 to 768 px; DESIGN.md's 1.22x was a loaded machine's), the VAE
       contiguous (channels_last made it slower). On a CPU where turbo's conversion
       of the model and LoRA set is cached (one f32 IR serves both modes), the U-Net runs on OpenVINO with the f32
       precision hint instead: 1.64x plain diffusers per U-Net call at 512 px under load (1.11-1.25x per call and
       1.16x per step on a quiet machine, where plain fp32 already runs near the cores' peak), 2.6-2.8x at 256 px
       under load (1.48x quiet), within 5e-6.
       Exact starts that conversion itself (turbo's job: progress, cancel) only when the run asks for it
       (GenerateRequest.prepare_exact: the artist's remembered opt-in, minutes and gigabytes once per model);
       otherwise a turbo run of the model makes it, once. No torch-only setting reaches 1.15x at 512 px (README:
       channels_last 0.92x there on a quiet machine, one thread 0.52x, SDPA math 0.52x).
fast   a CPU with native bf16 (AMX or AVX512-BF16): a bf16 copy of the U-Net (made once per model and LoRA set)
       and the VAE decode under bf16 autocast, their outputs handed back in fp32, so the scheduler's math and CFG
       stay fp32. A GPU already runs fp16 (the
       engine's dtype there): fast is that. A CPU without native bf16 runs exact and says why (bf16 is slower
       than fp32 there).
turbo  the U-Net compiled with OpenVINO (studio.engine.turbo, bf16 where the CPU has it), swapped into the run's
       pipeline after its LoRAs are applied and swapped back after the run; where OpenVINO is missing or fails,
       the run goes on in the best other mode and says why in one line.

torch.compile is an opt-in on CUDA (STUDIO_COMPILE=1): the U-Net is compiled in place once per loaded model.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.requests import StepInfo
from ..core.speed import DEFAULT_SPEED, METADATA_KEY

log = logging.getLogger(__name__)
# How many runs' exact mode ran on OpenVINO f32 (tests: the path is really taken).
exact_openvino_runs = 0
Progress = Callable[[StepInfo], None]
__all__ = ["METADATA_KEY", "SpeedPlan", "default_speed", "native_bf16", "plan_speed", "prepare_model"]


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16): only there is bf16 faster than fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails is a CPU without it
            continue
    return False


def default_speed(device: torch.device) -> str:
    """The window's default on this device: fast where it changes the arithmetic at a measured gain (a bf16 CPU:
    about 1.5x for a few 1/255), else exact (a GPU is fp16 in both; a CPU without bf16 would run fast as exact).
    Turbo is never the default: its first run converts the model (minutes, gigabytes on disk)."""
    return "fast" if device.type == "cpu" and native_bf16() else DEFAULT_SPEED


def compile_setting(device_type: str) -> tuple[bool, str]:
    """STUDIO_COMPILE=1: torch.compile the U-Net, on CUDA only. (compile it, the line that says why not)."""
    if os.environ.get("STUDIO_COMPILE", "").strip().lower() not in ("1", "true", "yes", "on"):
        return False, ""
    if device_type != "cuda":
        return False, (f"STUDIO_COMPILE is for CUDA GPUs: on {device_type} it stays off (minutes of compile per "
                       "size for about channels_last's gain)")  # fmt: skip
    return True, ""


def prepare_model(model: Any, device: torch.device) -> None:
    """Once per loaded model: the U-Net in channels_last on CUDA (exact), compiled on CUDA when STUDIO_COMPILE
    asks. On a CPU the fp32 U-Net stays contiguous, as plain diffusers has it: measured on a quiet machine
    (README, Speed modes) channels_last gave 0.95-1.01x from 256 to 768 px, so it bought nothing and moved the
    output by ~5e-6; contiguous, exact on torch is plain diffusers' arithmetic itself. Fast's bf16 copy is made
    channels_last (`half_copy`: 1.17-1.27x there). The VAE stays contiguous."""
    unet = getattr(model.base, "unet", None)
    if unet is None or getattr(unet, "_studio_prepared", False):
        return
    if device.type == "cuda" or (device.type == "cpu" and unet.dtype != torch.float32):
        unet.to(memory_format=torch.channels_last)  # CUDA (and its fp16 path tested on the CPU)
    compile_it, _ = compile_setting(device.type)
    if compile_it:
        t0 = time.perf_counter()
        unet.compile()  # in place: the pipelines keep the same module; each new shape compiles once, lazily
        log.info("torch.compile set on the U-Net (%.1f s; each new size compiles at its first step)",
                 time.perf_counter() - t0)  # fmt: skip
    object.__setattr__(unet, "_studio_prepared", True)


class HalfPrecisionUNet(torch.nn.Module):
    """A half-precision copy of a U-Net behind the fp32 face the pipelines know: inputs cast to its dtype, outputs
    back to fp32, so the latents, the sampler's math and CFG stay fp32. `dtype` says float32 (the pipelines make
    their latents in it); config, device, add_embedding... are the copy's.

    Measured on the SD 1.5 U-Net here (bf16 CPU, 256 px): an eager bf16 copy 1.6x the fp32 U-Net, bf16 autocast
    on the fp32 one only 1.15x (it casts every weight at every call): the copy is worth its memory (half the
    U-Net's fp32 size)."""

    def __init__(self, half: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.unet = half
        self._half = dtype

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def forward(self, *args, **kwargs):
        return _to_float32(self.unet(*_cast(args, self._half), **_cast(kwargs, self._half)))


def _cast(x, dtype: torch.dtype):
    """Floating tensors (in tuples, lists and dicts: SDXL's added_cond_kwargs) to `dtype`; the rest as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def half_copy(unet: torch.nn.Module, dtype: torch.dtype, tag: str = "") -> torch.nn.Module:
    """A `dtype` copy of `unet` in channels_last (LoRA adapters as they are set now), made once per `tag` (the
    LoRA signature) and kept on the U-Net; another tag replaces it. Each weight is converted as it is copied: the
    peak is the copy's size, not a second fp32 U-Net."""
    cached = getattr(unet, "_studio_half", None)
    if cached is not None and cached[:2] == (tag, dtype):
        return cached[2]
    object.__setattr__(unet, "_studio_half", None)  # the old copy goes first
    t0 = time.perf_counter()
    memo: dict[int, Any] = {}
    for name in ("_studio_loras", "_studio_half"):  # the LoRA set holds the pipeline: shared, not copied
        if name in unet.__dict__:
            memo[id(unet.__dict__[name])] = unet.__dict__[name]
    with torch.no_grad():
        for p in unet.parameters():
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype) if p.is_floating_point() else p.detach(),
                                             requires_grad=False)  # fmt: skip
        for b in unet.buffers():
            memo[id(b)] = b.detach().to(dtype) if b.is_floating_point() else b.detach().clone()
        half = copy.deepcopy(unet, memo)
    for name in ("_studio_loras", "_studio_half"):
        half.__dict__.pop(name, None)
    half.to(memory_format=torch.channels_last)  # bf16 on a CPU: 1.27x at 512 px, 1.17x at 256 over contiguous
    object.__setattr__(unet, "_studio_half", (tag, dtype, half))
    log.info("a %s copy of the U-Net for fast mode (%.1f s)", dtype, time.perf_counter() - t0)
    return half


def _to_float32(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, tuple):
        return tuple(_to_float32(o) for o in out)
    if hasattr(out, "sample"):
        out.sample = out.sample.float()
    return out


@dataclass
class SpeedPlan:
    """One run's speed: the mode asked, the one used, why they differ (one line), and what to put on the
    pipeline. `apply(pipe)` swaps the run's U-Net in, `restore()` puts the loaded one back."""

    asked: str
    used: str
    notice: str = ""
    unet_half: torch.dtype | None = None  # run a copy of the U-Net in this dtype (fast on a bf16 CPU)
    decode_autocast: torch.dtype | None = None  # the VAE decode likewise
    turbo: bool = False
    exact_openvino: bool = False  # exact on a CPU: OpenVINO f32 when turbo's conversion of this model is cached
    exact_prepare: bool = False  # ... and convert it first when it is not (the request's prepare_exact)
    backend: str = "torch"  # what ran the U-Net: torch, "openvino f32" (exact) or "openvino" (turbo)
    _swapped: list[tuple[Any, Any]] = field(default_factory=list)

    def apply(self, pipe: Any, model: Any, device: torch.device, on_step: Progress | None = None, total: int = 0,
              cancel: threading.Event | None = None, t0: float | None = None) -> None:  # fmt: skip
        """Swap this run's U-Net into `pipe` (after the run's LoRAs are on it). Turbo prepares here: its progress
        goes to `on_step` as a phase; steps.Cancelled when `cancel` is set meanwhile."""
        if not self.turbo and self.unet_half is None and not self.exact_openvino:
            return  # exact: the loaded U-Net as it is
        unet = getattr(pipe, "unet", None)
        if unet is None:  # a pipeline without a U-Net to swap (a stand-in): it runs as it is
            return
        replacement = None
        if self.exact_openvino:
            replacement = self._exact_openvino(unet, pipe, model, on_step, total, cancel, t0)
        if self.turbo:
            replacement = self._turbo(unet, pipe, model, on_step, total, cancel, t0)
        if replacement is None and self.unet_half is not None:
            half = half_copy(unet, self.unet_half, lora_signature(pipe))
            replacement = HalfPrecisionUNet(half, self.unet_half)
        if replacement is not None:
            self._swapped.append((pipe, unet))
            _set_unet(pipe, replacement)

    def restore(self) -> None:
        while self._swapped:
            pipe, unet = self._swapped.pop()
            _set_unet(pipe, unet)

    def _exact_openvino(self, unet, pipe, model, on_step, total, cancel, t0):
        """OpenVINO f32 on turbo's IR of this model and LoRA set (per step at 512 px on the project's CPU: 1.16x plain
        diffusers idle, 1.6x under load; 2.6-2.8x at 256 px under load; within 1/255 after 20 steps), or None: the torch U-Net (not converted and
        not asked to prepare; OpenVINO missing or failing: one line). `exact_prepare`: convert first when the IR is
        missing (turbo's conversion job: "Preparing Exact for <model>: 40%"). Cancelled while converting or while
        a new size compiles."""
        global exact_openvino_runs
        try:
            from . import turbo
        except ImportError as e:
            if self.exact_prepare:
                self._exact_on_torch(f"OpenVINO support is not installed ({e.name or 'studio.engine.turbo'})")
            return None
        key = turbo_cache_key(model, pipe)
        is_cached = getattr(turbo, "is_cached", None)
        cached = is_cached is not None and is_cached(key)
        converting = self.exact_prepare and not cached
        if not converting and not cached:
            return None
        started = time.perf_counter() if t0 is None else t0
        last = [-1]

        def progress(fraction: float, text: str) -> None:  # the conversion (asked for), then "Compiling for 512x512"
            if on_step is None or fraction >= 1.0:
                return
            if text.startswith("Compiling"):
                stage = f"Exact (OpenVINO f32): {text}"
            else:
                pct = int(max(0.0, fraction) * 100)
                if pct == last[0]:  # one status per percent: the worker's queue stays short
                    return
                last[0] = pct
                stage = f"Preparing Exact for {model.name}: {pct}%"
            on_step(StepInfo(0, total, time.perf_counter() - started, stage=stage))

        try:
            out = turbo.turbo_unet(unet, cache_key=key, precision="f32", on_progress=progress, cancel=cancel,
                                   convert_missing=self.exact_prepare)  # fmt: skip
        except turbo.TurboUnavailable as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if converting:
                self._exact_on_torch(reason)
            else:
                log.warning("exact mode runs on torch: %s", reason)
            return None
        exact_openvino_runs += 1
        self.backend = "openvino f32"
        log.info("exact: the U-Net runs on OpenVINO f32 (turbo's conversion of %s)", model.name)
        return out

    def _exact_on_torch(self, reason: str) -> None:
        """A preparation the artist asked for did not happen: the run goes on in exact on torch and says why."""
        self.notice = f"Exact could not be prepared with OpenVINO: {reason}; this run used exact on torch"
        log.warning(self.notice)

    def _turbo(self, unet, pipe, model, on_step, total, cancel, t0):
        precision = "bf16" if native_bf16() else "f32"
        fallback = "fast" if native_bf16() else "exact"
        try:
            from .turbo import TurboUnavailable, turbo_unet  # the OpenVINO package (studio.engine.turbo)
        except ImportError as e:
            self._fall_back(fallback, f"OpenVINO support is not installed ({e.name or 'studio.engine.turbo'})")
            return None
        started = time.perf_counter() if t0 is None else t0
        last = [-1]

        def progress(fraction: float, text: str) -> None:
            pct = int(max(0.0, min(1.0, float(fraction))) * 100)
            if pct == last[0] or on_step is None:  # one status per percent: the worker's queue stays short
                return
            last[0] = pct
            log.info("turbo: %s %d%%", text, pct)
            on_step(StepInfo(0, total, time.perf_counter() - started, stage=f"Preparing turbo for {model.name}: {pct}%"))

        try:
            out = turbo_unet(unet, cache_key=turbo_cache_key(model, pipe), precision=precision,
                             on_progress=progress, cancel=cancel)  # fmt: skip
            self.backend = "openvino"
            return out
        except TurboUnavailable as e:
            self._fall_back(fallback, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None

    def _fall_back(self, mode: str, reason: str) -> None:
        self.turbo = False
        self.used = mode
        if mode == "fast":
            self.unet_half = torch.bfloat16
        self.notice = f"Turbo is unavailable: {reason}; this run used {mode} mode"
        log.warning(self.notice)


def _set_unet(pipe: Any, unet: Any) -> None:
    # Not through DiffusionPipeline.__setattr__: that would rewrite the pipeline's config with the wrapper's class.
    object.__setattr__(pipe, "unet", unet)


def turbo_cache_key(model: Any, pipe: Any) -> str:
    """The model (its A1111 hash, else its load key) and the LoRAs on its U-Net with their weights. Not the
    precision: one f32 IR serves turbo's bf16 and exact's f32 (each compiled with its own hint)."""
    ident = model.hash or "|".join(str(k) for k in model.key[:3])
    return f"{ident}|{lora_signature(pipe)}"


def lora_signature(pipe: Any) -> str:
    """The active LoRAs that change the U-Net, as file identity and weight, in a stable order ("" for none)."""
    loras = getattr(pipe.unet, "_studio_loras", None)
    if loras is None:
        return ""
    by_adapter = {e.adapter: e for e in loras.loaded}
    parts = []
    for adapter, weight in loras.active:
        entry = by_adapter.get(adapter)
        if entry is None or not weight or "unet" not in entry.parts:
            continue
        path, size, mtime = entry.key
        parts.append(f"{path}:{size}:{mtime}@{weight:g}")
    return ",".join(sorted(parts))


def exact_openvino_setting() -> bool:
    """STUDIO_EXACT_OPENVINO=0 keeps exact mode on torch even where turbo's conversion is cached."""
    return os.environ.get("STUDIO_EXACT_OPENVINO", "").strip().lower() not in ("0", "false", "no", "off")


def plan_speed(asked: str, device: torch.device, dtype: torch.dtype, torch_unet: bool = False,
               prepare_exact: bool = False) -> SpeedPlan:  # fmt: skip
    """What `asked` means on this device and dtype (a GPU's fp16 engine, or fp32 on a CPU). `torch_unet`: the
    run needs the torch U-Net itself (DeepCache wraps its blocks), so exact does not swap in OpenVINO.
    `prepare_exact`: exact converts the model for OpenVINO f32 first when it is not yet (a CPU, fp32)."""
    if asked == "exact":
        ov = device.type == "cpu" and dtype == torch.float32 and not torch_unet and exact_openvino_setting()
        return SpeedPlan("exact", "exact", exact_openvino=ov, exact_prepare=ov and prepare_exact)
    half = dtype in (torch.float16, torch.bfloat16)  # a GPU (or a test of its path on the CPU): already half
    bf16_cpu = device.type == "cpu" and not half and native_bf16()
    if asked == "fast":
        if half:
            return SpeedPlan("fast", "fast")
        if bf16_cpu:
            return SpeedPlan("fast", "fast", unet_half=torch.bfloat16, decode_autocast=torch.bfloat16)
        return SpeedPlan("fast", "exact", notice=f"This {_device_word(device)} has no native bf16: fast runs as exact")
    # turbo: OpenVINO runs the U-Net on the CPU; the decode is fast mode's.
    if device.type != "cpu":
        return SpeedPlan("turbo", "fast", notice=f"Turbo (OpenVINO) runs on the CPU: on {device.type} this run "
                                                 "used fast mode")  # fmt: skip
    return SpeedPlan("turbo", "turbo", decode_autocast=torch.bfloat16 if bf16_cpu else None, turbo=True)


def _device_word(device: torch.device) -> str:
    return "CPU" if device.type == "cpu" else device.type.upper()
