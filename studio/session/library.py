"""Files the session reads and writes: results with their metadata, earlier images, the model list.

No Qt and no torch (studio.core.output / .metadata use numpy and Pillow only).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from studio import __version__
from studio.core.requests import GenerateResult
from studio.paths import BUILTIN_CONTROLNET, BUILTIN_LATENT_UPSCALER, BUILTIN_MODEL, MODELS_DIR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def save_result(result: GenerateResult, out_dir: Path, keep_latents: bool = False,
                save_controls: bool = False) -> list[Path]:  # fmt: skip
    """Write every image of a run with its `parameters` text, atomically; returns the paths. `keep_latents`: each
    image's step states go next to it too (studio.core.branch's sidecar), for a branch from the command line.
    `save_controls`: the run's control images beside each image (<name>.control<i>.png: the text names only the
    ControlNet)."""
    from studio.core.output import save_control_images
    from studio.core.output import save_result as engine_save

    paths = [Path(p) for p in engine_save(result, out_dir, __version__)]
    if save_controls and result.request.controls:
        save_control_images(result, paths)
    if keep_latents and result.step_states:
        from studio.core.branch import save_sidecar

        for i, path in enumerate(paths):
            save_sidecar(path, [s.image(i) for s in result.step_states])
    return paths


def parameters_text(result: GenerateResult, i: int) -> str:
    """The `parameters` text image i of a run would be saved with."""
    import numpy as np

    from studio.core.metadata import parameters_for

    req = result.request
    if not (req.width and req.height) and i < len(result.images):
        h, w = np.asarray(result.images[i]).shape[:2]
        req = req.replace(width=int(w), height=int(h))
    seed = result.seeds[i] if i < len(result.seeds) else (req.seed or 0)
    return parameters_for(req, seed, result.model_name, result.model_hash, __version__, result.extra_params,
                          index=i)


def read_png_fields(path: Path, refused: list | None = None) -> dict[str, Any] | None:
    """GenerateRequest field names -> values from an image's stored parameters (ours or A1111's). Values out of
    GenerateRequest's limits are left out, and named in `refused` (metadata.Refused) when a list is given."""
    from studio.core.metadata import parse_parameters, read_parameters, request_fields

    text = read_parameters(path)
    if not text:
        return None
    found = request_fields(text, refused)
    params = parse_parameters(text)["params"]
    model = params.get("Model", "").strip()
    if model:
        found["model_name"] = model  # a name, not a path: a server's list may hold it (server_names)
        found["model_hash"] = params.get("Model hash", "").strip()  # A1111's 10 hex digits (find_model)
    return found


@functools.lru_cache(maxsize=32)
def native_side(model: str) -> int:
    """The side a model was trained at (64 for the built-in model, 512, 768, 1024), from its files without loading
    it: the U-Net's sample size times the VAE's scale (2 ** (levels - 1); the built-in VAE scales 4x, SD's 8x),
    else the single file's architecture; 0 when unknown. Cached: the panel asks at every size change."""
    import json

    from studio.core.modelfiles import classify

    path = Path(model) if model else BUILTIN_MODEL
    try:
        size = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8")).get("sample_size")
        try:
            levels = len(json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))["block_out_channels"])
        except (OSError, ValueError, TypeError, KeyError):
            levels = 4  # SD's VAE
        return int(size[0] if isinstance(size, list) else size) * 2 ** (levels - 1)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    arch = classify(path).arch if path.is_file() else ""
    return 1024 if arch.startswith("sdxl") else 768 if arch == "sd2-v" else 512 if arch.startswith("sd") else 0


def find_model(folders: list[str], name: str, model_hash: str = "") -> str | None:
    """The model an image names, in the model folders: by name (A1111 writes the file's stem), else by A1111's
    model hash among the models whose hash is already cached (each run hashes its model beside the work): hashing
    a 4 GB file here would freeze the window. "" is the built-in model; None: none."""
    import re

    from studio.core.metadata import cached_model_hash
    from studio.core.modellibrary import by_kind, scan

    stem = re.split(r"[\\/]", name.strip())[-1]
    stem = re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", stem, flags=re.IGNORECASE).lower()
    models = by_kind(scan([MODELS_DIR, *map(Path, folders)]), "checkpoint", "diffusers")
    builtin = BUILTIN_MODEL.resolve()

    def value(path: Path) -> str:
        return "" if path.resolve() == builtin else str(path)

    hits = [m.path for m in models if m.name.lower() == stem]
    if hits:
        return value(hits[0])
    digest = model_hash.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{10}", digest):
        return None
    for m in models:
        known = cached_model_hash(m.path)
        if known is not None and known.lower() == digest:
            return value(m.path)
    return None


