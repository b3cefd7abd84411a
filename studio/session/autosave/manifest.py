"""The manifest: the one file that says what a save holds (see the package docstring for its format).

`manifests(doc_dir)` is the only reader of manifest.json and manifest.prev.json; the restore, the check
for a pending restore and the clean-up after a save all go through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from studio.core.atomic import TMP_SUFFIX

log = logging.getLogger(__package__)

FORMAT = "latent-studio-autosave"
VERSION = 1
MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"

_NAME = re.compile(r"^(img-[0-9a-f]{24}\.png|mask-[0-9a-f]{24}\.npz)$")


def names_in(obj: Any) -> list[str]:
    """The data file names a manifest (or a part of it) refers to."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("image", "mask", "before", "after") and isinstance(v, str):
                out.append(v)
            elif isinstance(v, (dict, list)):
                out.extend(names_in(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(names_in(v))
    return out


def _read_json(path: Path) -> dict | None:
    try:
        m = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def check(m: dict) -> None:
    """ValueError unless m is a manifest of a version this reader knows, with sane fields."""
    if m.get("format") != FORMAT:
        raise ValueError("not an autosave manifest")
    if m.get("version") != VERSION:
        raise ValueError(f"unknown manifest version {m.get('version')!r}")
    if not isinstance(m.get("entries"), list) or not isinstance(m.get("cursor"), int):
        raise ValueError("no history in the manifest")
    if not 0 <= m["cursor"] <= len(m["entries"]):
        raise ValueError("the cursor is outside the history")
    current = m.get("current")
    if not isinstance(current, dict) or not isinstance(current.get("image"), str):
        raise ValueError("no current image in the manifest")
    for name in names_in(m):
        if not _NAME.match(name):
            raise ValueError(f"bad file name {name!r} in the manifest")


def manifests(doc_dir: Path, *, checked: bool = True) -> Iterator[tuple[Path, dict]]:
    """manifest.json, then manifest.prev.json, read one at a time as asked: each that parses (and, when
    checked, is a manifest this reader knows) with its path. The others are logged and skipped."""
    for name in (MANIFEST, PREVIOUS):
        path = doc_dir / name
        m = _read_json(path)
        if m is None:
            if path.exists():
                log.warning("autosave: %s is unreadable", path)
            continue
        if checked:
            try:
                check(m)
            except ValueError as e:
                log.warning("autosave: %s: %s", path, e)
                continue
        yield path, m


def pick(doc_dir: Path) -> tuple[Path, dict] | None:
    """The first manifest that is sound and whose files all exist."""
    for path, m in manifests(doc_dir):
        missing = [n for n in names_in(m) if not (doc_dir / n).is_file()]
        if missing:
            log.warning("autosave: %s refers to missing files: %s", path, ", ".join(missing[:3]))
            continue
        return path, m
    return None


def clean_up(doc_dir: Path, in_flight: Collection[str] = ()) -> None:
    """Delete files that neither manifest refers to, and stale temp files: all but those of the
    targets named in `in_flight` (this process is writing them now)."""
    keep = {MANIFEST, PREVIOUS}
    for _, m in manifests(doc_dir, checked=False):
        keep.update(names_in(m))
    for p in doc_dir.iterdir():
        if p.name in keep or (p.name.endswith(TMP_SUFFIX) and any(p.name.startswith(f".{n}.") for n in in_flight)):
            continue
        with contextlib.suppress(OSError):
            if p.is_file():
                p.unlink()
