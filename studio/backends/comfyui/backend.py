"""A ComfyUI server behind the studio's Backend protocol.

One job = one or more API-format graphs (``graphs.build_graph``) queued with the studio's own prompt id;
the socket brings progress and preview frames; the images come from ``PreviewImage`` (the server's temp folder)
through ``/view`` (not over the socket: a result saved on the server survives a dropped connection and proxies
that cap frame sizes, and ``/history`` finds it again after a reconnect). A prompt the server no longer knows (it
restarted) fails the job; each job's history entry is deleted once its images are here. Inpainting keeps the studio's own crop and pixel-space
composite (``studio.core.inpaint.InpaintPlan``), so unmasked pixels are the input's exactly. The server
keeps no latents for us: the step timeline holds its preview frames and "decode this step" is off.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from studio.core.errors import EngineError, ModelError, RequestError, first_line
from studio.core.memory import MemoryOptions
from studio.core.requests import MAX_SEED, GenerateRequest, GenerateResult, StepInfo
from studio.core.variation import varies

from ..base import BackendInfo, StepCallback, UnsupportedError
from . import graphs
from .client import ComfyClient, ComfyError, SocketClosed, output_images

log = logging.getLogger(__name__)
MODES = ("txt2img", "img2img", "inpaint", "upscale")
UPSCALE_MODES = ("resize", "model", "diffusion")  # not "latent": the x4 latent upscaler is the local engine's
MIN_VERSION = (0, 3, 0)  # the protocol facts were checked on 0.27; older servers lack routes and nodes we use
RECONNECT_FOR = 30.0  # seconds a dropped socket is retried before the job fails
CHECK_AFTER = 5.0  # seconds of silence about a job after which the server is asked whether it still knows it
HEALTH_TIMEOUT = 2.0  # seconds a health check waits: it runs on the engine thread between jobs
LOST_JOB = "The ComfyUI server restarted and lost this job: run it again"
DEFAULT_SIZE = 512  # the server does not say a checkpoint's native size
SIZE_MULTIPLE = 64  # the local engine's for SD 1.5, 2 and XL U-Nets (8 px a latent, 3 downsamples): inpaint's rule


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in str(text).lstrip("v").split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def native_size(checkpoint: str) -> int:
    """The server does not say a checkpoint's size: SDXL-family names (xl, pony, illustrious) work at 1024,
    others at 512, as the artist would pick; a size set in the panel always wins."""
    stem = Path(checkpoint).stem.lower()
    return 1024 if any(k in stem for k in ("xl", "pony", "illustrious", "noob")) else DEFAULT_SIZE


def _png(image: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode).save(buf, "PNG")
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _results_in_temp(graph: dict) -> dict:
    """SaveImage -> PreviewImage: the result goes to the server's temp/ folder, which ComfyUI empties each time it
    starts, not to its output/ folder, where every job's file would stay (the studio saves its own copy)."""
    for node in graph.values():
        if isinstance(node, dict) and node.get("class_type") == "SaveImage":
            node["class_type"] = "PreviewImage"
            node["inputs"] = {"images": node["inputs"]["images"]}
    return graph