def server_names(found: dict[str, Any], info: Any) -> dict[str, str]:
    """The server's files for an image's "Model" and "VAE" names (model, vae: the ids in `info.models` / `.vaes`),
    matched by id, then by label (the stem), case-insensitively; a name the server lacks is left out."""

    def lookup(name: Any, files: tuple[tuple[str, str], ...]) -> str | None:
        name = str(name or "").strip().lower()
        for key in (lambda f: f[0].lower(), lambda f: f[1].lower()):
            hits = [f[0] for f in files if key(f) == name]
            if len(hits) == 1:
                return hits[0]
        return None

    out = {}
    for field, name, files in (("model", found.get("model_name"), info.models), ("vae", found.get("vae"), info.vaes)):
        hit = lookup(name, files) if name else None
        if hit is not None:
            out[field] = hit
    return out


def output_images(folder: Path, limit: int = 400) -> list[Path]:
    """Earlier results in the output folder, newest first."""
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    except OSError:
        return []
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return files[:limit]


def model_choices(folders: list[str], current: str = "", latent_upscale: bool = False) -> list[tuple[str, str]]:
    """(label, value) for the model picker: checkpoints and diffusers folders only (no LoRA, VAE or upscaler),
    each with its architecture and size; value "" is the built-in model. Models of the x4 upscaler layout only
    for `latent_upscale` (Upscale mode's latent method, where "" is the built-in x4 upscaler), and only they."""
    from studio.core.modelfiles import human_size
    from studio.core.modellibrary import by_kind, scan

    builtin_dir = BUILTIN_LATENT_UPSCALER if latent_upscale else BUILTIN_MODEL
    builtin = "Built-in x4 upscaler" if latent_upscale else "Built-in"
    builtin += "" if (builtin_dir / "model_index.json").is_file() else " (not installed yet)"
    out: list[tuple[str, str]] = [(builtin, "")]
    seen: set[str] = set()
    items = scan([MODELS_DIR, *map(Path, folders)])
    # Checkpoints, then files no one can load, listed so that choosing one says why (a truncated download).
    broken = [m for m in by_kind(items, "unknown") if m.path.suffix.lower() in (".safetensors", ".ckpt")]
    for m in [*by_kind(items, "checkpoint", "diffusers"), *broken]:
        key = str(m.path.resolve())
        if m.path.resolve() in (BUILTIN_MODEL.resolve(), builtin_dir.resolve()) or key in seen:
            continue
        if m.kind != "unknown" and (m.arch == "x4-upscaler") != latent_upscale:
            seen.add(key)  # not offered, and not added back as the current model either
            continue  # the x4 upscaler cannot make an image from text; an SD model cannot run the latent method
        seen.add(key)
        if m.kind == "unknown":
            out.append((f"{m.name}  ·  not loadable", str(m.path)))
            continue
        details = [d for d in (m.arch if m.arch else "", human_size(m.size) if m.size else "") if d]
        if m.arch:
            details[0] = m.arch_label
        out.append(("  ·  ".join([m.name, *details]), str(m.path)))
    if current and str(Path(current).resolve()) not in seen and Path(current).resolve() != BUILTIN_MODEL.resolve():
        out.append((Path(current).name, current))
    return out


def write_png_atomic(array, dest: Path) -> Path:
    """A plain PNG (a mask: HxW uint8) written atomically (studio.core.atomic): never half a file."""
    from PIL import Image

    from studio.core.atomic import atomic_write

    with atomic_write(dest) as f:
        Image.fromarray(array).save(f, format="PNG")
    return dest


def addon_choices(folders: list[str], kind: str) -> list[tuple[str, str]]:
    """(label, path) of the VAEs, LoRAs, embeddings or ControlNets ("controlnet": with their control type) in the
    model folders, for the panel's pickers."""
    from studio.core.modellibrary import by_kind, scan

    out = []
    builtin_net = BUILTIN_CONTROLNET.resolve()
    for m in by_kind(scan([MODELS_DIR, *map(Path, folders)]), kind):
        label = f"{m.name}  ·  {m.arch_label}" if m.arch else m.name
        if m.path.resolve() == builtin_net:
            label = "Built-in scribble (for the built-in model)"
        out.append((f"{label}  ·  {m.control}" if m.control else label, str(m.path)))
    return out


def controlnets_for(choices: list[tuple[str, str]], model: str) -> list[tuple[str, str]]:
    """The ControlNet choices for `model` ("" = the built-in): the built-in scribble ControlNet first for the built-in
    model, so a new scribble layer picks it, and left out for any other model, whose U-Net it does not fit."""
    builtin_net = BUILTIN_CONTROLNET.resolve()
    mine = [c for c in choices if Path(c[1]).resolve() == builtin_net]
    rest = [c for c in choices if Path(c[1]).resolve() != builtin_net]
    return mine + rest if not model or Path(model).resolve() == BUILTIN_MODEL.resolve() else rest
