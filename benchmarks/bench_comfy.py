"""Benchmark: how fast the ComfyUI client and backend react, against the fake server (tests/fake_comfyui.py).

    .venv/bin/python benchmarks/bench_comfy.py            # 5 runs of each, then a table of median and worst
    .venv/bin/python benchmarks/bench_comfy.py --runs 20

The figures the tests no longer time (they wait for events and assert behaviour):
- client cancel: ``ComfyClient.cancel`` on a running prompt to its end marker, through ``/api/jobs/{id}/cancel``
  and through an older server's ``/interrupt`` + ``/queue`` delete (the bars were 1.0 s);
- backend cancel: the cancel event set (at step 2) to ``generate`` returning cancelled (the bar was 3.0 s for the
  whole call, at 0.2 s a step);
- client reconnect: ``reconnect()`` after a dropped socket, to the new socket open;
- backend reconnect: a job whose socket drops at step 2, against the same job undropped (the extra time);
- silent server: a 0.2 s client timeout to its error (the bar was 1.5 s);
- lost server: the server dying at step 2 to the client's SocketClosed (the bar was 3 s), and to the backend's
  EngineError with RECONNECT_FOR = 2 s (the bar was 8 s for the whole call).
A step of the fake server takes 0.02 s (the default ``step_delay``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_comfyui import FakeComfy, allow_loopback  # noqa: E402

import studio.backends.comfyui.backend as backend_module  # noqa: E402
from studio.backends.comfyui.backend import ComfyUIBackend  # noqa: E402
from studio.backends.comfyui.client import ComfyClient, ComfyError, SocketClosed  # noqa: E402
from studio.core.errors import EngineError  # noqa: E402
from studio.core.requests import GenerateRequest  # noqa: E402

GUARD = 60.0  # seconds: a hang, not a figure


def graph(steps: int, seed: int = 7) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps,
                                                   "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
    }  # fmt: skip


def until(client: ComfyClient, done: Callable) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        event = client.next_event(0.05)
        if event is not None and done(event):
            return
    raise RuntimeError("no such event (a hang)")


def is_end(prompt_id: str) -> Callable:
    return lambda e: e.type == "executing" and e.data.get("node") is None and e.data.get("prompt_id") == prompt_id


def client_cancel(jobs_api: bool) -> float:
    with FakeComfy(jobs_api=jobs_api) as fake:
        client = ComfyClient(fake.url)
        try:
            client.open_socket()
            prompt_id = str(uuid.uuid4())
            client.queue_prompt(graph(5000), prompt_id)
            until(client, lambda e: e.type == "progress")
            began = time.perf_counter()
            client.cancel(prompt_id)
            until(client, is_end(prompt_id))
            return time.perf_counter() - began
        finally:
            client.close()


def request(steps: int) -> GenerateRequest:
    return GenerateRequest(prompt="a red fox", steps=steps, seed=300, width=64, height=48, preview="none")


def backend_cancel() -> float:
    with FakeComfy(cache=False) as fake:
        backend = ComfyUIBackend(fake.url)
        cancel = threading.Event()
        set_at: list[float] = []

        def on_step(info) -> None:
            if info.step == 2 and not set_at:
                set_at.append(time.perf_counter())
                cancel.set()

        try:
            result = backend.generate(request(1000), on_step=on_step, cancel=cancel)
            assert result.cancelled
            return time.perf_counter() - set_at[0]
        finally:
            backend.close()


def client_reconnect() -> float:
    with FakeComfy(drop_socket_at_step=2) as fake:
        client = ComfyClient(fake.url)
        try:
            client.open_socket()
            prompt_id = str(uuid.uuid4())
            client.queue_prompt(graph(8), prompt_id)
            try:
                until(client, lambda e: False)
            except SocketClosed:
                pass
            began = time.perf_counter()
            client.reconnect()
            assert client.socket_open
            return time.perf_counter() - began
        finally:
            client.close()


def backend_job(drop: bool) -> float:
    with FakeComfy(cache=False, drop_socket_at_step=2 if drop else None) as fake:
        backend = ComfyUIBackend(fake.url)
        try:
            backend.start()
            began = time.perf_counter()
            result = backend.generate(request(8))
            assert len(result.images) == 1
            return time.perf_counter() - began
        finally:
            backend.close()


def backend_reconnect() -> float:
    return backend_job(True) - backend_job(False)


def silent_server() -> float:
    with FakeComfy(http_delay=GUARD) as fake:
        client = ComfyClient(fake.url, timeout=0.2)
        try:
            began = time.perf_counter()
            try:
                client.system_stats()
            except ComfyError:
                return time.perf_counter() - began
            raise RuntimeError("the silent server answered")
        finally:
            client.close()


def lost_server_client() -> float:
    with FakeComfy(die_at_step=2, step_delay=0.02) as fake:
        client = ComfyClient(fake.url, timeout=2.0)
        try:
            client.open_socket()
            client.queue_prompt(graph(8), str(uuid.uuid4()))
            until(client, lambda e: e.type == "progress")  # step 1; the server dies one step later
            began = time.perf_counter()
            try:
                until(client, lambda e: False)
            except SocketClosed:
                return time.perf_counter() - began - fake.step_delay
            raise RuntimeError("the socket did not drop")
        finally:
            client.close()


def lost_server_backend() -> float:
    backend_module.RECONNECT_FOR = 2.0
    with FakeComfy(cache=False) as fake:
        backend = ComfyUIBackend(fake.url)
        last: list[float] = []
        try:
            backend.start()
            fake.die_at_step = 2
            try:
                backend.generate(request(10), on_step=lambda info: last.append(time.perf_counter()))
            except EngineError:
                return time.perf_counter() - last[-1] - fake.step_delay
            raise RuntimeError("the job did not fail")
        finally:
            backend.close()


CASES: list[tuple[str, Callable[[], float]]] = [
    ("client cancel (jobs API)", lambda: client_cancel(True)),
    ("client cancel (interrupt + delete)", lambda: client_cancel(False)),
    ("backend cancel (event set -> returned)", backend_cancel),
    ("client reconnect", client_reconnect),
    ("backend reconnect (extra over a clean job)", backend_reconnect),
    ("silent server, 0.2 s timeout -> error", silent_server),
    ("lost server -> client SocketClosed", lost_server_client),
    ("lost server -> backend error (RECONNECT_FOR 2 s)", lost_server_backend),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'measure':<50} {'median s':>9} {'worst s':>9}")
    with allow_loopback():
        for name, fn in CASES:
            times = [fn() for _ in range(args.runs)]
            print(f"{name:<50} {statistics.median(times):9.3f} {max(times):9.3f}", flush=True)


if __name__ == "__main__":
    main()
