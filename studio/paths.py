"""Where the project's shipped files live (no Qt, no torch)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
TOKENIZER_DIR = RESOURCES / "tokenizer"
CONFIGS_DIR = RESOURCES / "configs"
MODELS_DIR = ROOT / "models"
BUILTIN_MODEL = MODELS_DIR / "builtin"
BUILTIN_CONTROLNET = MODELS_DIR / "builtin-scribble"  # the built-in model's scribble ControlNet (outline -> filled)
BUILTIN_LATENT_UPSCALER = MODELS_DIR / "latent-upscaler-x4"  # the x4 upscaler layout, trained by the project
BUILTIN_UPSCALERS_DIR = MODELS_DIR / "swinir-x4"  # the built-in SwinIR x4 (a spandrel-loadable state dict)
BUILTIN_UPSCALER = BUILTIN_UPSCALERS_DIR / "swinir-x4.safetensors"  # the "model" upscale without a chosen upscaler


def configs_dir() -> Path:
    """The diffusers config folders single-file checkpoints load with; LATENT_STUDIO_CONFIGS_DIR overrides it
    (tests load tiny checkpoints with tiny configs through the same path)."""
    import os

    env = os.environ.get("LATENT_STUDIO_CONFIGS_DIR")
    return Path(env) if env else CONFIGS_DIR


def default_output_dir() -> Path:
    """Where images go unless the settings or --out say otherwise: the user's pictures folder."""
    from platformdirs import user_data_path, user_pictures_path

    try:
        pictures = user_pictures_path()
    except Exception:  # noqa: BLE001 - platformdirs may fail on odd desktops; fall back quietly
        pictures = None
    base = pictures if pictures is not None and pictures.parent.exists() else user_data_path("latent-studio")
    return Path(base) / "Latent Studio"
