"""The diffusion engine: headless, synchronous, no Qt.

Public API:
    Engine(device=None).generate(request, on_step=None, cancel=None) -> GenerateResult
    Engine.decode_latent(model, latent) -> HxWx3 uint8 (full VAE decode of one kept step)
    GenerateRequest, GenerateResult, StepInfo (studio.engine.requests)
    EngineError, RequestError, ModelError, describe_error, first_line, OUT_OF_MEMORY (studio.engine.errors)
    set_offline_env (studio.engine.offline)
    SAMPLERS, SCHEDULES (studio.engine.samplers)
"""

from .offline import set_offline_env

# Offline always: this runs before any submodule, so before huggingface_hub / diffusers are imported.
set_offline_env()

from .errors import OUT_OF_MEMORY, EngineError, ModelError, RequestError, describe_error, first_line  # noqa: E402
from .requests import GenerateRequest, GenerateResult, StepInfo  # noqa: E402

__all__ = [
    "EngineError",
    "ModelError",
    "RequestError",
    "OUT_OF_MEMORY",
    "describe_error",
    "first_line",
    "set_offline_env",
    "GenerateRequest",
    "GenerateResult",
    "StepInfo",
    "Engine",
]


def __getattr__(name: str):
    # Engine pulls in torch and diffusers: import lazily so `import studio.engine` stays cheap.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
