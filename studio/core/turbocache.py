"""Where converted U-Nets live on disk (torch-free: the window shows and clears it): one folder per cache key,
written atomically, and OpenVINO's compiled-blob cache beside them.

    <cache>/turbo/models/<sha256(key)[:32]>/unet.xml, unet.bin, meta.json
    <cache>/turbo/models/.tmp-<hash>-<random>/   (a conversion in progress; renamed into place when complete)
    <cache>/turbo/compiled/<precision>/          (OpenVINO's CACHE_DIR: one compiled blob per model and input shape)

<cache> is $LATENT_STUDIO_CACHE_DIR when set (tests, portable installs), else platformdirs' user cache folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CACHE_ENV = "LATENT_STUDIO_CACHE_DIR"
# Part of every entry's hash: a change to how the U-Net is wrapped for tracing, or another OpenVINO IR version,
# must not reuse old entries.
FORMAT = "turbo-ir-1"
TMP_PREFIX = ".tmp-"


def turbo_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / "turbo"
    from platformdirs import user_cache_path

    return Path(user_cache_path("latent-studio", appauthor=False)) / "turbo"


def models_dir() -> Path:
    return turbo_cache_dir() / "models"


def compiled_dir() -> Path:
    return turbo_cache_dir() / "compiled"


def entry_name(cache_key: str, ov_version: str) -> str:
    return hashlib.sha256(f"{FORMAT}|{ov_version}|{cache_key}".encode()).hexdigest()[:32]


def entry_dir(cache_key: str, ov_version: str) -> Path:
    return models_dir() / entry_name(cache_key, ov_version)


def is_complete(folder: Path) -> bool:
    # meta.json is written last inside the temp folder, and the folder is renamed whole: its presence means done.
    return (folder / "meta.json").is_file() and (folder / "unet.xml").is_file()


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass  # removed while we walked (a conversion finishing)
    return total


def turbo_cache_usage() -> int:
    """Bytes on disk: converted U-Nets, conversions in progress and OpenVINO's compiled blobs."""
    root = turbo_cache_dir()
    return _size(root) if root.exists() else 0


def clear_turbo_cache() -> int:
    """Remove every converted U-Net and compiled blob; the bytes freed. Models in memory stay usable: the next
    process (or a new key) converts again."""
    freed = turbo_cache_usage()
    root = turbo_cache_dir()
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    return freed - turbo_cache_usage()


def format_size(n: int) -> str:
    """Bytes as the artist reads them: 0 B, 840 KB, 4.9 GB."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
