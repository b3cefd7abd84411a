"""The folder lock: one live Autosaver per folder, across processes (flock / msvcrt) and within one."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__package__)

LOCK = "lock"

_held_lock = threading.Lock()
_held: set[str] = set()  # folders whose lock an Autosaver of this process holds


def _key(folder: Path) -> str:
    return str(Path(folder).expanduser().resolve())


def _lock_file(f: BinaryIO, *, lock: bool) -> None:
    """Take (without waiting: OSError when another holds it) or drop the lock on an open file."""
    if os.name == "nt":
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK if lock else msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]
    else:
        import fcntl

        fcntl.flock(f.fileno(), (fcntl.LOCK_EX | fcntl.LOCK_NB) if lock else fcntl.LOCK_UN)


class FolderLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._file: BinaryIO | None = None

    def acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+b")  # noqa: SIM115 - held open for as long as the lock is
        except OSError as e:
            log.warning("autosave: cannot open %s: %s", self.path, e)
            return False
        try:
            _lock_file(f, lock=True)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            _lock_file(f, lock=False)
        f.close()


def claim(folder: Path) -> FolderLock | None:
    """The folder's lock, held for this process's one Autosaver of it; None (logged) when this process
    has one already or another running studio holds the folder."""
    lock = FolderLock(folder)
    with _held_lock:
        key = _key(folder)
        if key in _held:
            log.warning("autosave: %s already has an autosaver in this process; this one is off", folder)
            return None
        if not lock.acquire():
            log.warning("autosave: %s is in use by another running studio; autosave is off", folder)
            return None
        _held.add(key)
    return lock


def unclaim(folder: Path, lock: FolderLock) -> None:
    with _held_lock:
        _held.discard(_key(folder))
    lock.release()


def locked_elsewhere(folder: Path) -> bool:
    """True when another process's Autosaver holds the folder (that studio is still running)."""
    with _held_lock:
        if _key(folder) in _held:
            return False
    if not (Path(folder) / LOCK).exists():
        return False
    probe = FolderLock(folder)
    if probe.acquire():
        probe.release()
        return False
    return True
