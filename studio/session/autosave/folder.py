"""Where the autosave lives, and how a save goes away in one step."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

DATA_ENV = "LATENT_STUDIO_DATA_DIR"  # overrides the user data folder (tests, portable installs)
DOC_DIR = "current"


def default_folder() -> Path:
    """Where the autosave lives: $LATENT_STUDIO_DATA_DIR/autosave, else the user data folder's."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser() / "autosave"
    from platformdirs import user_data_path

    return Path(user_data_path("latent-studio")) / "autosave"


def remove_save(folder: Path) -> None:
    doc_dir = Path(folder) / DOC_DIR
    if not doc_dir.exists():
        return
    trash = Path(folder) / f".discarded-{os.getpid()}-{time.monotonic_ns()}"
    os.replace(doc_dir, trash)  # atomic: the save is gone at once, whatever happens next
    shutil.rmtree(trash, ignore_errors=True)
