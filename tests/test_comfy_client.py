"""studio.backends.comfyui.client against the fake ComfyUI server (tests/fake_comfyui.py).

Nothing here is timed: a test waits for the event it needs (HANG_GUARD only ends a hang) and asserts what
happened. How fast a cancel or a reconnect is, is measured by benchmarks/bench_comfy.py."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import uuid

import psutil
import pytest
from fake_comfyui import HANG_GUARD, FakeComfy, allow_loopback, solid_png
from PIL import Image

from studio.backends.comfyui.client import (
    REFUSED,
    TOO_LARGE,
    ComfyClient,
    ComfyError,
    Event,
    SocketClosed,
    output_images,
)
from studio.core.errors import EngineError, first_line


def _inet_sockets() -> set[tuple]:
    return {(c.laddr, c.raddr, c.status) for c in psutil.Process().net_connections(kind="inet")}


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test leaves no thread and no socket behind."""
    threads, sockets = set(threading.enumerate()), _inet_sockets()
    yield
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        extra_threads = set(threading.enumerate()) - threads
        extra_sockets = {s for s in _inet_sockets() - sockets if s[2] not in ("TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT2")}
        if not extra_threads and not extra_sockets:
            return
        time.sleep(0.05)
    raise AssertionError(f"left behind: threads {extra_threads}, sockets {extra_sockets}")


@pytest.fixture
def start():
    """start(**knobs) -> a running FakeComfy, stopped after the test; loopback reachable meanwhile."""
    servers: list[FakeComfy] = []
    with allow_loopback():

        def run(**knobs) -> FakeComfy:
            server = FakeComfy(**knobs).start()
            servers.append(server)
            return server

        yield run
        for server in servers:
            server.stop()


@pytest.fixture
def connect():
    """connect(url, **kw) -> a ComfyClient whose socket is closed after the test."""
    clients: list[ComfyClient] = []

    def make(url: str, **kwargs) -> ComfyClient:
        client = ComfyClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def txt2img(seed=7, steps=4, width=64, height=32, outputs=("SaveImage", "SaveImageWebsocket"), sampler="euler"):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": sampler,
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }
    for index, kind in enumerate(outputs):
        inputs = {"images": ["6", 0]}
        if kind == "SaveImage":
            inputs["filename_prefix"] = "studio/test"
        graph[str(10 + index)] = {"class_type": kind, "inputs": inputs}
    return graph


def new_id() -> str:
    return str(uuid.uuid4())


def run_to_end(client: ComfyClient, prompt_id: str, timeout: float = HANG_GUARD) -> list[Event]:
    """Events until the prompt's end marker (executing with node None)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = client.next_event(0.5)
        if event is None:
            continue
        events.append(event)
        if event.type == "executing" and event.data.get("node") is None and event.data.get("prompt_id") == prompt_id:
            return events
    raise AssertionError(f"no end marker; got {[e.type for e in events]}")


def wait_for(client: ComfyClient, kind: str, timeout: float = HANG_GUARD) -> Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = client.next_event(0.5)
        if event is not None and event.type == kind:
            return event
    raise AssertionError(f"no {kind} event")


def until_closed(client: ComfyClient, timeout: float = HANG_GUARD) -> SocketClosed:
    """Read events until the socket drops; the SocketClosed it raised."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.next_event(0.2)
        except SocketClosed as exc:
            return exc
    raise AssertionError("the socket did not drop")


