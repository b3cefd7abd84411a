"""The turbo cache's layout lives in studio.core.turbocache (torch-free, so the window can show and clear it)."""

from ...core.turbocache import (
    CACHE_ENV,
    FORMAT,
    TMP_PREFIX,
    clear_turbo_cache,
    compiled_dir,
    entry_dir,
    entry_name,
    is_complete,
    models_dir,
    turbo_cache_dir,
    turbo_cache_usage,
)

__all__ = ["CACHE_ENV", "FORMAT", "TMP_PREFIX", "clear_turbo_cache", "compiled_dir", "entry_dir", "entry_name",
           "is_complete", "models_dir", "turbo_cache_dir", "turbo_cache_usage"]  # fmt: skip
