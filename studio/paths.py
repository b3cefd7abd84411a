"""Where the project's shipped files live (no Qt, no torch)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
TOKENIZER_DIR = RESOURCES / "tokenizer"
CONFIGS_DIR = RESOURCES / "configs"
MODELS_DIR = ROOT / "models"
BUILTIN_MODEL = MODELS_DIR / "builtin"
