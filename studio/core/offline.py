"""The one place that puts the Hugging Face libraries offline (no Qt, no torch).

`studio.engine` calls `set_offline_env()` when it is first imported, which is before any of its
submodules (and so before huggingface_hub / diffusers / transformers) can be. Code outside the
engine that imports those libraries imports `studio.engine` first, or calls this function.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
}


def set_offline_env() -> None:
    """Set the offline / no-telemetry variables unless the user has set them already. Idempotent."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
