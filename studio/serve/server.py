"""`studio serve`: the warm engine. One process per user and studio (runtime.engine_key), listening on a private
AF_UNIX socket; it runs one request at a time on the local backend (the model stays loaded between requests) and
exits after `idle` seconds without one. The CLI starts it on first use (studio.serve.client)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..core.errors import OUT_OF_MEMORY, EngineError, first_line, is_out_of_memory
from . import runtime, wire


def import_engine() -> float:
    """Import what a generation needs (torch, the engine, diffusers' SD pipelines, CLIP); returns the seconds spent
    (0 when they are in already). The engine would import the same on its first run: here it is done ahead, and
    timed apart from the model's load."""
    t = time.perf_counter()
    import diffusers
    import transformers

    import studio.engine.engine  # noqa: F401 - torch

    diffusers.StableDiffusionPipeline, transformers.CLIPTextModel  # noqa: B018 - diffusers' lazy modules load here
    return time.perf_counter() - t


def _log(line: str) -> None:
    print(f"studio serve [{os.getpid()}] {time.strftime('%H:%M:%S')}: {line}", file=sys.stderr, flush=True)


class Server:
    def __init__(self, path: Path, idle: float) -> None:
        self.path = path
        self.idle = idle
        self.backend = None
        self.backend_key: tuple | None = None
        self.imports = 0.0  # the warm-up's import time, reported with the first job (its command waited for it)
        self.jobs = 0
        self.stopping = False

    def run(self, sock: socket.socket) -> None:
        self.imports = import_engine()
        _log(f"ready in {self.imports:.2f} s; exits after {self.idle:g} s without a request")
        sock.settimeout(self.idle if self.idle > 0 else None)
        while not self.stopping:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                _log("idle: exiting")
                return
            with conn:
                conn.settimeout(None)
                if not runtime.same_user(conn):  # the folder is private; this is the second lock
                    _log("refused a connection from another user")
                    continue
                try:
                    self.handle(conn)
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the job's watcher thread, blocked on a read
                except (wire.WireError, OSError) as e:
                    _log(f"connection dropped ({e})")

    def handle(self, conn: socket.socket) -> None:
        msg = wire.receive(conn)
        if msg.get("v") != wire.PROTOCOL:
            wire.send(conn, {"ev": "error", "type": "EngineError", "message": "The background engine is of another "
                             "version: run `studio serve --stop` and try again"})  # fmt: skip
            return
        op = msg.get("op")
        if op == "ping":
            wire.send(conn, {"ev": "pong", "pid": os.getpid(), "jobs": self.jobs, "idle": self.idle})
        elif op == "stop":
            self.stopping = True
            wire.send(conn, {"ev": "bye", "pid": os.getpid()})
        elif op == "generate":
            self.generate(conn, msg["request"], msg.get("options") or {})
        else:
            wire.send(conn, {"ev": "error", "type": "EngineError", "message": f"unknown operation {op!r}"})

    def _backend_for(self, options: dict):
        from ..backends.local import LocalBackend
        from ..core.memory import MemoryOptions

        memory = MemoryOptions(*options.get("memory", ()))
        key = (options.get("device"), tuple(options.get("model_folders", ())))
        if self.backend is None or key != self.backend_key:
            if self.backend is not None:
                self.backend.close()  # one engine's weights in memory at a time
            self.backend = LocalBackend(device=key[0], model_folders=key[1], memory=memory)
            self.backend_key = key
        self.backend.set_memory(memory)
        return self.backend

    def generate(self, conn: socket.socket, request, options: dict) -> None:
        cancel = threading.Event()
        done = threading.Event()
        imports, self.imports = self.imports, 0.0
        wire.send(conn, {"ev": "accepted", "pid": os.getpid(), "imports": imports})
        threading.Thread(target=_watch, args=(conn, cancel, done), name="studio-serve-watch", daemon=True).start()

        def on_step(info) -> None:
            try:
                wire.send(conn, {"ev": "step", "info": dataclasses.replace(info, preview=None)})
            except OSError:
                cancel.set()  # the command is gone: stop at the next step

        here = os.getcwd()
        try:
            os.chdir(options.get("cwd") or here)  # relative paths in the request are the command's
            result = self._backend_for(options).generate(request, on_step=on_step, cancel=cancel)
        except Exception as e:  # noqa: BLE001 - the command prints it as it would its own error
            name, text = type(e).__name__, str(e)
            if not isinstance(e, EngineError) and is_out_of_memory(e):
                name, text = "EngineError", OUT_OF_MEMORY
            _log(f"job failed: {name}: {first_line(e)}")
            kinds = [c.__name__ for c in type(e).__mro__] if name == type(e).__name__ else [name]
            reply = {"ev": "error", "type": name, "kinds": kinds, "message": text}
        else:
            self.jobs += 1
            # The command saves the images; the kept latents are for a window's timeline, not for it.
            reply = {"ev": "result", "result": dataclasses.replace(result, latents=None, x0=None, step_previews={})}
        finally:
            done.set()
            os.chdir(here)
        wire.send(conn, reply)


def _watch(conn: socket.socket, cancel: threading.Event, done: threading.Event) -> None:
    """The command's side of a running job: "cancel" (its Ctrl+C), or the connection closing, cancels it."""
    try:
        while not done.is_set():
            if wire.receive(conn).get("op") == "cancel":
                cancel.set()
    except (wire.WireError, OSError):
        if not done.is_set():
            cancel.set()


def serve(idle: float | None = None) -> int:
    """Run the warm engine in this process until it is idle for `idle` seconds (0: until stopped)."""
    import fcntl

    idle = runtime.idle_seconds() if idle is None else idle
    try:
        path = runtime.socket_path()
    except runtime.Unavailable as e:
        print(f"studio: error: no background engine here: {e}", file=sys.stderr)
        return 2
    lock = open(os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600), "r+")  # noqa: SIM115 - held
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"studio: a background engine is already running ({path})", file=sys.stderr)
        return 0
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    path.unlink(missing_ok=True)  # a socket left by an engine that was killed: no one listens on it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))  # 0600 from birth
    finally:
        os.umask(old)
    sock.listen(16)
    ours = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a kill: still remove the socket
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        Server(path, idle).run(sock)
    finally:
        sock.close()
        try:
            if os.stat(path).st_ino == ours:
                path.unlink()
        except OSError:
            pass
        lock.truncate(0)
        lock.close()
    return 0
