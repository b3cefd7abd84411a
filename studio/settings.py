"""Persistent user settings: a small JSON file in the user config dir (platformdirs).

No Qt here. The window geometry is stored as a base64 string of QWidget.saveGeometry().
`LATENT_STUDIO_CONFIG_DIR` overrides the config dir (tests, portable installs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from studio.core.atomic import write_text

APP_NAME = "Latent Studio"
CONFIG_ENV = "LATENT_STUDIO_CONFIG_DIR"
SETTINGS_FILE = "settings.json"


def config_dir() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def default_output_dir() -> Path:
    """platformdirs' user pictures dir / "Latent Studio", else the user data dir (shared with the CLI)."""
    from studio.paths import default_output_dir as shared_default

    return shared_default()


@dataclass
class Settings:
    params: dict[str, Any] = field(default_factory=dict)  # the prompt panel's last parameters
    geometry: str = ""  # base64 QWidget.saveGeometry()
    splitter_state: dict[str, str] = field(default_factory=dict)
    model_folders: list[str] = field(default_factory=list)
    output_dir: str = ""  # empty: default_output_dir()
    device: str = "auto"  # auto, cuda, mps, cpu
    preview_kind: str = "x0"
    # Memory (studio.core.memory): applied to the next run.
    attention_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"  # none, model, sequential
    # The engine: "local" (this machine) or "comfyui" (a ComfyUI server; the token goes in its requests'
    # Authorization header, for a reverse proxy in front of it).
    backend: str = "local"
    server_url: str = "http://127.0.0.1:8188"
    server_token: str = ""
    server_models: dict[str, str] = field(default_factory=dict)  # server URL -> its default checkpoint (the CLI's)
    # The canvas's mask tint, the artist's choice (a violet tint hides on a blue image): colour and opacity in %.
    mask_color: str = "#7c5cff"
    mask_opacity: int = 43
    recent_projects: list[str] = field(default_factory=list)  # File > Open recent, newest first
    results_as_layer: bool = True  # a result lands as a new layer on top (False: it replaces the active layer)
    stage_results: bool = True  # a run's images wait over the canvas as candidates (False: the first lands at once)
    save_control_images: bool = False  # each run's control images beside its PNGs (<name>.control0.png)
    keep_latents: bool = False  # every step's latent next to each PNG (<name>.latents.npz): `studio generate --branch-from`

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir).expanduser() if self.output_dir else default_output_dir()

    def engine_device(self) -> str | None:
        return None if self.device in ("", "auto") else self.device

    # -- persistence -------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path | str | None = None) -> Settings:
        """Read the settings; a missing or broken file gives the defaults (never raises)."""
        path = Path(directory or config_dir()) / SETTINGS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        s = cls()
        for f in fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(s, f.name)
            if isinstance(value, type(default)):
                setattr(s, f.name, value)
        s.model_folders = [str(p) for p in s.model_folders if isinstance(p, str)]
        s.recent_projects = [p for p in s.recent_projects if isinstance(p, str) and p]
        s.server_models = {k.rstrip("/"): v for k, v in s.server_models.items() if isinstance(v, str) and v}
        if s.offload not in ("none", "model", "sequential"):
            s.offload = "none"
        if s.backend not in ("local", "comfyui"):
            s.backend = "local"
        return s

    def save(self, directory: Path | str | None = None) -> Path:
        """Write atomically (studio.core.atomic) so a crash never leaves half a file."""
        path = Path(directory or config_dir()) / SETTINGS_FILE
        # Owner-only, as before: the file may hold a server token. No fsync: the window saves the settings on the UI
        # thread at every run, and an fsync there stalls it (bench_ui); the rename alone keeps the file whole.
        return write_text(path, json.dumps(asdict(self), indent=2, ensure_ascii=False), mode=0o600, fsync=False)
