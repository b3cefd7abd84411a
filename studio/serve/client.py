"""The CLI's side of the warm engine: torch-free. `generate` sends a GenerateRequest to the engine (starting it on
first use), relays its steps to `on_step`, forwards a set `cancel`, and returns the GenerateResult, which the CLI
saves as it saves its own."""

from __future__ import annotations

import os
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..core import errors
from . import runtime, wire

START_TIMEOUT = 60.0  # seconds for a started engine to listen (it binds before it imports torch)


class RemoteError(Exception):
    """An unexpected error in the engine (not a studio EngineError); its class is named as the engine's was."""


def _connect(path: Path) -> socket.socket | None:
    """A connection to the engine at `path`, None when none listens there; Unavailable when the socket is not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        raise runtime.Unavailable(f"{path} is not a socket of yours")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    if not runtime.same_user(sock):
        sock.close()
        raise runtime.Unavailable(f"the process on {path} is another user's")
    return sock


def start(path: Path, say: Callable[[str], None] | None = None) -> socket.socket:
    """Start an engine (`studio serve`, detached, its output in a log beside the socket) and connect to it."""
    log = path.with_suffix(".log")
    if say:
        say(f"studio: starting the background engine (it stays {runtime.idle_seconds():g} s for the next commands; "
            "--no-server or STUDIO_NO_SERVER=1 runs without it)")  # fmt: skip
    package_root = Path(__file__).resolve().parent.parent.parent
    cmd = [sys.executable, "-m", "studio", "serve", "--idle", str(runtime.idle_seconds())]
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                cwd=package_root, start_new_session=True, close_fds=True)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        if proc.poll() not in (None, 0):  # 0: another command's engine won the race; it will listen
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise runtime.Unavailable(f"the background engine did not start: {tail[0]}")
        time.sleep(0.02)
    raise runtime.Unavailable(f"the background engine did not listen within {START_TIMEOUT:g} s (see {log})")


def connect(start_if_needed: bool = True, say: Callable[[str], None] | None = None) -> socket.socket:
    path = runtime.socket_path()
    sock = _connect(path)
    if sock is None:
        if not start_if_needed:
            raise runtime.Unavailable("no background engine is running")
        sock = start(path, say)
    return sock


def call(op: str, **fields) -> dict:
    """A one-message exchange with a running engine (ping, stop); Unavailable when none runs."""
    with connect(start_if_needed=False) as sock:
        wire.send(sock, {"op": op, "v": wire.PROTOCOL, **fields})
        return wire.receive(sock)


def generate(request, options: dict, on_step=None, cancel: threading.Event | None = None,
             say: Callable[[str], None] | None = None):  # fmt: skip
    """Run `request` on the warm engine: (GenerateResult, {"start": s, "imports": s}); Unavailable when there is
    none and none can be started (the command then runs in its own process)."""
    t0 = time.perf_counter()
    sock = connect(True, say)
    split: dict[str, float] = {}
    with sock:
        wire.send(sock, {"op": "generate", "v": wire.PROTOCOL, "request": request,
                         "options": {**options, "cwd": os.getcwd()}})  # fmt: skip
        cancelled = False
        while True:
            if cancel is not None and cancel.is_set() and not cancelled:
                wire.send(sock, {"op": "cancel"})
                cancelled = True
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            try:
                msg = wire.receive(sock)
            except wire.WireError as e:
                raise errors.EngineError(f"The background engine stopped during the run ({e}); see "
                                         f"{runtime.socket_path().with_suffix('.log')}") from e  # fmt: skip
            ev = msg.get("ev")
            if ev == "accepted":
                split.update(start=time.perf_counter() - t0, imports=float(msg.get("imports", 0.0)))
            elif ev == "step":
                if on_step is not None:
                    on_step(msg["info"])
            elif ev == "result":
                return msg["result"], split
            elif ev == "error":
                raise _error(str(msg.get("type", "")), list(msg.get("kinds") or ()), str(msg.get("message", "")))


def _error(name: str, kinds: list, message: str) -> Exception:
    """The engine's error as this process would have raised it: a studio EngineError by its nearest class in
    studio.core.errors (an UpscalerError is a ModelError), else a RemoteError named as the original (the CLI
    prints the name)."""
    for kind in [name, *kinds]:
        cls = getattr(errors, str(kind), None)
        if isinstance(cls, type) and issubclass(cls, errors.EngineError):
            return cls(message)
    return type(name if name.isidentifier() else "RemoteError", (RemoteError,), {})(message)
