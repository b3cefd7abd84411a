"""What the add-ons share: the pipeline's base model, and the libraries kept quiet while one loads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

BASE_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the libraries' warnings while an add-on loads (transformers prints a "LOAD REPORT" of every base
    weight "missing" from a LoRA, peft warns about several adapters, diffusers about keys it filtered)."""
    import warnings

    import diffusers
    import transformers

    t_log, d_log = transformers.utils.logging, diffusers.utils.logging
    levels = t_log.get_verbosity(), d_log.get_verbosity()
    bars = t_log.is_progress_bar_enabled(), d_log.is_progress_bar_enabled()
    t_log.set_verbosity_error()
    d_log.set_verbosity_error()
    t_log.disable_progress_bar()  # "Loading weights" of every text-encoder adapter
    d_log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        t_log.set_verbosity(levels[0])
        d_log.set_verbosity(levels[1])
        if bars[0]:
            t_log.enable_progress_bar()
        if bars[1]:
            d_log.enable_progress_bar()


def model_base(pipe) -> str:
    """sd1 / sd2 / sdxl for a loaded pipeline (two text encoders: SDXL; 1024-wide cross-attention: SD 2.x)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = getattr(pipe, "unet", None)
    if unet is not None and unet.config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def base_label(base: str) -> str:
    return BASE_LABELS.get(base, base)