class ComfyUIBackend:
    """The studio's jobs on a ComfyUI server at ``url`` (a bearer ``token`` for a proxy in front of it)."""

    def __init__(self, url: str, token: str = "", client_factory=ComfyClient):
        self.url = url.rstrip("/")
        self._token = token
        self._factory = client_factory
        self._client: ComfyClient | None = None
        self._objects: graphs.ObjectInfo | None = None
        self._lock = threading.Lock()
        self._tag = uuid.uuid4().hex[:12]  # this studio's upload names: two studios on one server never collide
        self._stale: list[str] = []  # prompts whose history entry may appear after their cleanup (cancelled, failed)
        self._lost = False  # the last health check found no server
        self._info = BackendInfo(name="ComfyUI server", modes=MODES, upscale_modes=UPSCALE_MODES, keeps_latents=False,
                                 decodes_steps=False, preview_kinds=("x0",), remote_files=True)  # fmt: skip

    # -- Backend -------------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        return self._info

    def start(self) -> BackendInfo:
        if self._client is not None:
            return self._info
        client = self._factory(self.url, self._token)
        try:
            stats = client.system_stats()
            version = str(stats.get("system", {}).get("comfyui_version", "") or "")
            if version and _version(version) < MIN_VERSION:
                raise EngineError(f"ComfyUI {version} at {self.url} is too old: the studio needs 0.3 or newer")
            objects = graphs.ObjectInfo(client.object_info())
            missing = objects.missing(graphs.REQUIRED_NODES)
            if missing:
                raise EngineError(f"The ComfyUI server at {self.url} lacks the core nodes {', '.join(missing)}: update it")
            if not objects.checkpoints:
                raise EngineError(f"The ComfyUI server at {self.url} has no checkpoint in models/checkpoints")
            embeddings = self._embeddings(client)
            client.open_socket()
        except Exception:
            client.close()
            raise
        devices = tuple(str(d.get("name", "")) for d in stats.get("devices", []) if isinstance(d, dict))
        self._client, self._objects = client, objects
        files = lambda names: tuple((n, Path(n).stem) for n in names)  # noqa: E731
        self._info = BackendInfo(
            name=f"ComfyUI {version}".strip(), modes=MODES, upscale_modes=UPSCALE_MODES,
            samplers=graphs.studio_samplers(objects), schedules=graphs.studio_schedules(objects), keeps_latents=False, decodes_steps=False,
            preview_kinds=("x0",), upscalers=tuple((n, f"{Path(n).stem} (on the server)") for n in objects.upscalers),
            devices=devices, device=devices[0] if devices else "", version=version, remote_files=True,
            models=files(objects.checkpoints), vaes=files(objects.vaes), loras=files(objects.loras),
            embeddings=files(embeddings), controlnets=files(objects.controlnets),
        )  # fmt: skip
        return self._info

    def _embeddings(self, client) -> list[str]:
        try:
            return [str(n) for n in client.models("embeddings")]
        except ComfyError:
            return []  # an older server without /models: embeddings still work by name, just not listed

    def load(self, model: str | None) -> None:
        """ComfyUI loads a checkpoint when a graph first needs it: here the name is only checked."""
        self._checkpoint(model)

    def set_memory(self, memory: MemoryOptions) -> None:
        """The server manages its own memory (its --lowvram and friends): nothing to set from here."""

    def decode_step(self, model, latent):
        raise UnsupportedError(self._info.why_no_decode())

    def health(self) -> str:
        """"" while the server answers, else the one line to show (the worker calls this between jobs). A server
        that comes back gets a new socket: the old one died with it."""
        client = self._client
        if client is None:
            return ""
        lost = f"ComfyUI server lost: {self.url} does not answer; retrying"
        if not client.ping(HEALTH_TIMEOUT):
            self._lost = True
            return lost
        if self._lost:
            try:
                client.reconnect()
            except ComfyError:
                return lost
            self._lost = False
        return ""

    def _forget(self, prompt_id: str, ended: bool) -> None:
        """Delete the prompt's history entry on the server, and those of earlier prompts that were still ending when
        their job was over here; one that has not ended yet is tried again after the next job."""
        client = self._client
        ids, self._stale = [*self._stale, prompt_id], ([] if ended else [prompt_id])
        if client is None:
            return
        try:
            client.delete_history(ids, timeout=HEALTH_TIMEOUT)
        except ComfyError:
            log.info("could not delete the history of %s", ids, exc_info=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- generation ----------------------------------------------------------------------------

    def checkpoint(self, model: str | None) -> str:
        """The server's checkpoint file a request's `model` names; None or "": the server's first."""
        return self._checkpoint(model)

    def _checkpoint(self, model: str | None) -> str:
        objects = self._require()
        if not model:
            return objects.checkpoints[0]
        return graphs.pick(objects.checkpoints, Path(model).name if "/" in model or "\\" in model else model,
                           "checkpoint")  # fmt: skip

    def _require(self) -> graphs.ObjectInfo:
        if self._objects is None or self._client is None:
            self.start()
        assert self._objects is not None
        return self._objects

    def generate(
        self, request: GenerateRequest, on_step: StepCallback | None = None, cancel: threading.Event | None = None
    ) -> GenerateResult:
        request.validate()
        objects = self._require()
        if request.mode == "upscale" and request.upscale.method == "latent":
            raise UnsupportedError("The x4 latent upscaler runs on the local engine only; pick another upscale method")
        graphs.comfy_names(request.sampler, request.schedule, objects)  # a name the server lacks: said at once
        if why := graphs.why_no_remote_branch(request):  # a branch the server cannot run: why, before any work
            raise UnsupportedError(why)
        try:
            ckpt = self._checkpoint(request.model)
        except RequestError:
            objects = self._refresh()  # a file added on the server since we asked: look again once
            ckpt = self._checkpoint(request.model)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        used, plan = self._sized(request.replace(seed=seed), native_size(ckpt))
        run = _Run(self, used, on_step, cancel)
        images: list[np.ndarray] = []
        seeds: list[int] = []
        uploads = self._uploads(used, plan)
        # One graph per image, seed + i as the local engine: ComfyUI draws one noise for a whole batch, so image 2
        # of a batch could not be made again from its own seed.
        passes = used.batch
        for i in range(passes):
            s = (seed + i) % (MAX_SEED + 1)
            one = used.replace(batch=1)
            graph = graphs.build_graph(self._with_embeddings(one), objects, checkpoint=ckpt, images=uploads, output="save", seed=s,
                                       inpaint_model="inpaint" in Path(ckpt).stem.lower())  # fmt: skip
            graph = _results_in_temp(graph)
            graphs.validate(graph, objects)
            out = run.execute(graph, part=(i + 1, passes) if passes > 1 else None)
            if out is None:
                return GenerateResult([], used, [], cancelled=True, steps_done=run.steps_done,
                                      step_previews=run.previews(), model_name=Path(ckpt).stem)  # fmt: skip
            for image in out:
                images.append(plan.paste(image) if plan is not None else image)
                seeds.append(s)
        shown, extra = self._as_written(used, objects)
        if used.branch is not None:  # the branch keys, as the local engine writes them
            from studio.core.branch import metadata as branch_metadata

            extra.update({k: str(v) for k, v in branch_metadata(used.branch, used).items() if v is not None})
        # DeepCache is the local engine's: the server's graph ran every step in full, and the metadata says so.
        notes = ["Deep cache is not applied on a ComfyUI server"] if shown.deep_cache > 1 else []
        if varies(shown):  # A1111's variation seeds are the local engine's: the server drew the plain seed's noise
            notes.append("Variation seeds are not applied on a ComfyUI server: it used the plain seed")
            shown = shown.replace(subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0)
        return GenerateResult(
            images=images, request=shown.replace(deep_cache=0), seeds=seeds, model_name=Path(ckpt).stem,
            model_hash="", timings={"total": time.perf_counter() - run.t0}, steps_done=run.steps_done,
            extra_params=extra, step_previews=run.previews(), crop=plan.box if plan is not None and plan.cropped
            else None, notes=notes,
        )  # fmt: skip

    @staticmethod
    def _as_written(r: GenerateRequest, objects: graphs.ObjectInfo) -> tuple[GenerateRequest, dict[str, str]]:
        """The request as its PNGs record it, and the metadata keys the local engine adds (A1111's): our sampler
        and schedule names, the `--lora` list as prompt tags (<lora:name:w>: the server gives no hashes for "Lora
        hashes", and a tag reruns anywhere), the VAE's name."""
        sampler, schedule = graphs.studio_names(r.sampler, r.schedule)
        tags = " ".join(f"<lora:{graphs._stem(graphs.pick(objects.loras, n, 'LoRA'))}:{float(w):g}>" for n, w in r.loras)
        prompt = f"{r.prompt} {tags}".strip() if tags else r.prompt
        extra = {"VAE": Path(graphs.pick(objects.vaes, r.vae, "VAE")).stem} if r.vae else {}
        return r.replace(sampler=sampler, schedule=schedule, prompt=prompt, loras=()), extra

    def _refresh(self) -> graphs.ObjectInfo:
        assert self._client is not None
        self._objects = graphs.ObjectInfo(self._client.object_info())
        return self._objects

    def _with_embeddings(self, r: GenerateRequest) -> GenerateRequest:
        """An embedding's name in a prompt, as A1111 writes it, becomes ComfyUI's `embedding:name`."""
        import re

        names = [label for _fid, label in self._info.embeddings]
        if not names:
            return r

        def convert(text: str) -> str:
            for name in names:
                pattern = r"(?<![0-9A-Za-z_:])" + re.escape(name) + r"(?![0-9A-Za-z_])"
                text = re.sub(pattern, f"embedding:{name}".replace("\\", "\\\\"), text, flags=re.IGNORECASE)
            return text

        return r.replace(prompt=convert(r.prompt), negative_prompt=convert(r.negative_prompt))

    def _sized(self, r: GenerateRequest, native: int = DEFAULT_SIZE):
        """The working size, as the local engine picks it (multiples of 8), and an inpaint's plan."""
        from studio.core.inpaint import InpaintPlan

        if r.mode == "txt2img":
            return r.replace(width=r.width or native, height=r.height or native), None
        if r.mode == "upscale":
            return r, None
        ih, iw = r.input_image().shape[:2]
        if r.mode == "inpaint" and r.inpaint.area == "masked" and not (r.width and r.height):
            w, h = native, native
        elif r.mode == "inpaint" and not (r.width and r.height):  # the whole picture, rounded as the local engine
            m = SIZE_MULTIPLE
            w, h = r.width or max(m, int(round(iw / m)) * m), r.height or max(m, int(round(ih / m)) * m)
        else:
            w, h = r.width or max(8, iw - iw % 8), r.height or max(8, ih - ih % 8)
        r = r.replace(width=w, height=h)
        return r, (InpaintPlan.make(r, int(r.seed or 0)) if r.mode == "inpaint" else None)

    def _uploads(self, r: GenerateRequest, plan) -> dict[str, str]:

        client = self._client
        assert client is not None
        tag = self._tag  # the same names each job: the server's input folder holds this studio's last job only
        controls = {f"control{i}": client.upload_image(_png(_control_part(c.image, r, plan)), f"studio-{tag}-control{i}.png")
                    for i, c in enumerate(r.controls) if c.image is not None}  # fmt: skip
        return {**controls, **self._image_uploads(r, plan)}

    def _image_uploads(self, r: GenerateRequest, plan) -> dict[str, str]:
        from PIL import Image

        client = self._client
        assert client is not None
        tag = self._tag
        if plan is not None:
            return {"init": client.upload_image(_png(plan.work_image), f"studio-{tag}-image.png"),
                    "mask": client.upload_image(_png(plan.work_mask, "L"), f"studio-{tag}-mask.png")}  # fmt: skip
        if r.mode in ("img2img", "upscale"):
            image = r.input_image()
            size = (r.width or image.shape[1], r.height or image.shape[0])  # _sized set both for img2img
            if r.mode == "img2img" and (image.shape[1], image.shape[0]) != size:
                image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
            return {"init": client.upload_image(_png(image), f"studio-{tag}-image.png")}
        return {}


def _control_part(image, r: GenerateRequest, plan) -> np.ndarray:
    """The control image of the whole picture, cut to an "only masked" inpaint's crop as the init image is (the
    local engine does the same: studio.engine.controlnet.control_picture)."""
    from PIL import Image

    a = np.asarray(image)
    if plan is None or not plan.cropped or r.init_image is None:
        return a
    ih, iw = r.init_image.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(a))
    if img.size != (iw, ih):
        img = img.resize((iw, ih), Image.Resampling.LANCZOS)
    x0, y0, x1, y1 = (int(v) for v in plan.box)
    return np.asarray(img.crop((x0, y0, x1, y1)))


