"""SHA-256 of model files, as A1111 writes them in metadata, cached on disk by path, size and mtime.

Hashing a 7 GB checkpoint takes seconds, so a hash is computed once per file version and kept in
``hashes.json`` (the user cache folder, or ``$LATENT_STUDIO_DATA_DIR``). Two digests per file:
- ``sha256``: the whole file (A1111's model hash is its first 10 hex digits, the TI hash its first 12, the VAE
  hash its first 10);
- ``addnet``: a ``.safetensors`` file's bytes after its header (A1111's LoRA hash: the first 12 hex digits),
  so that rewriting the metadata of a LoRA does not change its hash.
Several files hashed as one stream (a diffusers folder's U-Net shards: ``files_hash``) are kept the same way, under
the folder's path, current while every file keeps its size and mtime. This is the studio's one sha256 of files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

from .atomic import write_text

CACHE_ENV = "LATENT_STUDIO_DATA_DIR"
_CHUNK = 1 << 20
_lock = threading.Lock()
_memory: dict[str, dict] = {}
_loaded_from: Path | None = None


def cache_file() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / "hashes.json"
    from platformdirs import user_cache_path

    return Path(user_cache_path("latent-studio", appauthor=False)) / "hashes.json"


def _load() -> dict[str, dict]:
    global _loaded_from, _memory
    path = cache_file()
    if _loaded_from != path:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            _memory = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _memory = {}
        _loaded_from = path
    return _memory


def _save(data: dict[str, dict]) -> None:
    path = cache_file()
    try:
        write_text(path, json.dumps(data), fsync=False)  # a cache: no fsync
    except OSError:
        pass  # a cache: losing it costs time, never correctness


def _digest(*paths: Path, start: int = 0) -> str:
    """The sha256 of the files as one stream, from byte ``start`` of the first one."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            start = 0
            while n := f.readinto(buf):
                h.update(view[:n])
    return h.hexdigest()


def _safetensors_data_start(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        return 0
    return 8 + struct.unpack("<Q", head)[0]


def _cached(key: str, kind: str, version: dict) -> str | None:
    with _lock:
        entry = _load().get(key)
        if entry and all(entry.get(k) == v for k, v in version.items()) and kind in entry:
            return str(entry[kind])
    return None


def _store(key: str, kind: str, version: dict, digest: str) -> None:
    with _lock:
        data = _load()
        entry = data.get(key)
        if not entry or any(entry.get(k) != v for k, v in version.items()):
            entry = dict(version)
        entry[kind] = digest
        data[key] = entry
        _save(data)


def file_hash(path: str | Path, kind: str = "sha256") -> str:
    """The full hex digest of ``kind`` ("sha256" or "addnet") for a file, from the cache when it is current.

    Raises OSError when the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    key, version = str(p), {"size": st.st_size, "mtime": st.st_mtime_ns}
    cached = _cached(key, kind, version)
    if cached is not None:
        return cached
    if kind == "addnet" and p.suffix.lower() == ".safetensors":
        digest = _digest(p, start=_safetensors_data_start(p))
    elif kind == "addnet":
        digest = file_hash(p, "sha256")
    else:
        digest = _digest(p)
    _store(key, kind, version, digest)
    return digest


def cached_file_hash(path: str | Path, kind: str = "sha256") -> str | None:
    """The digest when the cache holds a current one, else None: never reads the file (safe on the UI thread)."""
    try:
        p = Path(path).resolve()
        st = p.stat()
    except OSError:
        return None
    return _cached(str(p), kind, {"size": st.st_size, "mtime": st.st_mtime_ns})


def cached_files_hash(key: str | Path, files: Sequence[str | Path]) -> str | None:
    """files_hash from the cache alone, else None: never reads the files."""
    try:
        version = {"files": [[str(f), st.st_size, st.st_mtime_ns] for f in map(Path, files) for st in (f.stat(),)]}
    except OSError:
        return None
    return _cached(str(Path(key).resolve()), "sha256", version)


def files_hash(key: str | Path, files: Sequence[str | Path]) -> str:
    """The sha256 of ``files`` read as one stream, cached under ``key`` (their folder) while every file keeps its
    size and mtime. Raises OSError when one cannot be read."""
    paths = [Path(f) for f in files]
    version = {"files": [[str(f), st.st_size, st.st_mtime_ns] for f in paths for st in (f.stat(),)]}
    name = str(Path(key).resolve())
    cached = _cached(name, "sha256", version)
    if cached is not None:
        return cached
    digest = _digest(*paths)
    _store(name, "sha256", version, digest)
    return digest


def model_short_hash(path: str | Path) -> str:
    return file_hash(path)[:10]


def lora_short_hash(path: str | Path) -> str:
    return file_hash(path, "addnet")[:12]


def embedding_short_hash(path: str | Path) -> str:
    return file_hash(path)[:12]


def vae_short_hash(path: str | Path) -> str:
    return file_hash(path)[:10]


def forget() -> None:
    """Drop the in-memory copy (tests point the cache elsewhere)."""
    global _loaded_from
    with _lock:
        _loaded_from = None
        _memory.clear()
