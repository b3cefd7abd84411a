"""The OpenVINO-backed U-Net: a drop-in for diffusers' UNet2DConditionModel inside its pipelines.

Static shapes: each input shape (batch, latent size, prompt length) is compiled once, on its first call, and kept in
memory; OpenVINO's CACHE_DIR keeps the compiled blob on disk, so the next process loads it instead of compiling.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..steps import Cancelled
from . import cache
from .errors import one_line

Progress = Callable[[float, str], None]
Shapes = tuple[tuple[int, ...], ...]

# Compiled models of this many converted U-Nets stay in memory (an SD 1.5 U-Net compiled in bf16 holds 1.7 GB per
# shape): a LoRA change replaces the previous one instead of piling up.
KEEP_MODELS = 1
# How many compiles this process ran (tests and the benchmark's first-run costs).
compiles = 0


class Store:
    """One converted U-Net's compiled models, per input shapes."""

    def __init__(self, folder: Path, precision: str, ov) -> None:
        self.folder, self.precision, self.ov = folder, precision, ov
        self.names: list[str] = json.loads((folder / "meta.json").read_text())["inputs"]
        self.core = ov.Core()
        self.compiled: dict[Shapes, object] = {}
        self.pending: dict[Shapes, threading.Thread] = {}
        self.errors: dict[Shapes, BaseException] = {}
        self.lock = threading.Lock()
        self.compile_s: dict[Shapes, float] = {}

    def config(self) -> dict:
        # One CACHE_DIR per precision: OpenVINO's blob name hashes the model and not INFERENCE_PRECISION_HINT
        # (measured, OpenVINO 2026.4: the bf16 compile of an IR already compiled in f32 loaded the f32 blob and
        # computed NaNs), and one IR now serves both precisions.
        folder = cache.compiled_dir() / self.precision
        folder.mkdir(parents=True, exist_ok=True)
        return {
            # Set explicitly: on AMX hardware the CPU plugin picks bf16 by itself, which f32 (exact) must not get.
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(folder),
        }

    def request_for(self, shapes: Shapes, on_progress: Progress | None, cancel: threading.Event | None,
                    label: str):
        """The infer request compiled for `shapes`, compiling it first (on a thread, so cancel returns at once;
        an abandoned compile still finishes and is kept for the next run)."""
        with self.lock:
            got = self.compiled.get(shapes)
            if got is not None:
                return got
            thread = self.pending.get(shapes)
            if thread is None:
                self.errors.pop(shapes, None)
                thread = threading.Thread(target=self._compile, args=(shapes,), name="turbo-compile", daemon=True)
                self.pending[shapes] = thread
                thread.start()
        if on_progress is not None:
            on_progress(0.0, f"Compiling for {label}")
        while thread.is_alive():
            thread.join(0.1)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        with self.lock:
            err = self.errors.get(shapes)
            if err is not None:
                raise one_line(f"OpenVINO failed to compile the U-Net for {label}", err) from err
            if on_progress is not None:
                on_progress(1.0, f"Compiled for {label}")
            return self.compiled[shapes]

    def _compile(self, shapes: Shapes) -> None:
        global compiles
        try:
            compiles += 1
            t = time.perf_counter()
            # A fresh read per shape (the weights are memory-mapped, so it is cheap): reshaping one shared model
            # while an abandoned compile still reads it would race.
            model = self.core.read_model(str(self.folder / "unet.xml"))
            model.reshape({inp: self.ov.PartialShape(list(s)) for inp, s in zip(model.inputs, shapes, strict=True)})
            compiled = self.core.compile_model(model, "CPU", self.config())
            request = compiled.create_infer_request()
            with self.lock:
                self.compiled[shapes] = request
                self.compile_s[shapes] = time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            with self.lock:
                self.errors[shapes] = e
        finally:
            with self.lock:
                self.pending.pop(shapes, None)


# Per folder and precision: one IR serves turbo's bf16 and exact's f32, each compiled with its own hint.
_stores: OrderedDict[tuple[Path, str], Store] = OrderedDict()
_stores_lock = threading.Lock()


def store_for(folder: Path, precision: str, ov) -> Store:
    with _stores_lock:
        key = (folder, precision)
        s = _stores.get(key)
        if s is None:
            s = Store(folder, precision, ov)
            _stores[key] = s
            while len(_stores) > KEEP_MODELS:
                _stores.popitem(last=False)
        _stores.move_to_end(key)
        return s


def forget_stores() -> None:
    with _stores_lock:
        _stores.clear()


class TurboUNet(torch.nn.Module):
    """What the pipelines call as `pipe.unet`: the torch U-Net's config and attributes, OpenVINO's forward.

    Calls the converted graph cannot take (ControlNet residuals, attention masks, a latent side that does not
    divide by the U-Net's upsampling) run on the torch U-Net instead: the same result, at torch's speed.
    """

    # The latent-to-pixel factor of the SD VAEs, for the "Compiling for 512x512" message only.
    vae_scale_factor = 8

    def __init__(self, unet: torch.nn.Module, store: Store, on_progress: Progress | None,
                 cancel: threading.Event | None) -> None:
        super().__init__()
        # Not registered as a submodule: its parameters are not this module's (pipe.to(), .parameters()).
        self.__dict__["_torch_unet"] = unet
        self.__dict__["_store"] = store
        self.on_progress = on_progress
        self.cancel = cancel
        self.config = unet.config
        self.up = 2 ** (len(unet.config.block_out_channels) - 1)
        self.fallbacks = 0

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def torch_unet(self) -> torch.nn.Module:
        return self.__dict__["_torch_unet"]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):  # accelerate's _hf_hook and the like: not the torch U-Net's
                raise
            return getattr(self.__dict__["_torch_unet"], name)  # add_embedding, attn_processors...

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None, timestep_cond=None,
                attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None,
                down_intrablock_additional_residuals=None, encoder_attention_mask=None, return_dict=True):
        h, w = sample.shape[-2:]
        unusual = (class_labels, attention_mask, down_block_additional_residuals, mid_block_additional_residual,
                   down_intrablock_additional_residuals, encoder_attention_mask)
        if any(x is not None for x in unusual) or h % self.up or w % self.up:
            self.fallbacks += 1
            return self.torch_unet(
                sample, timestep, encoder_hidden_states, class_labels=class_labels, timestep_cond=timestep_cond,
                attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs=added_cond_kwargs, down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                down_intrablock_additional_residuals=down_intrablock_additional_residuals,
                encoder_attention_mask=encoder_attention_mask, return_dict=return_dict,
            )
        b = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        given = {
            "sample": sample,
            "timestep": t.expand(b) if t.numel() == 1 else t,
            "encoder_hidden_states": encoder_hidden_states,
            "timestep_cond": timestep_cond,
            **(added_cond_kwargs or {}),
        }
        store = self.__dict__["_store"]
        arrays = [np.ascontiguousarray(given[n].detach().to("cpu", torch.float32).numpy()) for n in store.names]
        shapes = tuple(a.shape for a in arrays)
        label = f"{w * self.vae_scale_factor}x{h * self.vae_scale_factor}"
        request = store.request_for(shapes, self.on_progress, self.cancel, label)
        request.infer(arrays, share_inputs=True)
        out = torch.from_numpy(request.get_output_tensor(0).data.copy()).to(sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)
