"""What a run asks of the loaded model besides its weights: LoRAs, embeddings, a VAE override.

LoRAs come from the prompt as A1111 writes them (``<lora:name:0.8>``) and from the request's list; embeddings
load when their keyword (the file name) is in a prompt, as in A1111; the VAE is the request's, or the model's
own. Names are looked up in the model library (``modellibrary``), paths taken as they are. Returns the
metadata keys A1111 writes for them (``Lora hashes``, ``TI hashes``, ``VAE``, ``VAE hash``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core import filehash
from ..core.errors import ModelError, RequestError, first_line
from ..core.modellibrary import find, folder_hint, scan
from ..core.prompts import extract_loras
from . import addons


def _lookup(items, name: str, kind: str, what: str) -> Path:
    p = Path(name).expanduser()
    if p.suffix and p.is_file():
        return p
    found = find(items, name, kind)
    if found is None:
        raise RequestError(f"{what} {name!r} is not in the model folders (`studio models` lists what is there)")
    return found.path


def _hash(fn, path: Path) -> str:
    try:
        return fn(path)
    except OSError:
        return ""


def prepare(model: Any, request: Any, folders: list[Path]) -> dict[str, str]:
    """Put the request's LoRAs, embeddings and VAE on the model (all its pipelines); the metadata keys."""
    if model.family == "upscale":
        return {}
    pipe = model.base
    items = None

    def library():
        nonlocal items
        if items is None:
            items = scan(folders)
        return items

    extra: dict[str, str] = {}
    try:
        # LoRAs: the prompt's tags (the negative's too, as A1111 strips them there) and the request's list.
        wanted: list[tuple[str, float]] = []
        for text in (request.prompt, request.negative_prompt):
            wanted += extract_loras(text or "")[1]
    except ValueError as e:
        raise RequestError(f"The prompt cannot be read: {first_line(e)}") from e
    wanted += [(n, float(w)) for n, w in request.loras]
    pairs = [(_lookup(library(), name, "lora", "LoRA"), w) for name, w in wanted]
    loras = addons.lora_set(pipe)
    if pairs:
        loras.apply(pairs)
        extra["Lora hashes"] = ", ".join(f"{name}: {_hash(filehash.lora_short_hash, p)}"
                                         for (name, _w), (p, _) in zip(wanted, pairs, strict=True))  # fmt: skip
    elif loras.loaded:
        loras.clear()

    # Embeddings whose keyword is in a prompt, for this model's architecture.
    text = f"{request.prompt}\n{request.negative_prompt}"
    base = addons.model_base(pipe)
    used, unusable = [], []
    for m in library() if text.strip() else ():
        broken = m.kind == "unknown" and folder_hint(m.path, folders) == "embedding"
        if m.kind != "embedding" and not broken:
            continue
        if re.search(r"(?<![0-9A-Za-z_])" + re.escape(m.name) + r"(?![0-9A-Za-z_])", text, flags=re.IGNORECASE):
            (used if m.kind == "embedding" and (not m.arch or m.arch == base) else unusable).append(m)
    # A named embedding that is broken or for another architecture (and no usable one of that name): one line.
    names = {m.name.lower() for m in used}
    for m in (m for m in unusable if m.name.lower() not in names):
        if m.kind == "unknown":
            raise ModelError(m.note or f"{m.path.name} is not a textual-inversion embedding the studio can read")
        addons.load_embeddings(pipe, [m.path])  # refuses it, naming its architecture and the model's
    if used:
        paths = [m.path for m in used]
        addons.load_embeddings(pipe, paths)
        extra["TI hashes"] = ", ".join(f"{p.stem}: {_hash(filehash.embedding_short_hash, p)}" for p in paths)

    # VAE.
    pipes = {id(p): p for p in [pipe, *model._pipes.values()]}.values()
    if request.vae:
        path = _lookup(library(), request.vae, "vae", "VAE").resolve()
        vae = _cached_vae(model, path)
        for p in pipes:
            addons.swap_vae(p, vae)
        extra["VAE"] = path.stem
        extra["VAE hash"] = _hash(filehash.vae_short_hash, path)
    else:
        for p in pipes:
            addons.restore_vae(p)
    return extra


def _cached_vae(model: Any, path: Path):
    key = addons.file_key(path, "VAE")
    cache = model.vae_override
    if key not in cache:
        cache.clear()  # one override kept: another VAE file replaces it
        if model.layout.single_file:
            from .singlefile import config_folder

            config = config_folder(model.layout.arch)
        else:
            config = model.layout.path
        try:
            cache[key] = addons.load_vae(path, config, dtype=model.dtype)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - one line for the artist
            raise ModelError(f"Cannot load the VAE {path.name}: {first_line(e)}") from e
    return cache[key]
