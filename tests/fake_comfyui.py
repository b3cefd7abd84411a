"""A fake ComfyUI server for tests: ComfyUI 0.27's HTTP + WebSocket protocol (the routes
studio.backends.comfyui.client uses), with no model behind it.

``FakeComfy`` runs aiohttp on 127.0.0.1 (a free port) in a thread with its own event loop. It validates prompts
against the recorded ``/object_info`` of a real ComfyUI 0.27 (tests/data/comfyui/object_info-0.27.json) and
answers rejections in the real shape, runs accepted prompts one at a time in order with the real message order,
and "makes" pictures that let a test see the request arrived:

- a KSampler's result is a solid RGB image of its latent's size (EmptyLatentImage's width x height, or the
  uploaded image's size for img2img/inpaint) with red = seed % 256, green = steps % 256 and
  blue = round(255 * denoise) (KSamplerAdvanced: noise_seed, steps, and the share of steps it runs);
- ImageUpscaleWithModel resizes by the factor in the model's name ("x2", "4x"; default 4), ImageScale/By resize;
  with no sampler upstream (a plain upscale) the uploaded picture itself comes through, resized;
- a step preview (when ``extra_data.preview_method`` is set) is a JPEG fitted to 512 px with red = seed % 256 and
  green = the step number.

Like the real server it caches: a node whose class and inputs (links followed, uploaded files by content) equal
one of the previous prompt's is listed in ``execution_cached`` and not run again (a cached SaveImage re-sends its
``executed``; SaveImageWebsocket always runs). Pass ``cache=False`` to run everything every time.

Knobs (attributes; change them between prompts): ``step_delay`` (seconds per sampler step), ``token`` (require
``Authorization: Bearer <token>`` on HTTP and the socket upgrade, else 401), ``drop_socket_at_step`` (after step
k's progress, cut the prompt's socket without a close frame; the job goes on; fires once, then None),
``die_at_step`` (at step k the server stops: sockets cut, port closed, the job never finishes),
``restart_at_step`` (at step k the server restarts: down for ``restart_down_for`` seconds, then back on the same
port knowing no prompt; see :meth:`FakeComfy.restart`),
``fail_at_step`` (at step k: ``execution_error`` with ``fail_message``), ``jobs_api``/``features_api`` (False:
an older server without ``/api/jobs/{id}/cancel`` / ``/features``), ``preview_metadata`` (False: a server that
ignores the client's feature flag and frames every image as type 1), ``max_upload_size`` (bigger bodies get 413),
``http_delay`` (seconds every HTTP answer waits: for timeouts), ``login_page`` (every HTTP answer is a proxy's
HTML login page), ``models`` (folder -> file names; also fills the loaders' combos), ``cache``.
Steps count from 1 across the whole prompt (all samplers). Records: ``prompts`` (accepted POST /prompt bodies),
``rejected``, ``uploads``, ``interrupts``, ``cancels``, ``deletes`` (queue), ``history_deletes``, ``ended`` (every
prompt's last history entry, kept when the history is deleted), ``restarts`` (a count), ``connections`` (each socket's client id,
feature flags, Authorization), ``requests`` ((method, path, Authorization) of every HTTP request). The server's
thread writes them: a test that must see one waits with ``wait_until(predicate)`` (or ``wait_connections(n)``),
which wakes on every change (its timeout is only a guard against a hang, never a measure of speed).

Real-server details it copies: ``execution_interrupted`` goes to every socket (the rest of a prompt's messages
only to its client's); a socket that connects while its client's prompt runs gets a catch-up
``executing {"node": <current node>}`` (no prompt_id); a prompt whose outputs partly fail validation is queued
with the good ones and the 200 answer carries ``node_errors``; a cancelled queued prompt sends nothing at all.

The test suite blocks the network (tests/conftest.py); ``allow_loopback()`` lets a test reach 127.0.0.1 only.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import copy
import hashlib
import io
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image, PngImagePlugin

OBJECT_INFO = Path(__file__).parent / "data" / "comfyui" / "object_info-0.27.json"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_OUTPUT_FILES = {"SaveImage": "output", "PreviewImage": "temp"}
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
HANG_GUARD = 60.0  # seconds a test waits for something that must happen: a hang guard, not a latency bar


@contextlib.contextmanager
def allow_loopback() -> Iterator[None]:
    """Let sockets reach 127.0.0.1 / ::1 (numeric names only, no DNS) inside the block; all else stays blocked."""
    saved = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def loopback(address: Any) -> bool:
        return isinstance(address, tuple) and str(address[0]) in _LOOPBACK

    def connect(sock: socket.socket, address: Any) -> None:
        return _socket.socket.connect(sock, address) if loopback(address) else saved[0](sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        return _socket.socket.connect_ex(sock, address) if loopback(address) else saved[1](sock, address)

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if str(host) in _LOOPBACK:
            host = "::1" if str(host) == "::1" else "127.0.0.1"
            return _socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        return saved[2](host, port, family, type, proto, flags)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved  # type: ignore[method-assign]


def solid_png(size: tuple[int, int], rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour, as a test's upload."""
    out = io.BytesIO()
    Image.new("RGB", size, rgb).save(out, "PNG")
    return out.getvalue()


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _combo(spec: Any) -> list[Any] | None:
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return spec[0]
    if isinstance(spec, list) and spec and spec[0] == "COMBO":
        return list((spec[1] if len(spec) > 1 else {}).get("options", []))
    return None


