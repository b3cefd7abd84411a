"""The diffusion engine: torch and diffusers, run on the engine thread. No Qt.

Imported only by the local backend, the CLI, training and benchmarks; everything else speaks `studio.core`.

Public API:
    Engine(device=None).generate(request, on_step=None, cancel=None) -> GenerateResult
    Engine.decode_latent(model, latent) -> HxWx3 uint8 (full VAE decode of one kept step)
"""

from ..core.offline import set_offline_env

# Offline always: this runs before any submodule, so before huggingface_hub / diffusers are imported.
set_offline_env()

__all__ = ["Engine"]


def __getattr__(name: str):
    # Engine pulls in torch and diffusers: import lazily so `import studio.engine` stays cheap.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
