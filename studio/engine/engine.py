"""The engine: loads a local pipeline once and runs requests on it, synchronously.

The only module that imports diffusers for generation. Threads live in the worker, not here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core import branch, inpaint, variation
from ..core.errors import OUT_OF_MEMORY, EngineError, ModelError, RequestError, first_line, is_out_of_memory
from ..core.memory import MemoryOptions, out_of_memory_advice
from ..core.requests import MAX_SEED, GenerateRequest, GenerateResult, StepInfo
from ..core.samplers import sampler_eta
from ..core.variation import varies
from ..paths import BUILTIN_MODEL, MODELS_DIR
from . import addons, runaddons, speed
from .controlnet import Controls
from .controlnet import check_family as check_control_family
from .deepcache import deep_cache_plan
from .loader import (
    LoadedModel,
    ModelLayout,
    check_mode,
    load_model,
    model_key,
    read_layout,
    resolve_model_path,
)
from .preview import latent_to_rgb, to_uint8
from .schedulers import build_scheduler
from .steps import Cancelled, StepTracker, effective_steps

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

# torchsde's Brownian tree warns on every DPM++ SDE run; the warning is about float rounding, not a fault.
warnings.filterwarnings("ignore", message="Should have ta>=t0")

log = logging.getLogger(__name__)
StepCallback = Callable[[StepInfo], None]
TIMELINE_TINY_PIXELS = 256 * 256  # the step timeline uses the tiny decoder up to this many output pixels
TILED_DECODE_PIXELS = 1536 * 1536  # above this many output pixels the VAE decodes in blended tiles


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16, Apple MPS fp16, else CPU fp32 (never bf16 on a CPU: it is very slow there)."""
    name = (device or os.environ.get("STUDIO_DEVICE") or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise RequestError(f"Unknown device {name}: use cpu, cuda or mps")
    # Refused here, before any model is read: torch would accept the name and fail at the first tensor.
    if kind == "cuda" and not torch.cuda.is_available():
        raise RequestError("This PyTorch has no CUDA: use --device cpu" if torch.version.cuda is None else
                           "No CUDA GPU is available (driver or device missing): use --device cpu")  # fmt: skip
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise RequestError(f"There is no {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not mps:
        raise RequestError("This PyTorch has no MPS (Apple GPU) device: use --device cpu")
    dev = torch.device(name)
    return dev, (torch.float32 if dev.type == "cpu" else torch.float16)


class Engine:
    """Headless diffusion engine. Not thread-safe by contract: call it from one thread."""

    def __init__(
        self,
        device: str | None = None,
        threads: int | None = None,
        memory: MemoryOptions | None = None,
        model_folders=(),
    ):
        self.device, self.dtype = pick_device(device)
        # Where LoRAs, embeddings and VAEs named in a request are looked up (the model library's folders).
        self.folders = [MODELS_DIR, *(Path(f).expanduser() for f in model_folders)]
        self.memory = memory or MemoryOptions()
        threads = threads or int(os.environ.get("STUDIO_THREADS", "0") or 0)
        if threads > 0 and self.device.type == "cpu":
            # On a busy CPU fewer threads than cores keeps steps steady (oversubscription stalls).
            torch.set_num_threads(threads)
        # One line for the artist about the engine's settings (STUDIO_COMPILE refused off CUDA), "" when none.
        self.notice = speed.compile_setting(self.device.type)[1]
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()  # guards against misuse from two threads, never held across threads
        self.loads = 0  # how many times weights were read from disk (tests check caching)
        self._upscaler: tuple[tuple, object] | None = None  # the last upscaler model: (file key, LoadedUpscaler)
        self._stop_after: int | None = None  # branch_state: the step after which a run stops
        self.controls = Controls()  # the ControlNets of the last runs (studio.engine.controlnet)

    # -- models -------------------------------------------------------------------------------------
    def load(self, model: str | None, prediction: str | None = None) -> LoadedModel:
        """The model, loaded once. prediction None: the loaded one as it is, whatever its prediction type."""
        path = resolve_model_path(model, BUILTIN_MODEL)
        key = model_key(path, prediction or "auto")
        if self._model is not None and (
            self._model.key == key or (prediction is None and self._model.key[:3] == key[:3])
        ):
            return self._model
        prediction = prediction or "auto"
        self._free_model()  # the old weights go before the new ones are read: two never share the memory
        try:
            loaded = load_model(path, self.device, self.dtype, prediction, self.memory, self.folders)
        except Exception as e:
            if is_out_of_memory(e):
                self._free_model()
                raise EngineError(self.out_of_memory()) from e
            raise
        self.loads += 1
        speed.prepare_model(loaded, self.device)  # channels_last (exact), torch.compile on CUDA when asked
        self._model = loaded
        return loaded

    def set_memory(self, memory: MemoryOptions) -> None:
        """New memory options: slicing and VAE tiling switch on the loaded model; a new offload drops it (the
        next run loads it with the new placement)."""
        if memory == self.memory:
            return
        old, self.memory = self.memory, memory
        if memory.offload != old.offload:
            self._free_model()
            return
        if self._model is not None:
            for pipe in {id(p): p for p in [self._model.base, *self._model._pipes.values()]}.values():
                if memory.attention_slicing:
                    pipe.enable_attention_slicing()
                else:
                    pipe.disable_attention_slicing()
            vae = self._model.base.vae
            vae.enable_tiling() if memory.vae_tiling else vae.disable_tiling()

    def out_of_memory(self) -> str:
        return OUT_OF_MEMORY if self.device.type == "cpu" else out_of_memory_advice(self.memory, self.device.type)

    def unload(self) -> None:
        self._free_model()
        self._upscaler = None

    def _free_model(self) -> None:
        if self._model is None:
            return
        self._model = None
        self.controls.clear()
        import gc

        gc.collect()  # pipelines hold reference cycles (from_pipe, hooks): free them now, not at some later gc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def upscaler(self, path: str):
        """The upscaler model file loaded on the engine's device (studio.engine.upscalers), the last one cached
        by path, size and mtime. Raises UpscalerError (a ModelError) for a file that is not an upscaler."""
        from .upscalers import load_upscaler

        p = Path(path).expanduser().resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise ModelError(f"Upscaler not found: {path}") from e
        key = (str(p), st.st_size, st.st_mtime_ns, str(self.device))
        if self._upscaler is not None and self._upscaler[0] == key:
            return self._upscaler[1]
        self._upscaler = None
        loaded = load_upscaler(p, device=str(self.device))
        self._upscaler = (key, loaded)
        return loaded

    def native_size(self, model: str | None) -> tuple[int, int]:
        return self.load(model).native_size

    def layout(self, model: str | None) -> ModelLayout:
        """What a model is, from its json files (the loaded model's when it is the one asked for)."""
        path = resolve_model_path(model, BUILTIN_MODEL)
        if self._model is not None and self._model.key[:3] == model_key(path)[:3]:
            return self._model.layout
        return read_layout(path)

    def check_family(self, model: str | None, mode: str, upscale_mode: str = "") -> None:
        """Refuse, before any weights are read, a model that cannot do the mode (loader.check_mode)."""
        check_mode(self.layout(model), mode, upscale_mode)

    # -- generation ---------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerateRequest,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerateResult:
        request.validate()
        t_start = time.perf_counter()
        if cancel is not None and cancel.is_set():
            return GenerateResult(images=[], request=request, seeds=[], cancelled=True)
        if request.branch is not None and request.branch.state is None:  # no kept state: the parent's k steps again
            spec = request.branch
            state = self.branch_state(spec.parent, spec.step).step_states[spec.step - 1].image(0)
            request = request.replace(branch=dataclasses.replace(spec, state=state))
        if request.mode == "upscale":
            request = request.replace(deep_cache=0)  # an upscale's tiles run without DeepCache: its PNG must not say so
            from . import upscale  # resize / upscaler model / tiled diffusion / the x4 latent upscaler

            with self._lock:
                return upscale.run(self, request, on_step, cancel, t_start)
        self.check_family(request.model, request.mode)  # from the json files: no weights read to refuse
        self.controls.notes = []
        if request.controls:  # a ControlNet of another family: refused before any weights are read
            layout = self.layout(request.model)
            check_control_family(tuple(request.controls), layout.arch, layout.path.stem, self.folders)
        if effective_steps(request) < 1:  # diffusers would run none and return no image (exit 0, nothing saved)
            raise RequestError(f"{request.steps} steps at denoising strength {request.strength:g} run no step: use "
                               "more steps or a higher strength")  # fmt: skip
        if request.mode == "txt2img" and request.hires.runs():
            from . import hires  # two passes: text to image, upscale, image to image

            with self._lock:
                return hires.run(self, request, on_step, cancel, t_start)
        with self._lock:
            model = self.load(request.model, request.prediction)
            t_loaded = time.perf_counter()
            seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
            width, height = self._size_for(request, model)
            used, seeds, var_note = variation.settle(request.replace(seed=seed, width=width, height=height), seed,
                                                     lambda: secrets.randbelow(MAX_SEED + 1))  # fmt: skip
            plan = inpaint.InpaintPlan.make(used, seed) if used.mode == "inpaint" else None
            extra = runaddons.prepare(model, used, self.folders)
            pipe, kwargs = self.pipeline_call(model, used, seeds, plan)
            scheduler = build_scheduler(model.scheduler_config, used.sampler, used.schedule, seed)
            pipe.scheduler = scheduler
            tracker = StepTracker(scheduler, used, model, on_step, cancel, time.perf_counter())
            tracker.generators, tracker.stop_after = kwargs.get("generator"), self._stop_after  # kept step states
            # After the LoRAs (turbo converts them); DeepCache needs the torch U-Net, so exact keeps it then.
            fast = speed.plan_speed(used.speed, self.device, model.dtype, torch_unet=used.deep_cache > 1,
                                    prepare_exact=used.prepare_exact)  # fmt: skip
            try:
                fast.apply(pipe, model, self.device, on_step, tracker.total, cancel, t_start)
            except Cancelled:  # while turbo prepared: no step starts
                tracker.restore()
                return self._result(used, seeds, model, tracker, [], cancelled=True, t=(t_start, t_loaded), plan=plan)
            used = used.replace(speed=fast.used)
            if cancel is not None and cancel.is_set():  # while loading or encoding: no step starts
                fast.restore()
                tracker.restore()
                return self._result(used, seeds, model, tracker, [], cancelled=True, t=(t_start, t_loaded), plan=plan)
            # DeepCache wraps the U-Net for this run only (the pipelines share it): off below 15 steps, or on a
            # U-Net that is not a torch one (a swapped-in OpenVINO module), each with a note.
            unet = pipe.unet if used.deep_cache > 1 else None  # looked at only when a run asks for DeepCache
            if used.controls and used.deep_cache > 1:  # ControlNet residuals enter the blocks DeepCache would skip
                cache, note = deep_cache_plan(None, 0, 0)[0], "Deep cache skipped: a ControlNet guides every U-Net block"
            else:
                cache, note = deep_cache_plan(unet, used.deep_cache, effective_steps(used))
            if note:
                log.info("%s", note)
                used = used.replace(deep_cache=0)  # the result and its metadata say what ran
                tracker.request = used
            branch_run = self._start_branch(used, pipe, scheduler, model, kwargs, tracker)
            if branch_run is not None:
                extra.update(branch.metadata(used.branch, used))
            try:
                with torch.inference_mode(), cache:
                    latents = pipe(**kwargs, callback_on_step_end=tracker.callback).images
            except Cancelled:
                return self._result(used, seeds, model, tracker, [], cancelled=True, t=(t_start, t_loaded), plan=plan)
            except EngineError:
                raise
            except (torch.cuda.OutOfMemoryError, MemoryError) as e:
                raise EngineError(self.out_of_memory()) from e
            except Exception as e:  # noqa: BLE001 - one readable line for the artist; the chain keeps the cause
                if is_out_of_memory(e):  # the CPU allocator's RuntimeError
                    raise EngineError(self.out_of_memory()) from e
                raise EngineError(f"Generation failed: {first_line(e)}") from e
            finally:
                tracker.restore()
                fast.restore()
                if branch_run is not None:
                    branch_run.restore()
            if cancel is not None and cancel.is_set():
                return self._result(used, seeds, model, tracker, [], cancelled=True, t=(t_start, t_loaded), plan=plan)
            t_sampled = time.perf_counter()
            if used.tiny_decode and model.tiny is not None:
                images = self.tiny_decode(model, latents)
                extra["Tiny decode"] = model.tiny.name  # our own key: the image is the tiny decoder's
            else:
                if used.tiny_decode:
                    log.warning("%s has no tiny decoder: full decode used", model.name)
                images = self.decode(model, latents, autocast=fast.decode_autocast)
            if plan is not None:
                images = [plan.paste(img) for img in images]
            res = self._result(used, seeds, model, tracker, images, cancelled=False, t=(t_start, t_loaded), plan=plan)
            t_decoded = time.perf_counter()
            timings = {**res.timings, "sample": t_sampled - t_loaded, "decode": t_decoded - t_sampled,
                       "total": time.perf_counter() - t_start}  # fmt: skip
            extra[speed.METADATA_KEY] = fast.used
            return dataclasses.replace(res, extra_params={**res.extra_params, **extra}, timings=timings,
                                       notice=fast.notice,
                                       notes=[n for n in (note, var_note) if n] + self.controls.notes)  # fmt: skip

    def _result(self, used, seeds, model, tracker, images, cancelled, t, plan=None) -> GenerateResult:
        stack = (lambda xs: np.stack(xs)) if tracker.latents else (lambda xs: None)
        return GenerateResult(
            images=images,
            request=used,
            seeds=seeds,
            cancelled=cancelled,
            latents=stack(tracker.latents),
            x0=stack(tracker.x0),
            model_name=model.name,
            model_hash=model.hash,
            timings={"load": t[1] - t[0], "preview": tracker.preview_s, "total": time.perf_counter() - t[0]},
            steps_done=len(tracker.latents),
            step_states=list(tracker.states),
            crop=plan.box if plan is not None and plan.cropped else None,
        )

    def _start_branch(self, used: GenerateRequest, pipe, scheduler, model: LoadedModel, kwargs: dict, tracker):
        """A branch (studio.core.branch): the hooks that continue the parent's state in this pipeline call, the
        parent's generators, and the parent's steps before k on the timeline. None for a plain run."""
        spec = used.branch
        if spec is None:
            return None
        from .branching import BranchRun
        if spec.before_latents is not None and spec.before_x0 is not None and len(spec.before_latents) == spec.step:
            tracker.latents, tracker.x0 = list(spec.before_latents), list(spec.before_x0)
            tracker.states = list(spec.before_states)
            if len(tracker.states) != spec.step:
                tracker.states = []
                tracker.generators = None  # a partial chain of states cannot be branched again
        else:
            tracker.offset = spec.step
        return BranchRun(spec, used, pipe, scheduler, model.scheduler_config, kwargs.get("generator"))

    def branch_state(self, parent: GenerateRequest, step: int) -> GenerateResult:
        """Re-run the parent's first `step` steps (its request as it ran: seed and size set) and stop there: the
        result's step_states, latents and x0 are those steps' (what a branch from `step` needs without a sidecar)."""
        self._stop_after = step
        try:
            result = self.generate(parent.replace(batch=1, preview="none"))
        finally:
            self._stop_after = None
        if len(result.step_states) < step:
            raise EngineError(f"The parent's first {step} steps could not be recomputed")
        return result

    def _size_for(self, request: GenerateRequest, model: LoadedModel) -> tuple[int, int]:
        """The working size: what the model runs at.

        txt2img: the request's width/height, else the model's native size. img2img: the request's, else
        the image's size less its remainder of 8. inpaint "only masked": the request's, else the model's
        native size (the crop is scaled to it). inpaint "whole": the request's, else the image's size
        rounded to the nearest multiple of the model's size multiple (the result is scaled back to the
        image's size, so any image size works). A size given in the request must be a multiple of the
        model's size multiple.
        """
        m = model.size_multiple
        if request.mode == "inpaint" and request.init_image is not None and not (request.width and request.height):
            if request.inpaint.area == "masked":
                nw, nh = model.native_size
                w, h = request.width or nw, request.height or nh
            else:
                ih, iw = request.init_image.shape[:2]
                w = request.width or max(m, int(round(iw / m)) * m)
                h = request.height or max(m, int(round(ih / m)) * m)
        elif request.width and request.height:
            w, h = request.width, request.height
        elif request.init_image is not None and request.mode != "txt2img":
            ih, iw = request.init_image.shape[:2]
            w, h = request.width or iw - iw % 8, request.height or ih - ih % 8
        else:
            nw, nh = model.native_size
            w, h = request.width or nw, request.height or nh
        if w % m or h % m:
            raise RequestError(f"{model.name} needs sizes that are multiples of {m}; got {w}x{h}")
        if w < 8 or h < 8:
            raise RequestError(f"The image is too small ({w}x{h}): use at least 8x8 pixels")
        return w, h

    def pipeline_call(
        self,
        model: LoadedModel,
        r: GenerateRequest,
        seeds: list[int],
        plan: inpaint.InpaintPlan | None = None,
        embeds: dict | None = None,
    ):
        """The pipeline for the request's mode and its call's arguments, the prompts already encoded with
        A1111's syntax (weights, BREAK, any length: studio.engine.conditioning). `embeds`: that encoding from an
        earlier call of the same run (the tiles of an upscale share one prompt)."""
        from .conditioning import encode

        if r.mode == "inpaint" and plan is None:
            plan = inpaint.InpaintPlan.make(r, seeds[0])
        pipe, kwargs = self._pipeline_args(model, r, seeds, plan)
        if r.controls:  # the mode's ControlNet pipeline (studio.engine.controlnet), the prompt encoded as without
            pipe, kwargs = self.controls.attach(model, r, pipe, kwargs, self.folders, plan)
        prompt, negative = kwargs.pop("prompt"), kwargs.pop("negative_prompt") or ""
        kwargs.pop("clip_skip", None)
        if embeds is None:
            prompt, negative = addons.prompt_with_embeddings(pipe, prompt), addons.prompt_with_embeddings(pipe, negative)
            try:
                embeds = encode(pipe, prompt, negative, clip_skip=r.clip_skip)
            except ValueError as e:  # a malformed <lora:...> weight
                raise RequestError(f"The prompt cannot be read: {first_line(e)}") from e
        kwargs.update(embeds)
        if r.mode == "txt2img" and not model.inpainting_unet and varies(r):  # A1111's variation seeds
            from .variation import first_noise

            _, subseeds = variation.image_seeds(seeds[0], len(seeds), r.subseed, r.subseed_strength)
            shape = (pipe.vae.config.latent_channels, r.height // pipe.vae_scale_factor,
                     r.width // pipe.vae_scale_factor)  # fmt: skip
            noise = first_noise(r, kwargs["generator"], seeds, subseeds, shape, kwargs["prompt_embeds"].dtype,
                                pipe.vae_scale_factor)  # fmt: skip
            kwargs["latents"] = noise.to(model.device)
        return pipe, kwargs

    def _pipeline_args(
        self, model: LoadedModel, r: GenerateRequest, seeds: list[int], plan: inpaint.InpaintPlan | None = None
    ):
        from PIL import Image

        if r.mode == "inpaint" and plan is None:
            plan = inpaint.InpaintPlan.make(r, seeds[0])

        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict = {
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt or None,
            "num_inference_steps": r.steps,
            "guidance_scale": r.cfg,
            "generator": generators,
            "num_images_per_prompt": r.batch,
            "output_type": "latent",
        }
        if r.clip_skip > 1:
            kwargs["clip_skip"] = r.clip_skip - 1
        if (eta := sampler_eta(r.sampler)) is not None:
            kwargs["eta"] = eta  # the pipeline hands it to scheduler.step (TCD's gamma)
        size = (r.width, r.height)

        def init_pil() -> Image.Image:
            img = Image.fromarray(np.ascontiguousarray(r.init_image)).convert("RGB")
            return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)

        if model.family == "upscale":
            raise RequestError(f"{model.name} is an x4 upscaler model: it only upscales an image (upscale method latent)")
        if model.inpainting_unet:
            # A 9-channel U-Net always gets a mask: all ones (with a blank masked image) for txt2img and img2img.
            full = Image.new("L", size, 255)
            if r.mode == "txt2img":
                kwargs.update(image=Image.new("RGB", size), mask_image=full, strength=1.0)
            elif r.mode == "img2img":
                kwargs.update(image=init_pil(), mask_image=full, strength=r.strength)
            else:
                kwargs.update(image=plan.image_pil(), mask_image=plan.mask_pil(), strength=r.strength)
            kwargs.update(width=r.width, height=r.height)
            return model.pipe("inpaint"), kwargs
        if r.mode == "txt2img":
            kwargs.update(width=r.width, height=r.height)
            return model.pipe("txt2img"), kwargs
        if r.mode == "img2img":
            kwargs.update(image=init_pil(), strength=r.strength)
            return model.pipe("img2img"), kwargs
        # A 4-channel U-Net inpaints through the same pipeline: it re-imposes the known region, noised to
        # the current level, at every step.
        kwargs.update(
            image=plan.image_pil(), mask_image=plan.mask_pil(), strength=r.strength, width=r.width, height=r.height
        )
        return model.pipe("inpaint"), kwargs

    # -- decoding and previews ----------------------------------------------------------------------
    def decode(self, model: LoadedModel, latents: torch.Tensor, autocast: torch.dtype | None = None) -> list[np.ndarray]:
        """Decode a batch one image at a time (bounded memory), upcasting an fp16 VAE once for all. `autocast`: decode
        in that precision (fast mode's bf16 on a CPU), the pixels' arithmetic in fp32."""
        vae = model.vae
        upcast = self.dtype == torch.float16 and vae.config.get("force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        images = []
        with torch.inference_mode():
            if upcast:
                vae.to(torch.float32)
            try:
                for i in range(latents.shape[0]):
                    lat = latents[i : i + 1].to(model.device, dtype)
                    if mean is not None and std is not None:
                        mean_t = torch.tensor(mean, device=lat.device, dtype=dtype).view(1, -1, 1, 1)
                        std_t = torch.tensor(std, device=lat.device, dtype=dtype).view(1, -1, 1, 1)
                        lat = lat * std_t / vae.config.scaling_factor + mean_t
                    else:
                        lat = lat / vae.config.scaling_factor
                    pixels = lat.shape[-1] * lat.shape[-2] * model.vae_scale_factor**2
                    with torch.autocast(model.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                        if pixels > TILED_DECODE_PIXELS and hasattr(vae, "tiled_decode"):
                            image = vae.tiled_decode(lat, return_dict=False)[0]  # bounded memory for large images
                        else:
                            image = vae.decode(lat, return_dict=False)[0]
                    image = image.float() if autocast is not None else image
                    # Same arithmetic as the pipelines' postprocess, so images equal plain diffusers'.
                    image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
                    images.append((image[0] * 255).round().astype(np.uint8))
            finally:
                if upcast:
                    vae.to(self.dtype)
        return images

    @staticmethod
    def tiny_decode(model: LoadedModel, latents: torch.Tensor) -> list[np.ndarray]:
        """The final images by the model's tiny decoder, one at a time (as ``decode``)."""
        return [model.tiny.preview(latents[i].detach().float().cpu().numpy()) for i in range(latents.shape[0])]

    def decode_latent(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        """Full VAE decode of one kept latent (C, h, w) -> HxWx3 uint8: 'decode this step'."""
        m = self.load(model)
        t = torch.from_numpy(np.asarray(latent, dtype=np.float32))[None]
        with self._lock:
            return self.decode(m, t)[0]

    def latent_preview(self, model: str | None, latent: np.ndarray) -> np.ndarray:
        """The preview of one (C, h, w) latent for the step timeline: the tiny decoder's true colours where one is
        loaded and the picture is small (every step of a run is previewed after it), else the linear map."""
        m = self.load(model)
        lat = np.asarray(latent)
        if m.tiny is not None and lat.shape[-1] * lat.shape[-2] * m.tiny.scale**2 <= TIMELINE_TINY_PIXELS:
            return m.tiny.preview(lat)
        return latent_to_rgb(lat, *m.latent_rgb)


__all__ = ["Engine", "pick_device", "to_uint8"]
