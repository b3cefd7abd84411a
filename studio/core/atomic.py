"""One way to write a file so that a reader never sees half of it: the tree's only atomic writer.

The bytes go to a hidden temporary file in the target's folder (same file system, so the rename is atomic), are
flushed and fsynced, then renamed over the target; the folder is fsynced so the rename survives a power cut. Any
failure, an exception or a KeyboardInterrupt included, removes the temporary file: no partial file, no stray
`.tmp` beside it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """The hidden temporary file a write of `path` goes through (`.name.<random>.tmp`, same folder)."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"


def fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: no window for another writer
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (FAT, some network shares)
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, overwrite: bool = True, fsync: bool = True, mkdir: bool = True, mode: int = 0o666
) -> Iterator[BinaryIO]:
    """Open a binary file that becomes `path` when the block ends without an exception.

    overwrite=False raises FileExistsError when `path` exists (checked and created in one step where the file
    system has hard links). fsync=False skips both fsyncs (caches that can be rebuilt). Errors propagate as they
    are (OSError and friends): callers word them for the artist.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, **options) -> Path:
    """`data` written to `path` atomically (options as for atomic_write)."""
    with atomic_write(path, **options) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", **options) -> Path:
    """`text` written to `path` atomically (options as for atomic_write)."""
    return write_bytes(path, text.encode(encoding), **options)
