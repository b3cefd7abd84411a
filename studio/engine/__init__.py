"""The diffusion engine: headless, synchronous, no Qt.

Public API:
    Engine(device=None).generate(request, on_step=None, cancel=None) -> GenerateResult
    Engine.decode_latent(model, latent) -> HxWx3 uint8 (full VAE decode of one kept step)
    GenerateRequest, GenerateResult, StepInfo (studio.engine.requests)
    EngineError, RequestError, ModelError (studio.engine.errors)
    SAMPLERS, SCHEDULES (studio.engine.samplers)
"""

import os

# Offline always: set before huggingface_hub / diffusers are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

from .errors import EngineError, ModelError, RequestError  # noqa: E402
from .requests import GenerateRequest, GenerateResult, StepInfo  # noqa: E402

__all__ = ["EngineError", "ModelError", "RequestError", "GenerateRequest", "GenerateResult", "StepInfo", "Engine"]


def __getattr__(name: str):
    # Engine pulls in torch and diffusers: import lazily so `import studio.engine` stays cheap.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
