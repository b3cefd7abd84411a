"""Memory options for a loaded pipeline: attention slicing, VAE tiling, model or sequential CPU offload.

Settings, not per-run choices: they are applied when a model loads (offload decides where the weights live).
No torch at import: the settings and the UI read the names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OFFLOADS = ("none", "model", "sequential")
OFFLOAD_LABELS = {
    "none": "Keep the model on the device",
    "model": "Model CPU offload (one part on the GPU at a time)",
    "sequential": "Sequential CPU offload (least memory, slowest)",
}


@dataclass(frozen=True)
class MemoryOptions:
    attention_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"

    def __post_init__(self) -> None:
        if self.offload not in OFFLOADS:
            object.__setattr__(self, "offload", "none")


def apply(pipe: Any, options: MemoryOptions, device: Any) -> None:
    """Place a freshly loaded pipeline on the device with the options (instead of ``pipe.to(device)``).

    Offload needs an accelerator (accelerate's hooks move each part to it when it runs): on the CPU it is
    meaningless and is skipped.
    """
    offload = options.offload if getattr(device, "type", str(device)) != "cpu" else "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    if options.vae_tiling and hasattr(pipe, "vae"):
        pipe.vae.enable_tiling()


def out_of_memory_advice(options: MemoryOptions, device_type: str) -> str:
    """The out-of-memory message, suggesting the first option not yet on."""
    if device_type == "cpu":
        return "Out of memory: try a smaller size or batch, or close other programs"
    if not options.vae_tiling:
        tip = "turn on VAE tiling"
    elif not options.attention_slicing:
        tip = "turn on attention slicing"
    elif options.offload == "none":
        tip = "turn on model CPU offload"
    elif options.offload == "model":
        tip = "use sequential CPU offload"
    else:
        tip = "use a smaller model"
    return f"Out of memory: try a smaller size or batch, or {tip} (Settings > Memory)"