class _Run:
    """One job's graphs on the server: events in, steps and previews out, cancel and reconnects handled."""

    def __init__(self, backend: ComfyUIBackend, request: GenerateRequest, on_step, cancel):
        self.b = backend
        self.r = request
        self.on_step = on_step
        self.cancel = cancel
        self.t0 = time.perf_counter()
        self.steps_done = 0
        self._previews: list[np.ndarray] = []
        self._last_preview: np.ndarray | None = None
        self.ended = False  # the server has finished the current prompt (its history entry exists)

    def previews(self) -> dict[str, list[np.ndarray]]:
        return {"x0": list(self._previews)} if self._previews else {}

    def execute(self, graph: dict, part: tuple[int, int] | None) -> list[np.ndarray] | None:
        """Queue one graph and follow it to its end: its images, or None when cancelled."""
        client = self.b._client
        assert client is not None
        prompt_id = str(uuid.uuid4())
        self.ended = False
        extra = {"preview_method": "latent2rgb"} if self.r.preview != "none" else None
        try:
            client.queue_prompt(graph, prompt_id, extra)
        except ComfyError as e:
            body = getattr(e, "body", None)
            if isinstance(body, dict) and (body.get("node_errors") or body.get("error")):
                raise RequestError(graphs.describe_errors(body)) from e
            raise
        try:
            return self._follow(client, prompt_id, part)
        finally:
            self.b._forget(prompt_id, self.ended)

    def _follow(self, client: ComfyClient, prompt_id: str, part: tuple[int, int] | None) -> list[np.ndarray] | None:
        saved: list[dict] = []
        started = False
        cancelled_at: float | None = None
        dropped_at: float | None = None
        heard = time.perf_counter()
        while True:
            if self.cancel is not None and self.cancel.is_set() and cancelled_at is None:
                cancelled_at = time.perf_counter()
                try:
                    client.cancel(prompt_id)
                except ComfyError:
                    log.warning("cancel of %s failed", prompt_id, exc_info=True)
                if not started:
                    return None  # still queued: removed from the server's queue, which says nothing more
            if cancelled_at is not None and time.perf_counter() - cancelled_at > 5.0:
                return None  # the server did not confirm; the studio's side of the job is over anyway
            try:
                event = client.next_event(timeout=0.1)
            except SocketClosed:
                if cancelled_at is not None:
                    return None  # the cancel was sent; nothing to wait for
                dropped_at = dropped_at or time.perf_counter()
                result = self._recover(prompt_id, dropped_at)
                if result is not None:
                    return self._fetch(result)
                continue
            dropped_at = None  # the socket works and the server knows the prompt (_recover checked)
            if event is None:
                if cancelled_at is None and time.perf_counter() - heard > CHECK_AFTER:
                    heard = time.perf_counter()  # silence: does the server still know the prompt?
                    try:
                        result = self._outcome(prompt_id)
                    except ComfyError:
                        client.close()  # no answer: recover as from a drop, within RECONNECT_FOR
                        continue
                    if result is not None:
                        return self._fetch(result)
                continue
            heard = time.perf_counter()
            kind, data = event.type, event.data if isinstance(event.data, dict) else {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "execution_start":
                started = True
            elif kind == "preview":
                self._preview(event.data)
            elif kind == "progress":
                self._progress(int(data.get("value", 0)), int(data.get("max", 0)), part)
            elif kind == "executed":
                saved += list((data.get("output") or {}).get("images", []))
            elif kind == "execution_error":
                node = data.get("node_type") or "a node"
                raise EngineError(f"ComfyUI failed in {node}: {first_line(str(data.get('exception_message', '')))}")
            elif kind == "execution_interrupted":
                return None
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                self.ended = True
                if cancelled_at is not None:
                    return None
                return self._fetch(saved)

    def _recover(self, prompt_id: str, since: float) -> list[dict] | None:
        """After a drop: reconnect (same client id) and ask the server; the images once the prompt is done."""
        client = self.b._client
        assert client is not None
        if time.perf_counter() - since > RECONNECT_FOR:
            raise EngineError(f"Lost the ComfyUI server at {self.b.url} during the job (no answer for "
                              f"{RECONNECT_FOR:.0f} s)")  # fmt: skip
        try:
            client.reconnect()
            return self._outcome(prompt_id)
        except (ComfyError, OSError):
            client.close()  # not confirmed: the next turn retries, and the time since the drop keeps counting
            time.sleep(0.5)
            return None

    def _outcome(self, prompt_id: str) -> list[dict] | None:
        """None while the server runs or queues the prompt; its images once it is done. A prompt the server does
        not know (it restarted: queue and history are its memory) is a failed job, never a job still running."""
        client = self.b._client
        assert client is not None
        entry = client.history(prompt_id)
        if not entry and not client.in_queue(prompt_id):
            entry = client.history(prompt_id)  # it may have ended between the two questions
            if not entry:
                raise EngineError(LOST_JOB)
        if not entry:
            return None
        self.ended = True
        if entry.get("status", {}).get("status_str") == "error":
            raise EngineError("The job failed on the ComfyUI server (see its log)")
        return output_images(entry)

    def _fetch(self, saved: list[dict]) -> list[np.ndarray]:
        client = self.b._client
        assert client is not None
        out = []
        for img in saved:
            if img.get("type", "output") not in ("output", "temp"):
                continue
            out.append(_decode(client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output"))))
        if not out:
            raise ModelError("The ComfyUI server finished the job but returned no image")
        return out

    def _preview(self, data) -> None:
        try:
            image = _decode(data["image"])
        except Exception:  # noqa: BLE001 - a bad preview frame is not worth failing the job
            return
        self._last_preview = image
        self._previews.append(image)

    def _progress(self, value: int, total: int, part: tuple[int, int] | None) -> None:
        self.steps_done = max(self.steps_done, value)
        if self.on_step is None or total <= 0:
            return
        stage, n, parts = ("image", part[0], part[1]) if part else ("", 0, 0)
        self.on_step(StepInfo(value, total, time.perf_counter() - self.t0, self._last_preview, stage, n, parts))
