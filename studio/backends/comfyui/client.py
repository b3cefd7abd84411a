"""A client of a ComfyUI server's HTTP + WebSocket protocol, as ComfyUI 0.27's server (its `server.py`) serves it:
/prompt, /queue, /history, /view, /upload/image, /interrupt, /object_info, /system_stats, /features, /models and
the /ws socket (see also the README's "A ComfyUI server as the engine").

HTTP goes through stdlib ``urllib.request`` (one short-lived connection per call, so calls from several threads
are safe); the WebSocket through ``websockets.sync.client``. Every failure is a :class:`ComfyError` whose message
is one line an artist can act on; a dropped WebSocket is the distinct :class:`SocketClosed`, after which the
caller :meth:`ComfyClient.reconnect` s (same client id, so the server routes the prompt's remaining messages
to the new socket) and recovers results saved by ``SaveImage`` from :meth:`ComfyClient.history`.

Events (:meth:`ComfyClient.next_event`): each JSON message is ``Event(type, data)`` as the server sent it
(``status``, ``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``progress_state``,
``executed``, ``execution_success``, ``execution_error``, ``execution_interrupted``, ``feature_flags``...). Binary
frames become:

- ``Event("preview", {"image": bytes, "format": "jpeg"|"png"|"webp", "prompt_id": str|None, "node": str|None})``:
  a sampler's step preview;
- ``Event("image", {...same keys...})``: a finished full-size image from a ``SaveImageWebsocket`` node;
- ``Event("progress_text", {"node": str, "text": str, "prompt_id": str|None})``;
- ``Event("binary", {"event": int, "data": bytes})``: a frame type this client does not know.

Preview or final image? The server frames both the same way, so the client decides by the node that sent it:
if the frame names its node (metadata framing, type 4) or one is running (the last ``executing``, for the plain
type 1 framing), and the prompt was queued through this client, a node whose ``class_type`` is
``SaveImageWebsocket`` makes an ``image`` and any other node a ``preview``. Otherwise (an unknown prompt, say
after a reconnect before the next ``executing``) the format decides: PNG is a final image, JPEG a preview
(sampler previews are JPEG; ``SaveImageWebsocket`` sends PNG).
"""

from __future__ import annotations

import http.client
import inspect
import ipaddress
import json
import socket
import ssl
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from studio.core.errors import EngineError

REFUSED = "The ComfyUI server refused the connection (check the token)"
TOO_LARGE = "The image is too large for the server's upload limit"

# Binary frame types (big-endian uint32 first field).
_PREVIEW_IMAGE = 1
_PROGRESS_TEXT = 3
_PREVIEW_WITH_METADATA = 4
_FORMATS = {1: "jpeg", 2: "png"}

# websockets 17 deprecates calling connect() outside a `with` unless asked for by name; older ones lack the flag.
_DIRECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}

# The class of output node whose binary frames are final images, not previews.
WEBSOCKET_OUTPUT = "SaveImageWebsocket"


class ComfyError(EngineError):
    """A ComfyUI failure as one line for the artist. ``status`` is the HTTP status when there was one; ``body`` the
    parsed JSON answer of a 400 (``{"error": {...}, "node_errors": {...}}``) so the caller can name the nodes."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SocketClosed(ComfyError):
    """The WebSocket dropped (or is not open). The job may still run on the server: reconnect and ask history()."""


@dataclass(frozen=True)
class Event:
    """One server message: ``type`` as the server named it (or preview/image/progress_text/binary for frames)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalize_url(url: str) -> str:
    """``host:8188`` -> ``http://host:8188``; no trailing slash; a path prefix (a proxy's sub-path) is kept."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ComfyError(f"Not an http:// or https:// server address: {url!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _format_from_mime(value: Any) -> str | None:
    text = str(value or "").lower().removeprefix("image/")
    return {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}.get(text)


def describe_rejection(body: Any) -> str:
    """One line from a 400 answer of ``POST /prompt``: the error's message, then the first node error if any."""
    if not isinstance(body, Mapping):
        return "The ComfyUI server rejected the prompt"
    error = body.get("error")
    error = error if isinstance(error, Mapping) else {"message": str(error or "")}
    text = str(error.get("message") or error.get("type") or "invalid prompt")
    details = str(error.get("details") or "")
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping):
        for node_id, entry in node_errors.items():
            errors = entry.get("errors") if isinstance(entry, Mapping) else None
            if errors:
                first = errors[0] if isinstance(errors[0], Mapping) else {"message": str(errors[0])}
                details = f"{entry.get('class_type', 'node')} {node_id}: {first.get('message', '')}"
                if first.get("details"):
                    details += f" ({first['details']})"
                break
    line = f"The ComfyUI server rejected the prompt: {text}" + (f": {details}" if details else "")
    line = " ".join(line.split())
    return line if len(line) <= 300 else line[:297] + "..."