def pixel(data: bytes) -> tuple[tuple[int, int], tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGB").getpixel((0, 0))


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


# ---- plain HTTP --------------------------------------------------------------------------------------------------


def test_system_stats_object_info_features_and_models(start, connect):
    client = connect(start().url)
    assert client.system_stats()["system"]["comfyui_version"] == "0.27.0"
    info = client.object_info()
    assert "euler_ancestral" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert info["SaveImageWebsocket"]["output_node"] is True
    assert set(client.object_info("KSampler")) == {"KSampler"}
    assert client.models("checkpoints") == ["tiny-sd15.safetensors"]
    assert "upscale_models" in client.models()
    assert client.features()["supports_preview_metadata"] is True


def test_features_of_an_older_server_are_empty_and_a_missing_folder_is_a_message(start, connect):
    client = connect(start(features_api=False).url)
    assert client.features() == {}
    with pytest.raises(ComfyError, match="has no /models/nope") as caught:
        client.models("nope")
    assert caught.value.status == 404


def test_url_forms_are_normalized():
    assert ComfyClient("127.0.0.1:8188/").url == "http://127.0.0.1:8188"
    assert ComfyClient("https://gpu.example/comfy/", client_id="x").ws_url() == "wss://gpu.example/comfy/ws?clientId=x"
    with pytest.raises(ComfyError, match="Not an http"):
        ComfyClient("ftp://host")
    assert uuid.UUID(ComfyClient("http://h").client_id).version == 4


def test_upload_and_view_round_trip(start, connect):
    fake = start()
    client = connect(fake.url)
    first, second = solid_png((40, 24), (10, 20, 30)), solid_png((40, 24), (99, 20, 30))
    assert client.upload_image(first, "init.png") == "init.png"
    assert client.view("init.png", "", "input") == first
    assert client.upload_image(first, "init.png", overwrite=False) == "init.png"  # the same bytes: kept
    assert client.upload_image(second, "init.png", overwrite=False) == "init (1).png"
    assert client.upload_image(second, "init.png", subfolder="studio") == "studio/init.png"
    assert client.view("init.png", "studio", "input") == second
    assert [u["overwrite"] for u in fake.uploads] == [True, False, False, True]
    assert "init (1).png" in client.object_info("LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    with pytest.raises(ComfyError, match="The ComfyUI server has no output file studio/missing.png") as caught:
        client.view("missing.png", "studio")
    assert caught.value.status == 404


def test_an_upload_over_the_limit_says_so(start, connect):
    client = connect(start(max_upload_size=20_000).url)
    big = solid_png((8, 8), (0, 0, 0)) + bytes(range(256)) * 200
    with pytest.raises(ComfyError) as caught:
        client.upload_image(big, "big.png")
    assert str(caught.value) == TOO_LARGE
    assert isinstance(caught.value, EngineError)


# ---- a prompt's events -------------------------------------------------------------------------------------------


def test_events_in_order_with_metadata_previews_and_the_final_png(start, connect):
    fake = start()
    client = connect(fake.url)
    client.open_socket()
    prompt_id = new_id()
    answer = client.queue_prompt(txt2img(seed=300, steps=4), prompt_id, {"preview_method": "latent2rgb"})
    assert answer["prompt_id"] == prompt_id and answer["node_errors"] == {}
    events = run_to_end(client, prompt_id)
    kinds = [e.type for e in events if e.type not in ("status", "progress_state", "feature_flags")]
    assert kinds == [
        "execution_start",
        "execution_cached",
        *["executing"] * 5,
        *["progress", "preview"] * 4,
        "executing",
        "executing",
        "executed",  # VAEDecode, SaveImage
        "executing",
        "image",  # SaveImageWebsocket
        "execution_success",
        "executing",  # the end marker
    ]
    assert [e.data["node"] for e in events if e.type == "executing"] == ["1", "2", "3", "4", "5", "6", "10", "11", None]

    progress = [(e.data["value"], e.data["max"]) for e in events if e.type == "progress"]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    previews = [e for e in events if e.type == "preview"]
    assert len(previews) == 4
    for step, preview in enumerate(previews, start=1):
        assert preview.data["format"] == "jpeg" and preview.data["prompt_id"] == prompt_id
        assert preview.data["node"] == "5"
        size, (red, green, _) = pixel(preview.data["image"])
        assert size == (512, 256) and abs(red - 300 % 256) <= 3 and abs(green - step) <= 3
    (final,) = [e for e in events if e.type == "image"]
    assert final.data["format"] == "png" and final.data["node"] == "11" and final.data["prompt_id"] == prompt_id
    assert pixel(final.data["image"]) == ((64, 32), (300 % 256, 4, 255))

    fake.wait_until(lambda: fake.connections and fake.connections[0]["feature_flags"], what="feature flags")
    assert fake.connections[0]["feature_flags"] == {"supports_preview_metadata": True}
    entry = client.history(prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    (ref,) = output_images(entry)
    assert ref == {"filename": "test_00001_.png", "subfolder": "studio", "type": "output"}
    assert pixel(client.view(**ref)) == ((64, 32), (44, 4, 255))
    assert fake.prompts[0]["client_id"] == client.client_id


def test_previews_and_images_in_the_plain_framing(start, connect):
    """A server that ignores the feature flag sends [1][format][bytes]; node and prompt come from `executing`."""
    client = connect(start(preview_metadata=False).url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(
        txt2img(seed=5, steps=3, outputs=("SaveImageWebsocket",)), prompt_id, {"preview_method": "taesd"}
    )
    events = run_to_end(client, prompt_id)
    previews = [e.data for e in events if e.type == "preview"]
    assert [(p["format"], p["node"], p["prompt_id"]) for p in previews] == [("jpeg", "5", prompt_id)] * 3
    (final,) = [e.data for e in events if e.type == "image"]
    assert (final["format"], final["node"]) == ("png", "10")
    assert pixel(final["image"]) == ((64, 32), (5, 3, 255))


def test_no_previews_unless_asked(start, connect):
    client = connect(start().url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(steps=2), prompt_id)
    kinds = [e.type for e in run_to_end(client, prompt_id)]
    assert "preview" not in kinds and kinds.count("image") == 1 and kinds.count("progress") == 2


def test_frames_are_told_apart_without_a_known_prompt():
    client = ComfyClient("http://127.0.0.1:1")
    png, jpeg = solid_png((4, 4), (1, 2, 3)), b"\xff\xd8\xff\xe0jpeg"
    assert client._parse(struct.pack(">II", 1, 1) + jpeg) == Event(
        "preview", {"image": jpeg, "format": "jpeg", "prompt_id": None, "node": None}
    )
    assert client._parse(struct.pack(">II", 1, 2) + png).type == "image"
    meta = json.dumps({"node_id": "9", "prompt_id": "p", "image_type": "image/png"}).encode()
    event = client._parse(struct.pack(">II", 4, len(meta)) + meta + png)
    assert event.type == "image" and event.data["node"] == "9" and event.data["prompt_id"] == "p"
    text = client._parse(struct.pack(">II", 3, 1) + b"5" + "étape 5/10".encode())
    assert text == Event("progress_text", {"node": "5", "text": "étape 5/10", "prompt_id": None})
    assert client._parse(struct.pack(">I", 77) + b"xyz") == Event("binary", {"event": 77, "data": b"xyz"})
    assert client._parse("not json") is None


def test_a_png_preview_from_a_sampler_of_a_known_prompt_stays_a_preview():
    client = ComfyClient("http://127.0.0.1:1")
    client._ws_outputs["p"] = {"11"}
    png = solid_png((4, 4), (1, 2, 3))
    meta = json.dumps({"node_id": "5", "prompt_id": "p", "image_type": "image/png"}).encode()
    assert client._parse(struct.pack(">II", 4, len(meta)) + meta + png).type == "preview"


def test_img2img_uses_the_uploaded_size_and_the_strength(start, connect):
    client = connect(start().url)
    client.open_socket()
    name = client.upload_image(solid_png((40, 24), (0, 0, 0)), "init.png")
    graph = txt2img(seed=1, steps=3, outputs=("SaveImage",))
    graph["4"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    graph["7"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}}
    graph["5"]["inputs"].update(latent_image=["7", 0], denoise=0.5)
    prompt_id = new_id()
    client.queue_prompt(graph, prompt_id)
    run_to_end(client, prompt_id)
    (ref,) = output_images(client.history(prompt_id))
    assert pixel(client.view(**ref)) == ((40, 24), (1, 3, 128))


def test_the_same_prompt_again_is_cached(start, connect):
    client = connect(start().url)
    client.open_socket()
    first, second = new_id(), new_id()
    client.queue_prompt(txt2img(outputs=("SaveImage",)), first)
    run_to_end(client, first)
    client.queue_prompt(txt2img(outputs=("SaveImage",)), second)
    events = run_to_end(client, second)
    (cached,) = [e.data["nodes"] for e in events if e.type == "execution_cached"]
    assert set(cached) == {"1", "2", "3", "4", "5", "6", "10"}
    assert not [e for e in events if e.type == "progress"]
    assert [e.type for e in events if e.type == "executed"] == ["executed"]
    assert output_images(client.history(second)) == output_images(client.history(first))


def test_a_failing_node_sends_execution_error(start, connect):
    client = connect(start(fail_at_step=2, fail_message="CUDA out of memory").url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(steps=5), prompt_id)
    events = run_to_end(client, prompt_id)
    (error,) = [e.data for e in events if e.type == "execution_error"]
    assert error["exception_message"] == "CUDA out of memory" and error["node_type"] == "KSampler"
    assert client.history(prompt_id)["status"]["status_str"] == "error"


# ---- rejections --------------------------------------------------------------------------------------------------


def test_a_rejected_prompt_keeps_the_body(start, connect):
    fake = start()
    client = connect(fake.url)
    graph = txt2img(sampler="Euler a")
    del graph["4"]["inputs"]["batch_size"]
    with pytest.raises(ComfyError) as caught:
        client.queue_prompt(graph, new_id())
    error = caught.value
    assert error.status == 400
    assert error.body["error"]["type"] == "prompt_outputs_failed_validation"
    assert error.body["node_errors"]["5"]["errors"][0]["type"] == "value_not_in_list"
    assert error.body["node_errors"]["5"]["class_type"] == "KSampler"
    assert error.body["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    assert sorted(error.body["node_errors"]["5"]["dependent_outputs"]) == ["10", "11"]
    assert first_line(error) == str(error)
    assert "Prompt outputs failed validation: EmptyLatentImage 4: Required input is missing (batch_size)" in str(error)
    assert fake.prompts == [] and len(fake.rejected) == 1


def test_unknown_nodes_and_bad_prompt_ids_are_rejected(start, connect):
    client = connect(start().url)
    graph = txt2img()
    graph["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(ComfyError) as caught:
        client.queue_prompt(graph, new_id())
    assert caught.value.body["error"]["type"] == "missing_node_type" and "NoSuchNode" in str(caught.value)
    with pytest.raises(ComfyError) as caught:
        client.queue_prompt(txt2img(), new_id().upper())
    assert caught.value.body["error"]["type"] == "invalid_prompt_id"


# ---- cancel ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs_api", [True, False])
def test_cancel_a_running_prompt_stops_it(start, connect, jobs_api):
    fake = start(jobs_api=jobs_api)
    client = connect(fake.url)
    client.open_socket()
    prompt_id = new_id()
    steps = 5000  # 100 s uncancelled: longer than the hang guard, so only a cancel can end it
    client.queue_prompt(txt2img(steps=steps), prompt_id)
    events = [wait_for(client, "progress")]
    assert client.cancel(prompt_id) is (True if jobs_api else None)
    events += run_to_end(client, prompt_id)
    assert max(e.data["value"] for e in events if e.type == "progress") < steps
    (interrupted,) = [e.data for e in events if e.type == "execution_interrupted"]
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_type"] == "KSampler"
    assert "execution_success" not in [e.type for e in events]
    status = client.history(prompt_id)["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    if jobs_api:
        assert fake.cancels == [prompt_id]
    else:
        assert fake.interrupts == [{"prompt_id": prompt_id}] and fake.deletes == [prompt_id]


@pytest.mark.parametrize("jobs_api", [True, False])
def test_cancel_a_queued_prompt(start, connect, jobs_api):
    fake = start(jobs_api=jobs_api)
    client = connect(fake.url)
    client.open_socket()
    running, queued = new_id(), new_id()
    client.queue_prompt(txt2img(steps=500), running)
    client.queue_prompt(txt2img(seed=8, steps=2), queued)
    wait_for(client, "progress")
    assert [entry[1] for entry in client.queue()["queue_pending"]] == [queued]
    client.cancel(queued)
    assert client.queue()["queue_pending"] == []
    assert client.queue()["queue_running"][0][1] == running
    client.interrupt()
    events = run_to_end(client, running)
    after = new_id()  # queued behind the cancelled one: once it has run, the cancelled one had its turn
    client.queue_prompt(txt2img(seed=9, steps=2), after)
    events += run_to_end(client, after)
    assert not [e for e in events if e.data.get("prompt_id") == queued]  # the cancelled prompt never started
    assert client.history(queued) == {} and client.queue() == {"queue_running": [], "queue_pending": []}


def test_interrupt_for_another_prompt_leaves_the_running_one(start, connect):
    client = connect(start().url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(steps=6), prompt_id)
    wait_for(client, "progress")
    client.interrupt(new_id())
    assert "execution_success" in [e.type for e in run_to_end(client, prompt_id)]


# ---- auth, reachability, timeouts --------------------------------------------------------------------------------


def test_a_token_is_required_and_sent_everywhere(start, connect):
    fake = start(token="s3cret")
    for token in ("", "wrong"):
        client = connect(fake.url, token=token)
        with pytest.raises(ComfyError) as caught:
            client.system_stats()
        assert str(caught.value) == REFUSED and caught.value.status == 401
        with pytest.raises(ComfyError, match=r"refused the connection \(check the token\)"):
            client.open_socket()
    client = connect(fake.url, token="s3cret")
    client.open_socket()
    prompt_id = new_id()
    client.upload_image(solid_png((8, 8), (1, 1, 1)), "a.png")
    client.queue_prompt(txt2img(steps=2), prompt_id)
    run_to_end(client, prompt_id)
    client.history(prompt_id)
    assert [c["authorization"] for c in fake.wait_connections(1)] == ["Bearer s3cret"]
    accepted = [r for r in fake.requests if r[2] == "Bearer s3cret"]
    assert {path for _, path, _ in accepted} == {"/ws", "/upload/image", "/prompt", f"/history/{prompt_id}"}


def test_an_unreachable_server_is_one_line(connect):
    port = closed_port()
    with allow_loopback():
        client = connect(f"http://127.0.0.1:{port}")
        message = f"Cannot reach the ComfyUI server at http://127.0.0.1:{port}: connection refused"
        with pytest.raises(ComfyError) as caught:
            client.system_stats()
        assert str(caught.value) == message
        with pytest.raises(ComfyError) as caught:
            client.open_socket()
        assert str(caught.value) == message


def test_a_silent_server_times_out(start, connect):
    client = connect(start(http_delay=10 * HANG_GUARD).url, timeout=0.2)  # an answer would come too late to pass
    with pytest.raises(ComfyError, match=r"No answer from the ComfyUI server at .* within 0.2 s"):
        client.system_stats()


def test_a_login_page_is_not_taken_for_comfyui(start, connect):
    client = connect(start(login_page=True).url)
    with pytest.raises(ComfyError, match="did not answer like a ComfyUI server"):
        client.system_stats()
    with pytest.raises(ComfyError, match="did not answer like a ComfyUI server"):
        client.view("x.png")


# ---- a dropped socket, a dying server ----------------------------------------------------------------------------


def test_a_dropped_socket_reconnects_and_recovers_the_result_from_history(start, connect):
    fake = start(drop_socket_at_step=2, step_delay=0.05)
    client = connect(fake.url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(seed=42, steps=8, outputs=("SaveImage",)), prompt_id)
    until_closed(client)
    assert not client.socket_open
    with pytest.raises(SocketClosed):
        client.next_event(0.1)
    client.reconnect()
    assert client.socket_open
    assert [c["client_id"] for c in fake.wait_connections(2)] == [client.client_id] * 2
    fake.wait_until(lambda: prompt_id in fake.history, what="history entry")
    (ref,) = output_images(client.history(prompt_id))
    assert pixel(client.view(**ref)) == ((64, 32), (42, 8, 255))


def test_a_dying_server_is_a_clean_error(start, connect):
    fake = start(die_at_step=2)
    client = connect(fake.url, timeout=2.0)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(steps=8), prompt_id)
    assert "was lost" in str(until_closed(client))
    with pytest.raises(ComfyError, match="Cannot reach the ComfyUI server"):
        client.reconnect()
    with pytest.raises(ComfyError, match="Cannot reach the ComfyUI server"):
        client.history(prompt_id)


def test_a_restarted_server_answers_on_the_same_address_and_knows_no_prompt(start, connect):
    fake = start(step_delay=0.05)
    client = connect(fake.url, timeout=2.0)
    client.open_socket()
    done, running = new_id(), new_id()
    client.queue_prompt(txt2img(steps=1, outputs=("SaveImage",)), done)
    run_to_end(client, done)
    client.queue_prompt(txt2img(steps=200), running)
    wait_for(client, "progress")
    assert client.in_queue(running) and not client.in_queue(done) and client.ping()
    fake.go_down()
    assert "was lost" in str(until_closed(client))
    assert not client.ping(1.0)
    fake.come_back()
    assert client.ping(1.0) and fake.restarts == 1 and fake.url == f"http://127.0.0.1:{fake.port}"
    assert client.history(done) == {} and client.history(running) == {} and not client.in_queue(running)
    assert [kind for kind, _sub, _name in fake.files] == ["output"]  # output/ is on disk; temp/ is emptied
    client.reconnect()
    assert wait_for(client, "status").data["status"]["exec_info"]["queue_remaining"] == 0


def test_history_entries_are_deleted_on_request(start, connect):
    fake = start()
    client = connect(fake.url)
    client.open_socket()
    first, second = new_id(), new_id()
    for prompt_id in (first, second):
        client.queue_prompt(txt2img(steps=1, outputs=("SaveImage",)), prompt_id)
        run_to_end(client, prompt_id)
    client.delete_history([first, "not-a-prompt"])
    assert client.history(first) == {} and client.history(second) and fake.history_deletes == [first, "not-a-prompt"]


def test_a_prompt_with_one_bad_output_runs_the_good_one_and_says_so(start, connect):
    """The real server queues the outputs that validate and reports the others in a 200's node_errors."""
    client = connect(start().url)
    client.open_socket()
    graph = txt2img(outputs=("SaveImage",))
    graph["20"] = {
        "class_type": "ImageScaleBy",
        "inputs": {"image": ["6", 0], "upscale_method": "sideways", "scale_by": 2.0},
    }
    graph["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    prompt_id = new_id()
    answer = client.queue_prompt(graph, prompt_id)
    assert answer["node_errors"]["20"]["errors"][0]["type"] == "value_not_in_list"
    assert answer["node_errors"]["20"]["dependent_outputs"] == ["21"]
    run_to_end(client, prompt_id)
    assert list(client.history(prompt_id)["outputs"]) == ["10"]


def test_a_socket_that_reconnects_mid_prompt_hears_the_running_node(start, connect):
    fake = start(step_delay=0.05)
    client = connect(fake.url)
    client.open_socket()
    prompt_id = new_id()
    client.queue_prompt(txt2img(steps=5000), prompt_id)  # still running however late the reconnect comes
    wait_for(client, "progress")
    client.reconnect()
    catch_up = wait_for(client, "executing")
    assert catch_up.data["node"] == "5"
    client.cancel(prompt_id)
    assert "execution_interrupted" in [e.type for e in run_to_end(client, prompt_id)]
