"""Training code of the built-in model (torch, diffusers, transformers; not imported by the app)."""

from studio.core.offline import set_offline_env

# Offline before any training module imports diffusers / transformers (studio.engine does it too, on import).
set_offline_env()
