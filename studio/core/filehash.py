"""SHA-256 of model files, as A1111 writes them in metadata, cached on disk by path, size and mtime.

Hashing a 7 GB checkpoint takes seconds, so a hash is computed once per file version and kept in
``hashes.json`` (the user cache folder, or ``$LATENT_STUDIO_DATA_DIR``). Two digests per file:
- ``sha256``: the whole file (A1111's model hash is its first 10 hex digits, the TI hash its first 12, the VAE
  hash its first 10);
- ``addnet``: a ``.safetensors`` file's bytes after its header (A1111's LoRA hash: the first 12 hex digits),
  so that rewriting the metadata of a LoRA does not change its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hashes-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: losing it costs time, never correctness


def _digest(path: Path, start: int = 0) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _safetensors_data_start(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        return 0
    return 8 + struct.unpack("<Q", head)[0]


def file_hash(path: str | Path, kind: str = "sha256") -> str:
    """The full hex digest of ``kind`` ("sha256" or "addnet") for a file, from the cache when it is current.

    Raises OSError when the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = str(p)
    with _lock:
        entry = _load().get(key)
        if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime_ns and kind in entry:
            return str(entry[kind])
    if kind == "addnet" and p.suffix.lower() == ".safetensors":
        digest = _digest(p, _safetensors_data_start(p))
    elif kind == "addnet":
        digest = file_hash(p, "sha256")
    else:
        digest = _digest(p)
    with _lock:
        data = _load()
        entry = data.get(key)
        if not entry or entry.get("size") != st.st_size or entry.get("mtime") != st.st_mtime_ns:
            entry = {"size": st.st_size, "mtime": st.st_mtime_ns}
        entry[kind] = digest
        data[key] = entry
        _save(data)
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
