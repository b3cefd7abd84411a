"""The model library: every checkpoint, VAE, LoRA, embedding and upscaler in the model folders.

Scans ``models/`` and the user's folders (an A1111 ``models`` tree with ``Stable-diffusion``, ``Lora``, ``VAE``,
``ESRGAN``..., a ComfyUI one with ``checkpoints``, ``loras``, ``vae``, ``upscale_models``, ``embeddings``, or a
flat folder), classifying each file from its header (``modelfiles``): no weights read, no torch. Results are
cached by path, size and modification time, so a rescan after adding one file reads one header.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

from .modelfiles import MODEL_FILE_SUFFIXES, PICKLE_SUFFIXES, ModelFile, classify

MAX_DEPTH = 4
MAX_FILES = 20000
KINDS = ("checkpoint", "diffusers", "vae", "lora", "embedding", "upscaler", "controlnet", "unknown")

# Folder names (lower case) of A1111 and ComfyUI trees -> the kind their files are.
FOLDER_KINDS = {
    "stable-diffusion": "checkpoint",
    "checkpoints": "checkpoint",
    "lora": "lora",
    "loras": "lora",
    "lycoris": "lora",
    "vae": "vae",
    "embeddings": "embedding",
    "textual_inversion": "embedding",
    "esrgan": "upscaler",
    "realesrgan": "upscaler",
    "swinir": "upscaler",
    "upscale_models": "upscaler",
    "dat": "upscaler",
    "hat": "upscaler",
    "controlnet": "controlnet",  # A1111's models/ControlNet, ComfyUI's models/controlnet
}
# Folders that never hold what the studio loads (ComfyUI / A1111 siblings).
_SKIP = {"clip_vision", "insightface", "facerestore_models", "gfpgan", "codeformer", "__pycache__"}

_cache: dict[tuple[str, int, int], ModelFile] = {}
_lock = threading.Lock()


def folder_hint(path: Path, roots: list[Path]) -> str:
    """The kind the nearest A1111 / ComfyUI folder name says, or ""."""
    for parent in path.parents:
        hint = FOLDER_KINDS.get(parent.name.lower())
        if hint:
            return hint
        if any(parent == r for r in roots):
            break
    return ""


def classify_cached(path: Path, hint: str = "") -> ModelFile:
    try:
        st = path.stat()
    except OSError as e:
        return ModelFile(path, "unknown", note=f"cannot read it: {e.strerror or e}")
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
    if hit is None:
        hit = classify(path)
        with _lock:
            _cache[key] = hit
    if hit.kind == "unknown" and hint and path.suffix.lower() in PICKLE_SUFFIXES and not hit.note.startswith(
        ("Cannot", path.name)
    ):
        # Pickles give names only; the folder an artist put it in is the better witness.
        return replace(hit, kind=hint, note="")
    return hit


def scan(folders: list[str | Path]) -> list[ModelFile]:
    """Every model file and diffusers folder under the folders (nested up to MAX_DEPTH), sorted by kind, name."""
    roots = [Path(f).expanduser() for f in folders]
    found: list[ModelFile] = []
    seen: set[str] = set()
    count = 0
    for root in roots:
        if not root.is_dir():
            continue
        stack: list[tuple[Path, int]] = [(root, 0)]
        while stack and count < MAX_FILES:
            folder, depth = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                p = Path(entry.path)
                try:
                    is_dir = entry.is_dir()
                    is_pipeline = is_dir and ((p / "model_index.json").is_file() or _is_controlnet_folder(p))
                except OSError:
                    continue
                if is_dir:
                    if is_pipeline:
                        item = classify_cached(p)
                    elif depth < MAX_DEPTH and entry.name.lower() not in _SKIP:
                        stack.append((p, depth + 1))
                        continue
                    else:
                        continue
                elif p.suffix.lower() in MODEL_FILE_SUFFIXES:
                    count += 1
                    item = classify_cached(p, folder_hint(p, roots))
                else:
                    continue
                try:
                    key = str(p.resolve())
                except (OSError, RuntimeError):  # a symlink loop
                    key = str(p)
                if key not in seen:
                    seen.add(key)
                    found.append(item)
    found.sort(key=lambda m: (KINDS.index(m.kind), m.name.lower()))
    return found


def _is_controlnet_folder(p: Path) -> bool:
    """A diffusers ControlNet folder (config.json + weights, no model_index.json): one entry, not its files."""
    cfg = p / "config.json"
    try:
        return cfg.is_file() and cfg.stat().st_size < 65536 and '"ControlNetModel"' in cfg.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def by_kind(items: list[ModelFile], *kinds: str) -> list[ModelFile]:
    return [m for m in items if m.kind in kinds]


def find(items: list[ModelFile], name: str, kind: str) -> ModelFile | None:
    """A file of that kind by name (A1111's ``<lora:name:w>`` names the file stem), case-insensitive."""
    low = name.lower()
    for m in items:
        if m.kind == kind and (m.name.lower() == low or m.path.name.lower() == low):
            return m
    return None


def clear_cache() -> None:
    with _lock:
        _cache.clear()
