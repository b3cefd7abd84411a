"""Messages between the CLI and the warm engine: a JSON header plus raw array bytes, framed by lengths.

Nothing is unpickled: arrays travel as dtype, shape and bytes (no object dtypes), and the only objects rebuilt are
the dataclasses of `studio.core.requests` (GenerateRequest, GenerateResult, StepInfo and their parts) and
`studio.core.branch` (a branch's spec, a step's sampler state), looked up by name there, so a field added to a request travels without a change here.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
from pathlib import PurePath
from typing import Any

import numpy as np

from ..core import branch as _branch
from ..core import control as _control
from ..core import requests as _requests

PROTOCOL = 1
_OURS = (_requests.__name__, _control.__name__, _branch.__name__)
_HEAD = struct.Struct(">I")
MAX_HEADER = 16 << 20  # a request's JSON is a few KB; anything near this is not ours
MAX_BLOB = 1 << 31  # one array (an 8k RGB image is 200 MB)


class WireError(Exception):
    """A malformed message, or the peer went away mid-message."""


def encode(value: Any, blobs: list[bytes]) -> Any:
    """`value` as JSON-ready data; array bytes are appended to `blobs` and referred to by index."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise WireError("object arrays do not travel")
        blobs.append(np.ascontiguousarray(value).tobytes())
        return {"a": len(blobs) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name), blobs) for f in dataclasses.fields(value) if f.init}
        return {"c": type(value).__name__, "f": fields}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple):
        return {"t": [encode(v, blobs) for v in value]}
    if isinstance(value, list):
        return [encode(v, blobs) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise WireError("only str keys travel")
        return {"d": {k: encode(v, blobs) for k, v in value.items()}}
    raise WireError(f"{type(value).__name__} does not travel")


def decode(data: Any, blobs: list[bytes]) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v, blobs) for v in data]
    if not isinstance(data, dict):
        raise WireError(f"unexpected {type(data).__name__}")
    if "a" in data:
        dtype = np.dtype(data["dtype"])
        if dtype.hasobject:
            raise WireError("object arrays do not travel")
        return np.frombuffer(blobs[int(data["a"])], dtype=dtype).reshape(data["shape"]).copy()
    if "t" in data:
        return tuple(decode(v, blobs) for v in data["t"])
    if "d" in data:
        return {str(k): decode(v, blobs) for k, v in data["d"].items()}
    if "c" in data:
        # A request's parts defined beside it travel too: ControlSpec (studio.core.control), a branch's and a result's
        # step states (studio.core.branch: SamplerState, BranchSpec).
        cls = getattr(_requests, str(data["c"]), None) or getattr(_branch, str(data["c"]), None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ in _OURS):
            raise WireError(f"unknown type {data['c']!r}")
        return cls(**{k: decode(v, blobs) for k, v in data["f"].items()})
    raise WireError("unknown value")


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """One message: its header (JSON, with the byte count of each array), then the arrays' bytes."""
    blobs: list[bytes] = []
    body = {k: encode(v, blobs) for k, v in message.items()}
    body["blobs"] = [len(b) for b in blobs]
    head = json.dumps(body).encode()
    sock.sendall(_HEAD.pack(len(head)) + head)
    for b in blobs:
        sock.sendall(b)


def receive(sock: socket.socket) -> dict[str, Any]:
    """The next message; WireError when the peer closed the connection or sent something not ours."""
    (size,) = _HEAD.unpack(_read(sock, _HEAD.size))
    if size > MAX_HEADER:
        raise WireError("message header too large")
    try:
        body = json.loads(_read(sock, size))
        sizes = [int(n) for n in body.pop("blobs")]
    except (ValueError, KeyError, TypeError) as e:
        raise WireError(f"malformed message ({e})") from e
    if not isinstance(body, dict) or any(not 0 <= n <= MAX_BLOB for n in sizes):
        raise WireError("malformed message")
    blobs = [_read(sock, n) for n in sizes]
    try:
        return {k: decode(v, blobs) for k, v in body.items()}
    except (IndexError, ValueError, TypeError, KeyError) as e:
        raise WireError(f"malformed message ({e})") from e


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WireError("connection closed")
        buf += chunk
    return bytes(buf)
