"""The ComfyUI backend against the fake server (tests/fake_comfyui.py, the protocol of ComfyUI 0.27): every mode,
progress and previews, cancel, a dropped socket recovered from history, a server that dies, a 400 as one line.

Nothing here is timed: a test waits for what it needs and asserts what happened; benchmarks/bench_comfy.py measures
how fast a cancel, a reconnect and a lost server's failure are."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_comfyui import FakeComfy, allow_loopback

from studio.backends.base import UnsupportedError
from studio.backends.comfyui.backend import ComfyUIBackend
from studio.backends.comfyui.client import ComfyError
from studio.core.errors import EngineError, RequestError
from studio.core.requests import GenerateRequest

MODELS = {
    "checkpoints": ["tiny-sd15.safetensors", "sd15-inpainting.safetensors"],
    "loras": ["styles/ink.safetensors"],
    "vae": ["ft-mse.safetensors"],
    "upscale_models": ["4x-tiny.pth"],
    "embeddings": ["easyneg.safetensors"],
}


@pytest.fixture
def server():
    with allow_loopback():
        fake = FakeComfy(models={k: list(v) for k, v in MODELS.items()}, cache=False).start()
        try:
            yield fake
        finally:
            fake.stop()


@pytest.fixture
def backend(server):
    b = ComfyUIBackend(server.url)
    try:
        yield b
    finally:
        b.close()


def req(**kw) -> GenerateRequest:
    base = dict(prompt="a red fox", steps=4, cfg=6.0, seed=300, width=64, height=48, sampler="DPM++ 2M",
                schedule="Karras")  # fmt: skip
    return GenerateRequest.from_fields(**{**base, **kw})


def test_start_reports_the_server_and_its_files(backend):
    info = backend.start()
    assert info.name == "ComfyUI 0.27.0" and info.version == "0.27.0" and info.remote_files
    assert not info.keeps_latents and not info.decodes_steps and "keeps no latents" in info.why_no_decode()
    assert ("tiny-sd15.safetensors", "tiny-sd15") in info.models
    assert ("styles/ink.safetensors", "ink") in info.loras and ("easyneg.safetensors", "easyneg") in info.embeddings
    assert "Euler a" in info.samplers and "PLMS" not in info.samplers and "Karras" in info.schedules
    assert info.upscalers and info.upscalers[0][0] == "4x-tiny.pth"


def test_txt2img_runs_on_the_server_with_progress_and_previews(backend, server):
    steps = []
    result = backend.generate(req(prompt="a red fox <lora:ink:0.7> easyneg"), on_step=steps.append)
    assert len(result.images) == 1 and result.images[0].shape == (48, 64, 3)
    px = result.images[0][0, 0]
    assert (px[0], px[1]) == (300 % 256, 4)  # the fake paints red = seed % 256, green = steps
    assert [s.step for s in steps] == [1, 2, 3, 4] and all(s.total == 4 for s in steps)
    assert steps[-1].preview is not None and len(result.step_previews["x0"]) == 4
    assert result.seeds == [300] and result.model_name == "tiny-sd15" and result.request.width == 64
    graph = server.prompts[-1]["prompt"]
    by_class = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert by_class["KSampler"]["sampler_name"] == "dpmpp_2m" and by_class["KSampler"]["scheduler"] == "karras"
    assert by_class["LoraLoader"]["lora_name"] == "styles/ink.safetensors"
    assert by_class["LoraLoader"]["strength_model"] == pytest.approx(0.7)
    texts = sorted(n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode")
    assert texts == ["", "a red fox embedding:easyneg"]
    assert server.prompts[-1]["extra_data"]["preview_method"] == "latent2rgb"
    # The metadata keeps the artist's own words.
    assert result.request.prompt == "a red fox <lora:ink:0.7> easyneg"


def test_img2img_batch_runs_once_per_image_with_seed_plus_i(backend, server):
    init = np.full((40, 56, 3), 90, np.uint8)
    result = backend.generate(req(mode="img2img", init_image=init, strength=0.5, width=None, height=None, batch=2))
    assert [im.shape for im in result.images] == [(40, 56, 3)] * 2
    assert [int(im[0, 0, 0]) for im in result.images] == [300 % 256, 301 % 256] and result.seeds == [300, 301]
    assert int(result.images[0][0, 0, 2]) == round(255 * 0.5)  # blue = denoise
    assert len(server.uploads) == 1  # the image went up once for both


def test_inpaint_keeps_every_unmasked_pixel_exactly(backend, server):
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    result = backend.generate(req(mode="inpaint", init_image=init, mask=mask, strength=0.8, width=None,
                                  height=None, mask_blur=2, model="sd15-inpainting"))  # fmt: skip
    out = result.images[0]
    far = np.ones((64, 64), bool)
    far[14:46, 14:46] = False  # outside the mask and its feather
    assert np.array_equal(out[far], init[far])
    assert int(out[30, 30, 0]) == 300 % 256  # the fake's picture inside the mask
    graph = server.prompts[-1]["prompt"]
    assert any(n["class_type"] == "InpaintModelConditioning" for n in graph.values())  # an inpainting checkpoint


def test_upscale_with_a_server_model(backend, server):
    init = np.full((16, 24, 3), 50, np.uint8)
    result = backend.generate(req(mode="upscale", init_image=init, upscale_mode="model", scale=2.0, width=None, height=None,
                                  upscaler="4x-tiny.pth"))  # fmt: skip
    assert result.images[0].shape == (32, 48, 3)
    with pytest.raises(UnsupportedError, match="local engine only"):
        backend.generate(req(mode="upscale", init_image=init, upscale_mode="latent", scale=2.0))


def test_cancel_stops_the_running_prompt(backend, server):
    server.step_delay = 0.1
    steps = 1000  # 100 s uncancelled: longer than the hang guard, so only the cancel can end it early
    cancel = threading.Event()

    def on_step(info):
        if info.step == 2:
            cancel.set()

    result = backend.generate(req(steps=steps), on_step=on_step, cancel=cancel)
    assert result.cancelled and not result.images
    assert server.cancels or server.interrupts
    # the server's sampler stopped: its prompt ends interrupted, early
    server.wait_until(lambda: len(server.ended) == 1, what="the end of the cancelled prompt")
    (entry,) = server.ended.values()
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
    assert result.steps_done < steps


def test_a_dropped_socket_is_reconnected_and_the_result_recovered(backend, server):
    server.drop_socket_at_step = 2
    result = backend.generate(req(steps=5))
    assert len(result.images) == 1 and int(result.images[0][0, 0, 1]) == 5
    ids = [c["client_id"] for c in server.wait_connections(2)]
    assert len(ids) >= 2 and len(set(ids)) == 1  # the same client id


def test_a_server_that_dies_fails_the_job_with_a_message(backend, server, monkeypatch):
    import studio.backends.comfyui.backend as mod

    monkeypatch.setattr(mod, "RECONNECT_FOR", 2.0)
    backend.start()
    server.die_at_step = 2
    with pytest.raises(EngineError, match=r"Lost the ComfyUI server .* \(no answer for 2 s\)"):
        backend.generate(req(steps=10))


def test_a_refused_graph_is_one_readable_line(backend, server, monkeypatch):
    import studio.backends.comfyui.graphs as graphs

    monkeypatch.setattr(graphs, "validate", lambda graph, info: None)  # let the server judge
    with pytest.raises(RequestError) as err:
        backend.generate(req(width=8, height=8))
    text = str(err.value)
    assert text.startswith("ComfyUI refused the job") and "\n" not in text and "EmptyLatentImage" in text


def test_names_the_server_lacks_are_said_before_anything_runs(backend, server):
    with pytest.raises(RequestError, match="no sampler PLMS"):
        backend.generate(req(sampler="PLMS"))
    with pytest.raises(RequestError, match="no checkpoint 'dreamshaper'"):
        backend.generate(req(model="dreamshaper"))
    assert server.prompts == []


def test_unreachable_and_token_protected_servers(server):
    with pytest.raises(ComfyError, match="Cannot reach the ComfyUI server"):
        ComfyUIBackend("http://127.0.0.1:9").start()
    server.token = "s3cret"
    with pytest.raises(ComfyError, match="check the token"):
        ComfyUIBackend(server.url, "wrong").start()
    ok = ComfyUIBackend(server.url, "s3cret")
    try:
        assert ok.start().name == "ComfyUI 0.27.0"
        assert ok.generate(req()).images
    finally:
        ok.close()


class _StubClient:
    """Only what start() asks before it refuses: stats and object_info."""

    def __init__(self, version="0.27.0", drop=()):
        import json
        from pathlib import Path

        self.version = version
        data = json.loads((Path(__file__).parent / "data" / "comfyui" / "object_info-0.27.json").read_text())
        data["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["a.safetensors"]
        self.objects = {k: v for k, v in data.items() if k not in drop}
        self.closed = False

    def system_stats(self):
        return {"system": {"comfyui_version": self.version}, "devices": []}

    def object_info(self):
        return self.objects

    def close(self):
        self.closed = True


def test_a_server_too_old_or_missing_a_core_node_is_refused_with_a_message():
    old = _StubClient("0.2.7")
    with pytest.raises(EngineError, match=r"ComfyUI 0.2.7 at http://gpu:8188 is too old"):
        ComfyUIBackend("http://gpu:8188", client_factory=lambda url, token: old).start()
    assert old.closed
    lacking = _StubClient(drop=("InpaintModelConditioning", "SetLatentNoiseMask"))
    with pytest.raises(EngineError, match="lacks the core nodes SetLatentNoiseMask, InpaintModelConditioning: update it"):
        ComfyUIBackend("http://gpu:8188", client_factory=lambda url, token: lacking).start()


def test_the_cli_runs_on_a_server_and_writes_the_metadata(server, tmp_path):
    import subprocess
    import sys

    from studio.core.metadata import read_parameters

    cmd = [sys.executable, "-m", "studio", "generate", "--server", server.url, "--prompt", "a lighthouse",
           "--steps", "3", "--seed", "11", "--width", "64", "--height", "64", "--out", str(tmp_path), "-q"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (path,) = p.stdout.split()
    text = read_parameters(path)
    assert text.startswith("a lighthouse\n") and "Seed: 11" in text and "Steps: 3" in text
    p = subprocess.run([*cmd[:5], "http://127.0.0.1:9", *cmd[6:]], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == (
        "studio: error: Cannot reach the ComfyUI server at http://127.0.0.1:9: connection refused"
    )


def test_sizes_follow_the_checkpoint_family_when_the_panel_leaves_them_native(backend, server):
    from studio.backends.comfyui.backend import native_size

    assert native_size("sdxl-base-1.0.safetensors") == 1024 and native_size("ponyDiffusionV6XL.safetensors") == 1024
    assert native_size("dreamshaper-8.safetensors") == 512
    result = backend.generate(req(width=None, height=None, steps=1))
    assert result.images[0].shape == (512, 512, 3) and (result.request.width, result.request.height) == (512, 512)


# -- issue 24: the real server's defects ------------------------------------------------------------------------
def _png_fields(result, tmp_path):
    from studio.core.metadata import read_parameters, request_fields
    from studio.core.output import save_result

    paths = save_result(result, tmp_path, "test")
    return [(read_parameters(p), request_fields(read_parameters(p))) for p in paths]


def test_every_image_of_a_batch_has_its_own_seed_and_reproduces_alone(backend, server, tmp_path):
    top = 2**32 - 1
    result = backend.generate(req(seed=top, batch=2))
    assert result.seeds == [top, 0]  # wrapped within 0..2^32-1, as the local engine does
    assert [int(im[0, 0, 0]) for im in result.images] == [top % 256, 0]  # each image drawn with its own seed
    for image, (text, fields) in zip(result.images, _png_fields(result, tmp_path), strict=True):
        assert "4294967296" not in text
        alone = backend.generate(req(seed=fields["seed"], batch=1))
        assert np.array_equal(alone.images[0], image)


def test_pixel_space_is_not_offered_as_a_vae(backend, server):
    assert "pixel_space" in server.object_info()["VAELoader"]["input"]["required"]["vae_name"][0]
    assert [v for v, _ in backend.start().vaes] == ["ft-mse.safetensors"]  # not a VAE file: never offered


def test_server_pngs_keep_the_vae_the_loras_and_our_sampler_names(backend, server, tmp_path):
    result = backend.generate(req(prompt="a fox easyneg", loras=(("ink", 0.5),), vae="ft-mse",
                                  sampler="dpmpp_2m_sde_gpu", schedule="karras"))  # fmt: skip
    by_class = {n["class_type"]: n["inputs"] for n in server.prompts[-1]["prompt"].values()}
    assert by_class["KSampler"]["sampler_name"] == "dpmpp_2m_sde_gpu"  # the server ran what was asked
    ((text, fields),) = _png_fields(result, tmp_path)
    assert text.startswith("a fox easyneg <lora:ink:0.5>\n")
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras," in text and "VAE: ft-mse," in text
    assert fields["vae"] == "ft-mse" and fields["sampler"] == "DPM++ 2M SDE"
    # The text reruns the same graph: the tag brings the LoRA back.
    again = backend.generate(req(prompt=fields["prompt"], vae=fields["vae"]))
    assert {n["class_type"]: n["inputs"] for n in server.prompts[-1]["prompt"].values()}["LoraLoader"] == {
        **by_class["LoraLoader"]}
    assert again.images


def test_reuse_parameters_finds_the_servers_model_and_vae_by_name(backend, server, tmp_path):
    from studio.core.output import save_result
    from studio.session import library

    result = backend.generate(req(model="sd15-inpainting", vae="ft-mse"))
    (png,) = save_result(result, tmp_path, "test")
    found = library.read_png_fields(png)
    assert library.server_names(found, backend.info()) == {"model": "sd15-inpainting.safetensors",
                                                           "vae": "ft-mse.safetensors"}  # fmt: skip


def test_img2img_inpaint_and_diffusion_upscale_run_the_local_engines_steps(backend, server):
    init = np.full((64, 96, 3), 90, np.uint8)
    for kw in (dict(mode="img2img", init_image=init), dict(mode="upscale", init_image=init, upscale_mode="diffusion",
                                                            scale=2.0)):  # fmt: skip
        steps = []
        result = backend.generate(req(steps=10, strength=0.35, width=None, height=None, **kw), on_step=steps.append)
        assert [s.step for s in steps] == [1, 2, 3] and result.steps_done == 3  # int(10 * 0.35), as diffusers
        sampler = next(n["inputs"] for n in server.prompts[-1]["prompt"].values()
                       if n["class_type"] == "KSamplerAdvanced")  # fmt: skip
        assert (sampler["steps"], sampler["start_at_step"], sampler["noise_seed"]) == (10, 7, 300)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 10:30] = 255
    steps = []
    result = backend.generate(req(mode="inpaint", init_image=init, mask=mask, strength=0.5, steps=6, width=None,
                                  height=None), on_step=steps.append)  # fmt: skip
    assert len(steps) == 3 and result.images[0].shape == (64, 96, 3)
    import io

    from PIL import Image

    work = Image.open(io.BytesIO(server.uploads[-2]["data"]))
    assert work.size == (128, 64)  # the local engine's working size: 96 rounded to a multiple of 64


def test_the_cli_says_which_server_model_it_uses_and_takes_a_default_per_server(server, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from studio.core.metadata import read_parameters

    config = tmp_path / "config"
    env = {**os.environ, "LATENT_STUDIO_CONFIG_DIR": str(config)}
    cmd = [sys.executable, "-m", "studio", "generate", "--server", server.url, "--prompt", "a lighthouse",
           "--steps", "2", "--seed", "11", "--width", "64", "--height", "64", "--out", str(tmp_path / "out")]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "studio: model tiny-sd15.safetensors on the server" in p.stderr
    assert "Model: tiny-sd15," in read_parameters(p.stdout.split()[-1])
    config.mkdir()
    (config / "settings.json").write_text(json.dumps({"server_models": {server.url + "/": "sd15-inpainting"}}))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "studio: model sd15-inpainting.safetensors on the server" in p.stderr
    assert "Model: sd15-inpainting," in read_parameters(p.stdout.split()[-1])
    p = subprocess.run([*cmd, "--model", "tiny-sd15"], capture_output=True, text=True, timeout=120, env=env)
    assert "Model: tiny-sd15," in read_parameters(p.stdout.split()[-1])
    help_text = subprocess.run([sys.executable, "-m", "studio", "generate", "--help"], capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    assert "server_models" in " ".join(help_text.split())


def _generate_or_hang(backend, request):
    """generate() in a thread: its result or exception, or an AssertionError when it is still waiting after the hang
    guard (then cancelled, so the test ends)."""
    from fake_comfyui import HANG_GUARD

    outcome: dict = {}
    cancel = threading.Event()

    def run():
        try:
            outcome["result"] = backend.generate(request, cancel=cancel)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(HANG_GUARD)
    if thread.is_alive():
        cancel.set()
        thread.join(HANG_GUARD)
        raise AssertionError(f"the job was still waiting after {HANG_GUARD:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_a_server_that_restarts_mid_job_and_forgets_it_fails_the_job_with_one_line(backend, server):
    backend.start()
    server.restart_at_step = 2  # back on the same port within the retry window, knowing no prompt
    with pytest.raises(EngineError) as err:
        _generate_or_hang(backend, req(steps=10))
    assert str(err.value) == "The ComfyUI server restarted and lost this job: run it again"
    assert server.restarts == 1
    assert backend.generate(req(steps=2)).images  # the next job runs on the restarted server


def test_health_says_when_the_server_is_lost_and_when_it_is_back(backend, server):
    backend.start()
    assert backend.health() == ""
    server.go_down()
    assert backend.health() == f"ComfyUI server lost: {server.url} does not answer; retrying"
    server.come_back()
    assert backend.health() == ""
    assert backend.generate(req(steps=2)).images  # a fresh socket: the job's messages reach us
    assert len(server.wait_connections(2)) == 2


def test_the_server_keeps_no_history_or_results_and_a_few_uploads_per_studio(backend, server):
    """Jobs leave nothing that grows: history entries deleted, results in temp/ (which ComfyUI empties when it
    starts), uploads under a fixed set of names per studio, overwritten by each job."""
    init = np.full((32, 32, 3), 90, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    runs = [req(), req(mode="img2img", init_image=init, strength=0.5, width=None, height=None, batch=2),
            req(mode="inpaint", init_image=init, mask=mask, strength=0.8, width=None, height=None),
            req(mode="img2img", init_image=init + 1, strength=0.5, width=None, height=None),
            req(mode="inpaint", init_image=init + 2, mask=mask, strength=0.8, width=None, height=None),
            req(mode="upscale", init_image=init, upscale_mode="model", scale=2.0, width=None, height=None,
                upscaler="4x-tiny.pth")]  # fmt: skip
    for r in runs:
        assert backend.generate(r).images
    assert len(server.prompts) == 7 and server.history == {}
    kinds = [kind for kind, _sub, _name in server.files]
    assert kinds.count("output") == 0 and kinds.count("input") <= 2 and kinds.count("temp") == 7
    server.restart()
    assert [kind for kind, _sub, _name in server.files] == ["input"] * kinds.count("input")
