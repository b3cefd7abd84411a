"""Speed modes: how a run trades pixels for time (no torch: the panel, the CLI and the metadata share these).

exact  the image plain diffusers makes (within 1/255), with every gain that keeps it (channels_last on CUDA);
fast   the U-Net and the VAE decode in half precision where the hardware has it natively (bf16 on a CPU with AMX
       or AVX512-BF16, fp16 on a GPU), the sampler's math and CFG in fp32: a few 1/255 from exact;
turbo  the U-Net compiled with OpenVINO (bf16 where the CPU has it): much faster after a first-time conversion.

What a mode means on this device is decided by the engine (studio.engine.speed); the metadata's "Speed" key is
the mode a run actually used, after any fallback.
"""

from __future__ import annotations

from typing import Literal

Speed = Literal["exact", "fast", "turbo"]
SPEEDS: tuple[str, ...] = ("exact", "fast", "turbo")
# A request's default: reproducible pixels, equal to plain diffusers'. The window starts on the backend's own
# recommendation for its device (BackendInfo.default_speed), then remembers the artist's choice.
DEFAULT_SPEED: Speed = "exact"
METADATA_KEY = "Speed"

LABELS = {"exact": "Exact", "fast": "Fast", "turbo": "Turbo"}
TOOLTIPS = {
    "exact": "The image plain diffusers makes (within 1/255): same seed, same pixels as other studios. On a CPU, "
    "Engine > Prepare Exact with OpenVINO makes it faster at the same pixels (once per model: a conversion)",
    "fast": "Half precision for the U-Net and the decode where the hardware has it (bf16 CPUs, GPUs): about 1.5x "
    "on a bf16 CPU, a few 1/255 from Exact; elsewhere it runs as Exact and says why",
    "turbo": "The U-Net compiled with OpenVINO (CPU): several times faster once the model is converted; the first "
    "run of a model converts it (minutes, can be cancelled), later runs reuse it",
}


def check_speed(value: object) -> str:
    """The mode's name, or ValueError with one line for the artist."""
    if value not in SPEEDS:
        raise ValueError(f"Unknown speed mode {value!r}; use {', '.join(SPEEDS)}")
    return str(value)