class _KeepAuthOnSameHost(urllib.request.HTTPRedirectHandler):
    """Follow redirects (a proxy's http -> https) with the token, but never hand the token to another host."""

    def __init__(self, authorization: str, host: str | None) -> None:
        self._authorization = authorization
        self._host = host

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self._authorization and urllib.parse.urlsplit(newurl).hostname == self._host:
            new.add_unredirected_header("Authorization", self._authorization)
        return new


class ComfyClient:
    """One ComfyUI server, one client id. HTTP methods may be called from any thread; the socket is meant for one
    reader thread (another thread may call :meth:`close` to wake it: the reader then gets :class:`SocketClosed`).

    ``timeout`` bounds connecting and each wait for data on HTTP, and the WebSocket handshake. ``ping_interval``:
    the server sends no pings, so the client does (websockets' keepalive), which also notices a dead server: a
    silent socket raises :class:`SocketClosed` within ``ping_interval + ping_timeout``.
    """

    def __init__(
        self,
        url: str,
        token: str = "",
        client_id: str | None = None,
        timeout: float = 15.0,
        *,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
    ) -> None:
        self.url = _normalize_url(url)
        self.token = token.strip()
        self.client_id = client_id or str(uuid.uuid4())
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._host = urllib.parse.urlsplit(self.url).hostname
        self._authorization = f"Bearer {self.token}" if self.token else ""
        # Proxies from the environment are for the outside world; a server on this machine is reached directly.
        proxies = urllib.request.ProxyHandler({}) if _is_loopback(self._host) else urllib.request.ProxyHandler()
        self._opener = urllib.request.build_opener(proxies, _KeepAuthOnSameHost(self._authorization, self._host))
        self._ws: ClientConnection | None = None
        self._ws_outputs: dict[str, set[str]] = {}  # prompt_id -> its SaveImageWebsocket node ids
        self._running: tuple[str | None, str | None] = (None, None)  # (prompt_id, node) of the last "executing"

    # ---- HTTP -------------------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        body: bytes | None = None,
        content_type: str = "",
        query: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, str]:
        """The answer's bytes and content type; a ComfyError for anything but a 2xx answer."""
        url = self.url + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        if payload is not None:
            body, content_type = json.dumps(payload).encode("utf-8"), "application/json"
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self._authorization:
            request.add_unredirected_header("Authorization", self._authorization)
        wait = self.timeout if timeout is None else timeout
        try:
            with self._opener.open(request, timeout=wait) as answer:
                return answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            try:
                data = exc.read()
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                exc.close()
            raise self._http_error(exc.code, data, path) from None
        except urllib.error.URLError as exc:
            raise self._network_error(exc.reason, wait, upload=body is not None and len(body) > 1 << 20) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._network_error(exc, wait, upload=body is not None and len(body) > 1 << 20) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        data, content_type = self._request(method, path, **kwargs)
        try:
            if "html" in content_type.lower():
                raise ValueError("an HTML page")
            return json.loads(data.decode("utf-8")) if data.strip() else {}
        except ValueError:
            raise ComfyError(
                f"The server at {self.url} did not answer like a ComfyUI server (a login page or a proxy in between?)"
            ) from None

    def _http_error(self, status: int, data: bytes, path: str) -> ComfyError:
        if status in (401, 403):
            return ComfyError(REFUSED, status=status)
        if status == 407:
            return ComfyError("A proxy between here and the ComfyUI server wants a login", status=status)
        if status == 413:
            return ComfyError(TOO_LARGE, status=status)
        try:
            parsed: Any = json.loads(data.decode("utf-8"))
        except ValueError:
            parsed = data.decode("utf-8", "replace")
        if status == 400:
            return ComfyError(describe_rejection(parsed), status=status, body=parsed)
        if status == 404:
            return ComfyError(
                f"The ComfyUI server at {self.url} has no {path.split('?')[0]}", status=status, body=parsed
            )
        return ComfyError(
            f"The ComfyUI server at {self.url} answered HTTP {status} to {path}", status=status, body=parsed
        )

    def _network_error(self, reason: Any, wait: float, *, upload: bool = False) -> ComfyError:
        where = f"the ComfyUI server at {self.url}"
        if isinstance(reason, ConnectionRefusedError):
            return ComfyError(f"Cannot reach {where}: connection refused")
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return ComfyError(f"No answer from {where} within {wait:g} s")
        if isinstance(reason, socket.gaierror):
            return ComfyError(f"Cannot reach {where}: unknown host")
        if isinstance(reason, ssl.SSLError):
            return ComfyError(f"Cannot reach {where}: TLS error ({reason.reason or reason})")
        if isinstance(reason, (ConnectionError, http.client.HTTPException)):
            hint = " (the image may be over the server's upload limit)" if upload else ""
            return ComfyError(f"The connection to {where} was cut off{hint}")
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return ComfyError(f"Cannot reach {where}: {text}")

    # ---- the server's routes ----------------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        """``{"system": {"comfyui_version", ...}, "devices": [...]}``: also the cheapest "is it there" check."""
        return self._json("GET", "/system_stats")

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether the server answers ``/system_stats`` like ComfyUI within ``timeout`` seconds (a health check)."""
        try:
            answer = self._json("GET", "/system_stats", timeout=timeout)
        except ComfyError:
            return False
        return isinstance(answer, Mapping) and "system" in answer

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """Per node class: inputs (``required``/``optional``/``hidden``), outputs, ``output_node``. Combo options
        (model files, uploaded images) are the server's current lists."""
        path = "/object_info" + (f"/{urllib.parse.quote(node_class, safe='')}" if node_class else "")
        return self._json("GET", path)

    def features(self) -> dict[str, Any]:
        """E.g. ``{"supports_preview_metadata": True, "max_upload_size": ...}``; ``{}`` from servers that predate it."""
        try:
            return self._json("GET", "/features")
        except ComfyError as exc:
            if exc.status == 404:
                return {}
            raise

    def models(self, folder: str | None = None) -> list[str]:
        """File names in one model folder (``checkpoints``, ``loras``, ``upscale_models``...); without a folder,
        the folder names. The server rescans, so new files appear without a restart."""
        path = "/models" + (f"/{urllib.parse.quote(folder, safe='')}" if folder else "")
        return list(self._json("GET", path))

    def upload_image(
        self, data: bytes, name: str, overwrite: bool = True, *, subfolder: str = "", type: str = "input"
    ) -> str:
        """Upload to the server's input folder; the name to give ``LoadImage`` (``subfolder/name`` when in one).
        Without ``overwrite`` the server may rename (``name (1).png``), hence the returned name. Multipart is
        written by hand to keep the client dependency-free."""
        boundary = uuid.uuid4().hex
        safe_name = "".join(c for c in name if c not in '"\r\n\\') or "image.png"
        extension = safe_name.rsplit(".", 1)[-1].lower()
        mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
            extension, "application/octet-stream"
        )
        parts = []
        for key, value in (("type", type), ("subfolder", subfolder), ("overwrite", "true" if overwrite else "false")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe_name}"\r\n'
            f"Content-Type: {mime}\r\n\r\n".encode()
        )
        parts += [bytes(data), f"\r\n--{boundary}--\r\n".encode()]
        answer = self._json(
            "POST",
            "/upload/image",
            body=b"".join(parts),
            content_type=f"multipart/form-data; boundary={boundary}",
            timeout=max(self.timeout, 60.0),
        )
        if not isinstance(answer, Mapping) or not answer.get("name"):
            raise ComfyError(f"The ComfyUI server at {self.url} did not accept the image upload")
        folder = str(answer.get("subfolder") or "")
        return f"{folder}/{answer['name']}" if folder else str(answer["name"])

    def queue_prompt(
        self,
        graph: Mapping[str, Any],
        prompt_id: str,
        extra_data: Mapping[str, Any] | None = None,
        *,
        front: bool = False,
    ) -> dict[str, Any]:
        """Queue an API-format graph under ``prompt_id`` (a lowercase uuid4 string the caller makes, so it knows the
        id before any message about it arrives). Returns ``{"prompt_id", "number", "node_errors"}``: a non-empty
        ``node_errors`` on success means some outputs failed validation and were dropped. A 400 raises ComfyError
        with the answer on ``.body``. Pass ``extra_data={"preview_method": "latent2rgb"}`` to get step previews."""
        self._ws_outputs[prompt_id] = {
            str(node_id)
            for node_id, node in graph.items()
            if isinstance(node, Mapping) and node.get("class_type") == WEBSOCKET_OUTPUT
        }
        payload: dict[str, Any] = {"prompt": dict(graph), "client_id": self.client_id, "prompt_id": prompt_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        if front:
            payload["front"] = True
        try:
            return self._json("POST", "/prompt", payload=payload)
        except ComfyError:
            self._ws_outputs.pop(prompt_id, None)
            raise

    def queue(self) -> dict[str, Any]:
        """``{"queue_running": [[number, prompt_id, prompt, extra_data, outputs]], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def in_queue(self, prompt_id: str) -> bool:
        """Whether the prompt is running or waiting on the server (after a restart it is neither)."""
        answer = self.queue()
        if not isinstance(answer, Mapping):
            return False
        for key in ("queue_running", "queue_pending"):
            for item in answer.get(key) or []:
                if isinstance(item, (list, tuple)) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop what runs; with ``prompt_id``, only if that prompt is the one running (no harm to another's job)."""
        self._json("POST", "/interrupt", payload={"prompt_id": prompt_id} if prompt_id else {})

    def cancel(self, prompt_id: str) -> bool | None:
        """Cancel one prompt, running or queued. Recent servers have ``/api/jobs/{id}/cancel`` (returns whether it
        cancelled); older ones get ``/interrupt`` for that id plus a delete from the queue (returns None: unknown)."""
        try:
            answer = self._json("POST", f"/api/jobs/{urllib.parse.quote(prompt_id, safe='')}/cancel", payload={})
        except ComfyError as exc:
            if exc.status not in (404, 405):
                raise
        else:
            return bool(answer.get("cancelled", True)) if isinstance(answer, Mapping) else True
        self.interrupt(prompt_id)
        self._json("POST", "/queue", payload={"delete": [prompt_id]})
        return None

    def history(self, prompt_id: str) -> dict[str, Any]:
        """The finished prompt's entry: ``{"prompt", "outputs": {node: {"images": [refs]}}, "status": {"status_str",
        "completed", "messages"}, "meta"}``; ``{}`` while it is queued or running (or was never run)."""
        answer = self._json("GET", f"/history/{urllib.parse.quote(prompt_id, safe='')}")
        entry = answer.get(prompt_id) if isinstance(answer, Mapping) else None
        return dict(entry) if isinstance(entry, Mapping) else {}

    def delete_history(self, prompt_ids: list[str], timeout: float | None = None) -> None:
        """Drop these prompts' history entries (``POST /history {"delete": [...]}``); ComfyUI keeps their files."""
        self._json("POST", "/history", payload={"delete": list(prompt_ids)}, timeout=timeout)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """The bytes of a file named in ``executed``/``history`` (``type``: output, temp or input)."""
        try:
            data, content_type = self._request(
                "GET", "/view", query={"filename": filename, "subfolder": subfolder, "type": type}
            )
        except ComfyError as exc:
            if exc.status == 404:
                where = f"{subfolder}/{filename}" if subfolder else filename
                raise ComfyError(f"The ComfyUI server has no {type} file {where}", status=404) from None
            raise
        if "html" in content_type.lower():
            raise ComfyError(
                f"The server at {self.url} did not answer like a ComfyUI server (a login page or a proxy in between?)"
            )
        return data

    # ---- the WebSocket ----------------------------------------------------------------------------------------

    @property
    def socket_open(self) -> bool:
        return self._ws is not None

    def ws_url(self) -> str:
        scheme = "wss" if self.url.startswith("https:") else "ws"
        return f"{scheme}{self.url[self.url.index(':') :]}/ws?clientId={urllib.parse.quote(self.client_id, safe='')}"

    def open_socket(self) -> None:
        """Connect the socket (closing any previous one) and ask for metadata-framed previews. Open it before
        queueing: messages sent while no socket is connected are never replayed."""
        self.close()
        headers = {"Authorization": self._authorization} if self._authorization else {}
        try:
            # **_DIRECT: a keyword only some websockets versions take, which its overloads cannot follow
            ws = connect(  # type: ignore[call-overload]
                self.ws_url(),
                additional_headers=headers,
                open_timeout=self.timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=2.0,
                max_size=512 * 1024 * 1024,  # full-size PNGs from SaveImageWebsocket
                compression=None,  # images are compressed already; JSON is small
                proxy=None if _is_loopback(self._host) else True,
                **_DIRECT,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise ComfyError(REFUSED, status=status) from None
            raise ComfyError(
                f"The ComfyUI server at {self.url} refused the live connection (HTTP {status})", status=status
            ) from None
        except InvalidURI:
            raise ComfyError(f"Not a server address: {self.url}") from None
        except InvalidHandshake:
            raise ComfyError(
                f"The server at {self.url} did not open a live connection (a proxy without WebSocket support?)"
            ) from None
        except (OSError, WebSocketException) as exc:
            raise self._network_error(exc, self.timeout) from None
        try:
            ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        except ConnectionClosed:
            ws.close()
            raise SocketClosed(f"The connection to the ComfyUI server at {self.url} was lost") from None
        self._ws = ws
        self._running = (None, None)

    def reconnect(self) -> None:
        """A new socket with the same client id: the server sends the prompt's remaining messages to it."""
        self.open_socket()

    def close(self) -> None:
        """Close the socket (if open). Safe to call from another thread, and more than once."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next message, or None when ``timeout`` seconds pass without one (the caller's chance to check a
        cancel flag or poll history). Raises SocketClosed when the socket drops or is not open."""
        ws = self._ws
        if ws is None:
            raise SocketClosed(f"The connection to the ComfyUI server at {self.url} is not open")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = ws.recv(timeout=remaining)
            except TimeoutError:
                return None
            except ConnectionClosed:
                if self._ws is ws:
                    self._ws = None
                ws.close()
                raise SocketClosed(f"The connection to the ComfyUI server at {self.url} was lost") from None
            event = self._parse(message)
            if event is not None:
                return event

    def _parse(self, message: str | bytes) -> Event | None:
        if isinstance(message, str):
            try:
                parsed = json.loads(message)
            except ValueError:
                return None
            if not isinstance(parsed, Mapping) or not isinstance(parsed.get("type"), str):
                return None
            data = parsed.get("data")
            data = dict(data) if isinstance(data, Mapping) else {}
            if parsed["type"] == "executing":
                prompt_id = data.get("prompt_id")
                self._running = (prompt_id, data.get("node")) if data.get("node") is not None else (None, None)
                if data.get("node") is None and prompt_id:
                    self._ws_outputs.pop(prompt_id, None)  # the end marker: the prompt is finished
            return Event(parsed["type"], data)
        return self._parse_frame(bytes(message))

    def _parse_frame(self, frame: bytes) -> Event:
        if len(frame) < 4:
            return Event("binary", {"event": -1, "data": frame})
        (kind,) = struct.unpack(">I", frame[:4])
        try:
            if kind == _PREVIEW_IMAGE:
                (code,) = struct.unpack(">I", frame[4:8])
                image = frame[8:]
                prompt_id, node = self._running
                return self._image_event(image, _FORMATS.get(code) or _sniff(image) or "jpeg", prompt_id, node)
            if kind == _PREVIEW_WITH_METADATA:
                (size,) = struct.unpack(">I", frame[4:8])
                meta = json.loads(frame[8 : 8 + size].decode("utf-8"))
                meta = meta if isinstance(meta, Mapping) else {}
                image = frame[8 + size :]
                fmt = _format_from_mime(meta.get("image_type")) or _sniff(image) or "jpeg"
                node = meta.get("node_id") if meta.get("node_id") is not None else meta.get("display_node_id")
                return self._image_event(image, fmt, meta.get("prompt_id"), None if node is None else str(node))
            if kind == _PROGRESS_TEXT:
                (size,) = struct.unpack(">I", frame[4:8])
                node = frame[8 : 8 + size].decode("utf-8", "replace")
                text = frame[8 + size :].decode("utf-8", "replace")
                return Event("progress_text", {"node": node, "text": text, "prompt_id": self._running[0]})
        except (struct.error, ValueError):
            pass
        return Event("binary", {"event": kind, "data": frame[4:]})

    def _image_event(self, image: bytes, fmt: str, prompt_id: str | None, node: str | None) -> Event:
        ws_nodes = self._ws_outputs.get(prompt_id) if prompt_id else None
        if ws_nodes is not None and node is not None:
            final = node in ws_nodes
        else:
            final = fmt == "png"
        data = {"image": image, "format": fmt, "prompt_id": prompt_id, "node": node}
        return Event("image" if final else "preview", data)


def output_images(entry: Mapping[str, Any]) -> list[dict[str, str]]:
    """The image references (``{"filename", "subfolder", "type"}``) of a history entry, in node id order."""
    found: list[dict[str, str]] = []
    outputs = entry.get("outputs") if isinstance(entry, Mapping) else None
    if not isinstance(outputs, Mapping):
        return found

    def order(key: str) -> tuple[int, str]:
        return (int(key), "") if str(key).isdigit() else (1 << 62, str(key))

    for node_id in sorted(outputs, key=order):
        output = outputs[node_id]
        for image in (output.get("images") if isinstance(output, Mapping) else None) or []:
            if isinstance(image, Mapping) and image.get("filename"):
                found.append({k: str(image.get(k) or "") for k in ("filename", "subfolder", "type")})
    return found