@dataclass
class _Job:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    client_id: str
    extra_data: dict[str, Any]
    outputs: list[str]


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    transport: Any
    flags: dict[str, Any] = field(default_factory=dict)


class _Interrupted(Exception):
    pass


class _Failed(Exception):
    pass


class _Died(Exception):
    pass


class _Restarted(Exception):
    pass


class FakeComfy:
    def __init__(
        self,
        *,
        step_delay: float = 0.02,
        token: str = "",
        drop_socket_at_step: int | None = None,
        die_at_step: int | None = None,
        restart_at_step: int | None = None,
        restart_down_for: float = 0.2,
        fail_at_step: int | None = None,
        fail_message: str = "Fake failure",
        jobs_api: bool = True,
        features_api: bool = True,
        preview_metadata: bool = True,
        max_upload_size: int = 100 * 1024 * 1024,
        http_delay: float = 0.0,
        login_page: bool = False,
        models: dict[str, list[str]] | None = None,
        cache: bool = True,
        object_info_path: Path = OBJECT_INFO,
    ) -> None:
        self.step_delay = step_delay
        self.token = token
        self.drop_socket_at_step = drop_socket_at_step
        self.die_at_step = die_at_step
        self.restart_at_step = restart_at_step
        self.restart_down_for = restart_down_for
        self.fail_at_step = fail_at_step
        self.fail_message = fail_message
        self.jobs_api = jobs_api
        self.features_api = features_api
        self.preview_metadata = preview_metadata
        self.max_upload_size = max_upload_size
        self.http_delay = http_delay
        self.login_page = login_page
        self.cache = cache
        self._object_info: dict[str, Any] = json.loads(Path(object_info_path).read_text(encoding="utf-8"))
        self.models = models if models is not None else self._recorded_models()
        # records
        self.prompts: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []
        self.interrupts: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.deletes: list[str] = []
        self.history_deletes: list[str] = []
        self.ended: dict[str, dict[str, Any]] = {}
        self.restarts = 0
        self.connections: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self._changed = threading.Condition()  # notified by the server's thread whenever a record changes
        # state (touched on the server's loop only, read by tests)
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, filename) -> bytes
        self.history: dict[str, dict[str, Any]] = {}
        self._pending: list[_Job] = []
        self._running: _Job | None = None
        self._interrupt = False
        self._current_node: str | None = None
        self._number = 0
        self._counters: dict[tuple[str, str], int] = {}
        self._cache: dict[str, Any] = {}  # node signature -> (outputs, ui)
        self._sockets: dict[str, _Socket] = {}
        self._dead = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.url = ""
        self.port = 0

    # ---- lifetime ---------------------------------------------------------------------------------------------

    def start(self) -> FakeComfy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._startup(sock))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                sock.close()
                self._loop.close()
                return
            ready.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.run_until_complete(self._shutdown())
                self._loop.close()

        self._thread = threading.Thread(target=run, name=f"FakeComfy:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(HANG_GUARD):
            raise RuntimeError("the fake ComfyUI server did not start")
        if failure:
            self._thread.join(5)
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the server (idempotent) and join its thread; every socket it had is closed."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        if thread.is_alive():
            raise RuntimeError("the fake ComfyUI server did not stop")
        self._loop = self._thread = None

    def wait_until(self, predicate: Callable[[], Any], timeout: float = HANG_GUARD, what: str = "") -> None:
        """Return once ``predicate()`` holds (checked now and after each change the server records); AssertionError
        after ``timeout`` seconds, which only guards against a hang."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"the fake ComfyUI server: no {what or 'such change'} within {timeout:g} s")

    def wait_connections(self, count: int, timeout: float = HANG_GUARD) -> list[dict[str, Any]]:
        """The socket connections, once at least ``count`` are registered."""
        self.wait_until(lambda: len(self.connections) >= count, timeout, f"{count} socket connection(s)")
        return list(self.connections)

    def _recorded(self) -> None:
        """Wake the tests waiting in wait_until (called on the server's thread after a record changes)."""
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> FakeComfy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (to read or change state safely)."""
        assert self._loop is not None

        async def wrapped() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(10)

    async def _startup(self, sock: socket.socket) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=self.max_upload_size)
        for prefix in ("", "/api"):
            app.router.add_get(prefix + "/system_stats", self._system_stats)
            app.router.add_get(prefix + "/object_info", self._object_info_all)
            app.router.add_get(prefix + "/object_info/{node_class}", self._object_info_one)
            app.router.add_get(prefix + "/features", self._features)
            app.router.add_get(prefix + "/models", self._model_folders)
            app.router.add_get(prefix + "/models/{folder}", self._model_files)
            app.router.add_post(prefix + "/upload/image", self._upload)
            app.router.add_get(prefix + "/prompt", self._prompt_info)
            app.router.add_post(prefix + "/prompt", self._post_prompt)
            app.router.add_get(prefix + "/queue", self._get_queue)
            app.router.add_post(prefix + "/queue", self._post_queue)
            app.router.add_post(prefix + "/interrupt", self._post_interrupt)
            app.router.add_get(prefix + "/history", self._history_all)
            app.router.add_post(prefix + "/history", self._post_history)
            app.router.add_get(prefix + "/history/{prompt_id}", self._history_one)
            app.router.add_get(prefix + "/view", self._view)
            app.router.add_get(prefix + "/ws", self._websocket)
        app.router.add_post("/api/jobs/{prompt_id}/cancel", self._cancel_job)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.3)
        await self._runner.setup()
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        await self._cut_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _cut_sockets(self) -> None:
        for entry in list(self._sockets.values()):
            if entry.transport is not None:
                entry.transport.abort()
        self._sockets.clear()

    async def _die(self) -> None:
        """The server process ends: sockets cut, the port closed, queued work gone."""
        self._dead = True
        self._pending.clear()
        await self._cut_sockets()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    # ---- a restart --------------------------------------------------------------------------------------------

    def restart(self) -> None:
        """The server process restarts: :meth:`go_down`, then :meth:`come_back` on the same address. Like a real
        restart, it then knows no prompt (queue and history are memory)."""
        self.go_down()
        self.come_back()

    def go_down(self) -> None:
        """The server process ends: the running job stops without a trace, queue, history and temp files are gone,
        sockets are cut and the port closed. Files in input/ and output/ stay (they are on disk)."""
        self._on_loop(self._go_down())

    def come_back(self) -> None:
        """The server starts again on the same port (after go_down, die_at_step or a restart)."""
        self._on_loop(self._come_back())

    def _on_loop(self, coroutine: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(HANG_GUARD)

    async def _go_down(self) -> None:
        if self._worker is not None:  # the running job ends here, with no history entry and no message
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = asyncio.get_running_loop().create_task(self._work())
        await self._forget_all()

    async def _forget_all(self) -> None:
        self._dead = True
        self._running, self._current_node, self._cache = None, None, {}
        self._pending.clear()
        self.history.clear()
        self.files = {key: data for key, data in self.files.items() if key[0] != "temp"}  # ComfyUI empties temp/
        await self._cut_sockets()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._recorded()

    async def _come_back(self) -> None:
        if self._site is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            assert self._runner is not None
            self._site = web.SockSite(self._runner, sock)
            await self._site.start()
        self._dead = False
        self.restarts += 1
        assert self._wake is not None
        self._wake.set()
        self._recorded()

    # ---- HTTP -------------------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        self.requests.append((request.method, request.path, authorization))
        if self._dead:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if self.http_delay:
            await asyncio.sleep(self.http_delay)
        if self.token and authorization != f"Bearer {self.token}":
            return web.Response(status=401, text="401 Unauthorized")
        if self.login_page:
            return web.Response(text="<html><body><form>Sign in</form></body></html>", content_type="text/html")
        return await handler(request)

    def _recorded_models(self) -> dict[str, list[str]]:
        def options(node: str, name: str) -> list[str]:
            spec = self._object_info.get(node, {}).get("input", {}).get("required", {}).get(name)
            return list(_combo(spec) or [])

        return {
            "checkpoints": options("CheckpointLoaderSimple", "ckpt_name"),
            "vae": [v for v in options("VAELoader", "vae_name") if v != "pixel_space"],
            "loras": options("LoraLoader", "lora_name"),
            "upscale_models": options("UpscaleModelLoader", "model_name"),
            "embeddings": [],
            "controlnet": [],
            "vae_approx": [],
        }

    def object_info(self) -> dict[str, Any]:
        """The recorded answer, its file combos filled from ``models`` and the uploaded input images."""
        info = copy.deepcopy(self._object_info)
        inputs = sorted({name for (kind, _, name) in self._input_names()})
        fills = {
            ("CheckpointLoaderSimple", "ckpt_name"): self.models.get("checkpoints", []),
            ("VAELoader", "vae_name"): [*self.models.get("vae", []), "pixel_space"],
            ("LoraLoader", "lora_name"): self.models.get("loras", []),
            ("UpscaleModelLoader", "model_name"): self.models.get("upscale_models", []),
            ("LoadImage", "image"): inputs,
            ("LoadImageMask", "image"): inputs,
        }
        for (node, name), values in fills.items():
            spec = info.get(node, {}).get("input", {}).get("required", {}).get(name)
            if isinstance(spec, list) and spec and isinstance(spec[0], list):
                spec[0] = list(values)
            elif isinstance(spec, list) and spec and spec[0] == "COMBO":
                spec[1]["options"] = list(values)
        return info

    def _input_names(self) -> list[tuple[str, str, str]]:
        return [("input", sub, f"{sub}/{name}" if sub else name) for (kind, sub, name) in self.files if kind == "input"]

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 64 << 30,
                    "ram_free": 48 << 30,
                    "comfyui_version": "0.27.0",
                    "required_frontend_version": "1.0.0",
                    "python_version": "3.12.0",
                    "pytorch_version": "2.8.0+cu128",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "127.0.0.1"],
                },
                "devices": [
                    {
                        "name": "cuda:0 Fake GPU",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 24 << 30,
                        "vram_free": 20 << 30,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def _object_info_all(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info())

    async def _object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def _features(self, request: web.Request) -> web.Response:
        if not self.features_api:
            raise web.HTTPNotFound()
        return web.json_response(self._server_features())

    def _server_features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": self.preview_metadata, "max_upload_size": self.max_upload_size}

    async def _model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(self.models))

    async def _model_files(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.models:
            return web.Response(status=404, text="Folder not found")
        return web.json_response(sorted(self.models[folder]))

    async def _upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder") or "")
        overwrite = str(post.get("overwrite") or "") in ("true", "1")
        data = image.file.read()
        name = Path(image.filename).name
        if kind not in ("input", "temp", "output") or ".." in subfolder.split("/"):
            return web.Response(status=400)
        if not overwrite:
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (name, "")
            counter = 1
            while (kind, subfolder, name) in self.files and self.files[(kind, subfolder, name)] != data:
                name = f"{stem} ({counter}){ext}"
                counter += 1
        self.files[(kind, subfolder, name)] = data
        self.uploads.append(
            {
                "name": name,
                "filename": image.filename,
                "subfolder": subfolder,
                "type": kind,
                "overwrite": overwrite,
                "data": data,
            }
        )
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _prompt_info(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._queue_remaining()}})

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": _error("invalid_prompt", "Invalid JSON"), "node_errors": {}}, status=400)
        if not isinstance(body, dict) or "prompt" not in body:
            self.rejected.append(body)
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt_id = body.get("prompt_id")
        if prompt_id is not None and not (isinstance(prompt_id, str) and _UUID.match(prompt_id)):
            self.rejected.append(body)
            error = _error(
                "invalid_prompt_id",
                "prompt_id must be a valid UUID",
                f"prompt_id must be a lowercase UUID: {prompt_id!r}",
            )
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt_id = prompt_id or str(uuid.uuid4())
        graph = body["prompt"]
        error, node_errors, outputs = self._validate(graph)
        if error is not None:
            self.rejected.append(body)
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.prompts.append(body)
        self._recorded()
        self._number += 1
        job = _Job(
            self._number,
            prompt_id,
            graph,
            str(body.get("client_id") or ""),
            dict(body.get("extra_data") or {}),
            outputs,
        )
        if body.get("front"):
            self._pending.insert(0, job)
        else:
            self._pending.append(job)
        assert self._wake is not None
        self._wake.set()
        await self._broadcast_status()
        return web.json_response({"prompt_id": prompt_id, "number": job.number, "node_errors": node_errors})

    def _queue_entry(self, job: _Job) -> list[Any]:
        return [job.number, job.prompt_id, job.graph, job.extra_data, job.outputs]

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._queue_entry(self._running)] if self._running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [self._queue_entry(j) for j in self._pending]}
        )

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
        for prompt_id in body.get("delete") or []:
            self.deletes.append(prompt_id)
            self._recorded()
            self._pending = [j for j in self._pending if j.prompt_id != prompt_id]
        await self._broadcast_status()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.interrupts.append(body)
        self._recorded()
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if self._running is not None and (wanted is None or wanted == self._running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _cancel_job(self, request: web.Request) -> web.Response:
        if not self.jobs_api:
            raise web.HTTPNotFound()
        prompt_id = request.match_info["prompt_id"]
        self.cancels.append(prompt_id)
        self._recorded()
        cancelled = False
        if self._running is not None and self._running.prompt_id == prompt_id:
            self._interrupt = cancelled = True
        before = len(self._pending)
        self._pending = [j for j in self._pending if j.prompt_id != prompt_id]
        if len(self._pending) != before:
            cancelled = True
            await self._broadcast_status()
        return web.json_response({"cancelled": cancelled})

    async def _history_all(self, request: web.Request) -> web.Response:
        return web.json_response(self.history)

    async def _post_history(self, request: web.Request) -> web.Response:
        """The real route: ``{"delete": [ids]}`` drops those entries, ``{"clear": true}`` all (no files)."""
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete") or []:
            self.history_deletes.append(prompt_id)
            self.history.pop(prompt_id, None)
        self._recorded()
        return web.Response(status=200)

    async def _history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def _view(self, request: web.Request) -> web.Response:
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        kind = request.query.get("type", "output")
        if not filename or ".." in filename or ".." in subfolder.split("/"):
            return web.Response(status=400)
        data = self.files.get((kind, subfolder, filename))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png" if filename.endswith(".png") else "image/jpeg")

    # ---- the socket -------------------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        entry = _Socket(ws, request.transport)
        self._sockets[client_id] = entry  # the same id again replaces the old socket
        record = {"client_id": client_id, "feature_flags": None, "authorization": request.headers.get("Authorization")}
        self.connections.append(record)
        self._recorded()
        status = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}, "sid": client_id}
        await ws.send_json({"type": "status", "data": status})
        if self._running is not None and self._running.client_id == client_id and self._current_node:
            await ws.send_json({"type": "executing", "data": {"node": self._current_node}})  # the real catch-up
        first = True
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    data = json.loads(message.data)
                    if first and data.get("type") == "feature_flags":
                        entry.flags = dict(data.get("data") or {})
                        record["feature_flags"] = entry.flags
                        self._recorded()
                        await ws.send_json({"type": "feature_flags", "data": self._server_features()})
                first = False
        finally:
            if self._sockets.get(client_id) is entry:
                del self._sockets[client_id]
        return ws

    def _queue_remaining(self) -> int:
        return len(self._pending) + (1 if self._running else 0)

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        entry = self._sockets.get(client_id)
        if entry is not None and not entry.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await entry.ws.send_str(json.dumps({"type": kind, "data": data}))

    async def _send_image(self, job: _Job, node: str, data: bytes, fmt: str) -> None:
        entry = self._sockets.get(job.client_id)
        if entry is None or entry.ws.closed:
            return
        if self.preview_metadata and entry.flags.get("supports_preview_metadata"):
            meta = {
                "node_id": node,
                "display_node_id": node,
                "parent_node_id": None,
                "real_node_id": node,
                "prompt_id": job.prompt_id,
                "image_type": f"image/{fmt}",
            }
            header = json.dumps(meta).encode("utf-8")
            frame = struct.pack(">II", 4, len(header)) + header + data
        else:
            frame = struct.pack(">II", 1, 2 if fmt == "png" else 1) + data
        with contextlib.suppress(ConnectionError, RuntimeError):
            await entry.ws.send_bytes(frame)

    async def _broadcast_status(self) -> None:
        status = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}
        for client_id in list(self._sockets):
            await self._send(client_id, "status", status)

    # ---- validation -------------------------------------------------------------------------------------------

    def _validate(self, graph: Any) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
        """(error or None, node_errors, the outputs to run): the real server's checks and answer shapes."""
        info = self.object_info()
        if not isinstance(graph, dict) or not graph:
            return _error("invalid_prompt", "Cannot execute because the prompt is empty."), {}, []
        for node_id, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), {}, []
            if node["class_type"] not in info:
                ct = node["class_type"]
                error = _error(
                    "missing_node_type",
                    f"Node '{ct}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=ct,
                    node_title=ct,
                )
                return error, {}, []
        outputs = sorted((n for n in graph if info[graph[n]["class_type"]].get("output_node")), key=_node_order)
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs"), {}, []
        node_errors: dict[str, Any] = {}
        good: list[str] = []
        checked: dict[str, list[dict[str, Any]]] = {}
        for output in outputs:
            bad = False
            for node_id in self._upstream(graph, output):
                if node_id not in checked:
                    checked[node_id] = self._check_node(graph, node_id, info)
                if checked[node_id]:
                    bad = True
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": checked[node_id],
                            "dependent_outputs": [],
                            "class_type": graph[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output)
            if not bad:
                good.append(output)
        if not good:
            return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), node_errors, []
        return None, node_errors, good

    def _upstream(self, graph: dict[str, Any], output: str) -> list[str]:
        """The nodes an output needs, inputs before users (a depth-first post-order)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen or node_id not in graph:
                return
            seen.add(node_id)
            for value in (graph[node_id].get("inputs") or {}).values():
                if _is_link(value):
                    visit(value[0])
            order.append(node_id)

        visit(output)
        return order

    def _check_node(self, graph: dict[str, Any], node_id: str, info: dict[str, Any]) -> list[dict[str, Any]]:
        node = graph[node_id]
        spec = info[node["class_type"]]["input"]
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, dict):
            return [_error("invalid_prompt", "Node inputs must be an object", node_id)]
        errors: list[dict[str, Any]] = []
        for name in spec.get("required", {}):
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
        declared = {**spec.get("optional", {}), **spec.get("required", {})}
        for name, value in inputs.items():
            if name not in declared:
                continue  # the real server ignores unknown inputs
            input_spec = declared[name]
            input_type = "COMBO" if _combo(input_spec) is not None else input_spec[0]
            options = input_spec[1] if len(input_spec) > 1 and isinstance(input_spec[1], dict) else {}
            if _is_link(value):
                source = graph.get(value[0])
                if source is None:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, source node not in the prompt",
                            f"{name}",
                            input_name=name,
                            received_value=value,
                        )
                    )
                    continue
                returns = info[source["class_type"]]["output"]
                if not 0 <= value[1] < len(returns):
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, output index out of range",
                            f"{name}",
                            input_name=name,
                            received_value=value,
                        )
                    )
                elif returns[value[1]] != input_type and "*" not in (returns[value[1]], input_type):
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({returns[value[1]]}) mismatch input_type({input_type})",
                            input_name=name,
                            input_config=input_spec,
                            received_type=returns[value[1]],
                            linked_node=value,
                        )
                    )
                continue
            if input_type == "COMBO":
                if node["class_type"] in ("LoadImage", "LoadImageMask") and name == "image":
                    if self._input_file(value) is None:
                        errors.append(
                            _error(
                                "custom_validation_failed",
                                "Custom validation failed for node",
                                f"image - Invalid image file: {value}",
                                input_name=name,
                            )
                        )
                elif value not in _combo(input_spec):
                    errors.append(
                        _error(
                            "value_not_in_list",
                            "Value not in list",
                            f"{name}: '{value}' not in {_combo(input_spec)}",
                            input_name=name,
                            input_config=input_spec,
                            received_value=value,
                        )
                    )
            elif input_type in ("INT", "FLOAT"):
                try:
                    number = int(value) if input_type == "INT" else float(value)
                except (TypeError, ValueError):
                    errors.append(
                        _error(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {input_type} value",
                            f"{name}, {value}",
                            input_name=name,
                            received_value=value,
                        )
                    )
                    continue
                if "min" in options and number < options["min"]:
                    errors.append(
                        _error(
                            "value_smaller_than_min",
                            f"Value {number} smaller than min of {options['min']}",
                            f"{name}",
                            input_name=name,
                            received_value=value,
                        )
                    )
                if "max" in options and number > options["max"]:
                    errors.append(
                        _error(
                            "value_bigger_than_max",
                            f"Value {number} bigger than max of {options['max']}",
                            f"{name}",
                            input_name=name,
                            received_value=value,
                        )
                    )
        return errors

    def _input_file(self, value: Any) -> bytes | None:
        name = str(value).removesuffix(" [input]")
        subfolder, _, filename = name.rpartition("/")
        return self.files.get(("input", subfolder, filename))

    # ---- execution --------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            while not self._pending or self._dead:
                self._wake.clear()
                await self._wake.wait()
            job = self._pending.pop(0)
            self._running, self._interrupt, self._current_node = job, False, None
            try:
                await self._execute(job)
            except _Died:
                await self._die()
            except _Restarted:
                await self._forget_all()
                await asyncio.sleep(self.restart_down_for)
                await self._come_back()
            finally:
                self._running = None
            if not self._dead:
                await self._broadcast_status()

    async def _execute(self, job: _Job) -> None:
        pid, cid = job.prompt_id, job.client_id
        messages: list[list[Any]] = []

        async def emit(kind: str, data: dict[str, Any], keep: bool = False) -> None:
            if keep:
                messages.append([kind, data])
            await self._send(cid, kind, data)

        await self._broadcast_status()
        await emit("execution_start", {"prompt_id": pid, "timestamp": int(time.time() * 1000)}, keep=True)
        graph = job.graph
        order: list[str] = []
        for output in job.outputs:
            order += [n for n in self._upstream(graph, output) if n not in order]
        signatures = {n: self._signature(graph, n) for n in order}
        cache = self._cache if self.cache else {}
        cached = [n for n in order if signatures[n] in cache and graph[n]["class_type"] != "SaveImageWebsocket"]
        await emit("execution_cached", {"nodes": cached, "prompt_id": pid}, keep=True)
        values: dict[str, Any] = {}
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []
        new_cache: dict[str, Any] = {}
        steps = [0]
        current = ""
        status_str, completed = "success", True
        try:
            for node_id in order:
                current = self._current_node = node_id
                ct = graph[node_id]["class_type"]
                if node_id in cached:
                    values[node_id], ui = cache[signatures[node_id]]
                    new_cache[signatures[node_id]] = cache[signatures[node_id]]
                    if ui is not None:
                        ui_outputs[node_id] = ui
                        await emit(
                            "executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid}
                        )
                    continue
                if self._interrupt:
                    raise _Interrupted
                await emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                inputs = {
                    k: (values[v[0]][v[1]] if _is_link(v) else v)
                    for k, v in (graph[node_id].get("inputs") or {}).items()
                }
                if ct in _SAMPLERS:
                    await self._sample(job, node_id, inputs, steps)
                values[node_id] = self._evaluate(ct, inputs, len(self._object_info[ct]["output"]))
                ui = await self._output(job, node_id, ct, values[node_id], inputs)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    await emit("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid})
                executed.append(node_id)
                new_cache[signatures[node_id]] = (values[node_id], ui)
            await emit("execution_success", {"prompt_id": pid, "timestamp": int(time.time() * 1000)}, keep=True)
        except _Interrupted:
            status_str, completed = "error", False
            data = {
                "prompt_id": pid,
                "node_id": current,
                "node_type": graph[current]["class_type"],
                "executed": executed,
                "timestamp": int(time.time() * 1000),
            }
            messages.append(["execution_interrupted", data])
            for client_id in list(self._sockets):  # the real server broadcasts this one
                await self._send(client_id, "execution_interrupted", data)
        except _Failed:
            status_str, completed = "error", False
            data = {
                "prompt_id": pid,
                "node_id": current,
                "node_type": graph[current]["class_type"],
                "executed": executed,
                "exception_message": self.fail_message,
                "exception_type": "RuntimeError",
                "traceback": ["Traceback (most recent call last):\n", f"RuntimeError: {self.fail_message}\n"],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": int(time.time() * 1000),
            }
            await emit("execution_error", data, keep=True)
        if self.cache:
            self._cache = new_cache
        self.history[pid] = {
            "prompt": self._queue_entry(job),
            "outputs": ui_outputs,
            "status": {"status_str": status_str, "completed": completed, "messages": messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui_outputs},
        }
        self.ended[pid] = self.history[pid]
        self._recorded()
        await emit("executing", {"node": None, "prompt_id": pid})

    async def _sample(self, job: _Job, node_id: str, inputs: dict[str, Any], steps: list[int]) -> None:
        """The sampler's steps: progress (and a preview) per step, and the knobs' interrupt/fail/die/drop."""
        total, seed = self._sampler_steps(inputs)
        latent = inputs.get("latent_image") or []
        size = latent[0].size if latent else (64, 64)
        previews = str(job.extra_data.get("preview_method") or "none") not in ("none", "")
        for value in range(1, total + 1):
            await asyncio.sleep(self.step_delay)
            steps[0] += 1
            if self._interrupt:
                raise _Interrupted
            if self.fail_at_step == steps[0]:
                raise _Failed
            if self.die_at_step == steps[0]:
                self.die_at_step = None
                raise _Died
            if self.restart_at_step == steps[0]:
                self.restart_at_step = None
                raise _Restarted
            progress = {"value": value, "max": total, "prompt_id": job.prompt_id, "node": node_id}
            await self._send(job.client_id, "progress", progress)
            state = {
                **progress,
                "state": "running",
                "node_id": node_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            state.pop("node")
            await self._send(job.client_id, "progress_state", {"prompt_id": job.prompt_id, "nodes": {node_id: state}})
            if previews:
                scale = 512 / max(size)
                preview = Image.new(
                    "RGB",
                    (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                    (seed % 256, value % 256, 128),
                )
                out = io.BytesIO()
                preview.save(out, "JPEG", quality=80)
                await self._send_image(job, node_id, out.getvalue(), "jpeg")
            if self.drop_socket_at_step == steps[0]:
                self.drop_socket_at_step = None
                entry = self._sockets.pop(job.client_id, None)
                if entry is not None and entry.transport is not None:
                    entry.transport.abort()

    @staticmethod
    def _sampler_steps(inputs: dict[str, Any]) -> tuple[int, int]:
        steps = int(inputs.get("steps", 1))
        if "noise_seed" in inputs:
            start = max(0, int(inputs.get("start_at_step", 0)))
            end = min(steps, int(inputs.get("end_at_step", 10000)))
            return max(0, end - start), int(inputs["noise_seed"])
        return steps, int(inputs.get("seed", 0))

    def _evaluate(self, ct: str, inputs: dict[str, Any], n_outputs: int) -> list[Any]:
        """The node's outputs: lists of PIL images stand for both IMAGE and LATENT; anything else is None."""
        out: list[Any] = [None] * n_outputs

        def first_images() -> list[Image.Image]:
            for value in inputs.values():
                if isinstance(value, list) and value and isinstance(value[0], Image.Image):
                    return value
            return []

        if ct == "EmptyLatentImage":
            size = (int(inputs["width"]), int(inputs["height"]))
            out[0] = [Image.new("RGB", size) for _ in range(int(inputs.get("batch_size", 1)))]
        elif ct in ("LoadImage", "LoadImageMask"):
            with Image.open(io.BytesIO(self._input_file(inputs["image"]) or b"")) as picture:
                picture.load()
                rgba = picture.convert("RGBA")
            if ct == "LoadImage":
                out[0] = [rgba.convert("RGB")]
                out[1] = [Image.eval(rgba.getchannel("A"), lambda a: 255 - a)]
            else:
                channel = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[inputs.get("channel", "alpha")]
                out[0] = [rgba.getchannel(channel)]
        elif ct in _SAMPLERS:
            total, seed = self._sampler_steps(inputs)
            steps = int(inputs.get("steps", 1))
            share = float(inputs.get("denoise", 1.0)) if ct == "KSampler" else total / max(1, steps)
            colour = (seed % 256, steps % 256, max(0, min(255, round(255 * share))))
            out[0] = [Image.new("RGB", image.size, colour) for image in inputs.get("latent_image") or []]
        elif ct == "InpaintModelConditioning":
            out[2] = list(inputs.get("pixels") or [])
        elif ct == "ImageUpscaleWithModel":
            match = re.search(r"(?:^|[^0-9])(\d)x|x(\d)(?:[^0-9]|$)", str(inputs.get("upscale_model") or ""))
            factor = int(next(g for g in match.groups() if g)) if match else 4
            out[0] = [im.resize((im.width * factor, im.height * factor), Image.NEAREST) for im in first_images()]
        elif ct in ("ImageScale", "LatentUpscale"):
            images = first_images()
            if images:
                w, h = int(inputs.get("width", 0)), int(inputs.get("height", 0))
                base = images[0]
                w = w or round(base.width * h / base.height)
                h = h or round(base.height * w / base.width)
                out[0] = [im.resize((w, h), Image.NEAREST) for im in images]
        elif ct == "ImageScaleBy":
            by = float(inputs.get("scale_by", 1.0))
            out[0] = [
                im.resize((max(1, round(im.width * by)), max(1, round(im.height * by))), Image.NEAREST)
                for im in first_images()
            ]
        elif ct == "UpscaleModelLoader":
            out[0] = inputs.get("model_name")  # the "model" is its name: ImageUpscaleWithModel reads the factor
        elif n_outputs and ct not in (
            "CheckpointLoaderSimple",
            "CLIPTextEncode",
            "LoraLoader",
            "CLIPSetLastLayer",
            "VAELoader",
        ):
            out[0] = first_images()  # VAEEncode/Decode, SetLatentNoiseMask, VAEEncodeForInpaint: pass through
        return out

    async def _output(
        self, job: _Job, node_id: str, ct: str, value: list[Any], inputs: dict[str, Any]
    ) -> dict[str, Any] | None:
        images = [im for im in inputs.get("images") or [] if isinstance(im, Image.Image)]
        if ct == "SaveImageWebsocket":
            for image in images:
                await self._send_image(job, node_id, self._png(image, job), "png")
            return None
        if ct not in _OUTPUT_FILES:
            return None
        kind = _OUTPUT_FILES[ct]
        prefix = str(inputs.get("filename_prefix", "ComfyUI")) if ct == "SaveImage" else f"ComfyUI_temp_{job.number:05}"
        subfolder, _, base = prefix.rpartition("/")
        refs = []
        for image in images:
            counter = self._counters.get((subfolder, base), 0) + 1
            self._counters[(subfolder, base)] = counter
            filename = f"{base}_{counter:05}_.png"
            self.files[(kind, subfolder, filename)] = self._png(image, job)
            refs.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return {"images": refs}

    @staticmethod
    def _png(image: Image.Image, job: _Job) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", json.dumps(job.graph))
        out = io.BytesIO()
        image.save(out, "PNG", pnginfo=info, compress_level=1)
        return out.getvalue()

    def _signature(self, graph: dict[str, Any], node_id: str, _memo: dict[str, str] | None = None) -> str:
        memo = {} if _memo is None else _memo
        if node_id in memo:
            return memo[node_id]
        node = graph[node_id]
        parts: dict[str, Any] = {}
        for name, value in sorted((node.get("inputs") or {}).items()):
            if _is_link(value) and value[0] in graph:
                parts[name] = [self._signature(graph, value[0], memo), value[1]]
            else:
                parts[name] = value
        if node["class_type"] in ("LoadImage", "LoadImageMask"):
            parts["file"] = hashlib.sha256(self._input_file(node.get("inputs", {}).get("image")) or b"").hexdigest()
        memo[node_id] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return memo[node_id]


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)
