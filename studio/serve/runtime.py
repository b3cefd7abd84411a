"""Where the warm engine's socket lives and who may use it.

The socket is an AF_UNIX socket (never a TCP port: nothing on another machine can reach it) in the user's runtime
folder (platformdirs; `STUDIO_RUNTIME_DIR` overrides it), which must be a folder of this user's that no one else may
enter (0700); where that is not so, the warm engine is off and the command runs in its own process. On Linux both
ends also check the other's user id (SO_PEERCRED). Each engine is keyed by what makes it this studio: the Python, the
package folder and its source files' times, and the environment the engine reads (STUDIO_*, threads, CUDA...), so a
changed checkout or `STUDIO_DEVICE=cuda` never talks to an engine started for something else.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import sys
import warnings
from pathlib import Path

from .. import __version__

IDLE_SECONDS = 600.0  # an engine with no request for this long exits (STUDIO_SERVER_IDLE; `studio serve --idle`)
# The environment a command hands to the engine it starts: the engine reads these, so they key it. (Not HF_*: the
# studio sets the hub's offline switches itself, on import, so they differ by what a process has imported.)
_KEY_PREFIXES = ("STUDIO_", "LATENT_STUDIO_", "OMP_", "MKL_", "CUDA_", "PYTORCH_")
_NOT_KEYS = ("STUDIO_NO_SERVER", "STUDIO_SERVER_IDLE", "STUDIO_RUNTIME_DIR")
_MAX_SOCKET_PATH = 100  # sun_path holds 104 (macOS) to 108 (Linux) bytes


class Unavailable(Exception):
    """The warm engine cannot be used here (the message says why); the command runs in its own process."""


def disabled() -> bool:
    """STUDIO_NO_SERVER=1: no warm engine is used or started (tests and CI set it)."""
    return os.environ.get("STUDIO_NO_SERVER", "").strip().lower() not in ("", "0", "false", "no")


def idle_seconds() -> float:
    try:
        return float(os.environ.get("STUDIO_SERVER_IDLE", IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS


def runtime_dir(create: bool = True) -> Path:
    """The private folder for sockets; Unavailable when it is not private to this user."""
    if not hasattr(socket, "AF_UNIX"):
        raise Unavailable("this system has no local (AF_UNIX) sockets")
    base = os.environ.get("STUDIO_RUNTIME_DIR", "")
    if not base:
        import platformdirs

        with warnings.catch_warnings():  # no XDG_RUNTIME_DIR: platformdirs warns and uses /tmp/runtime-<uid>
            warnings.simplefilter("ignore")
            base = platformdirs.user_runtime_dir("latent-studio", appauthor=False)
    path = Path(base)
    if create and not path.exists():
        for p in reversed([path, *path.parents]):  # missing parents too: private, as the leaf
            if not p.exists():
                try:
                    p.mkdir(mode=0o700)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise Unavailable(f"cannot make {p} ({e.strerror})") from e
    check_private(path)
    return path


def check_private(path: Path) -> None:
    """The folder is ours, not a link, and no one else may enter it; its parent cannot swap it from under us."""
    try:
        st = os.lstat(path)
        parent = os.stat(path.parent)
    except OSError as e:
        raise Unavailable(f"{path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise Unavailable(f"{path} is not a folder")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Unavailable(f"{path} is not private to you (mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid})")
    if parent.st_uid not in (0, os.getuid()) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        raise Unavailable(f"{path.parent} may be changed by other users")


def engine_key() -> str:
    """Which engine this command may use (see the module's docstring)."""
    package = Path(__file__).resolve().parent.parent
    newest = max((p.stat().st_mtime_ns for p in package.rglob("*.py")), default=0)
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_KEY_PREFIXES) and k not in _NOT_KEYS)
    text = repr((sys.executable, str(package), __version__, newest, env))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def socket_path(key: str | None = None) -> Path:
    path = runtime_dir() / f"engine-{key or engine_key()}.sock"
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise Unavailable(f"the runtime folder's path is too long for a socket ({path})")
    return path


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end (Linux), else None (the folder's permissions guard it)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)  # struct ucred
    return uid


def same_user(sock: socket.socket) -> bool:
    uid = peer_uid(sock)
    return uid is None or uid == os.getuid()
