"""The studio's requests as ComfyUI API-format graphs of core nodes, and checks of a graph against `/object_info`.

A graph is ``{"<node id>": {"class_type": C, "inputs": {name: literal or [source node id, output index]}}}``.
Built here from the protocol's interface facts (node, input and output names, as the server's own `/object_info`
describes them); none of ComfyUI's code or example workflows is used (ComfyUI is GPL-3.0).

Pure Python: no torch, no Qt, no network. `ObjectInfo` wraps a fetched `/object_info`; `build_graph` turns a
`GenerateRequest` into a graph; `validate` checks a graph the way the server's own validation would refuse it (so
a fault is named before anything is sent); `describe_errors` turns a refused job's 400 answer into one line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.backends.base import UnsupportedError
from studio.core.errors import RequestError
from studio.core.prompts import extract_loras
from studio.core.requests import LATENT_UPSCALERS, hires_schedule_steps
from studio.core.samplers import SAMPLER_NAMES, SCHEDULE_NAMES, resolve_sampler, resolve_schedule

if TYPE_CHECKING:
    from studio.core.requests import GenerateRequest

__all__ = [
    "GraphError",
    "MODE_NODES",
    "OUTPUT_NODES",
    "ObjectInfo",
    "REQUIRED_NODES",
    "SAMPLERS",
    "SCHEDULES",
    "SAVE_PREFIX",
    "build_graph",
    "comfy_names",
    "describe_errors",
    "find_nodes",
    "output_node",
    "pick",
    "studio_names",
    "studio_samplers",
    "studio_schedules",
    "validate",
]

# Our A1111-style names -> ComfyUI's `sampler_name` (by k-diffusion function). PLMS has no core equivalent.
SAMPLERS: dict[str, str] = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "LMS": "lms",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ SDE": "dpmpp_sde",
    "UniPC": "uni_pc",
    "DDIM": "ddim",
    "DDPM": "ddpm",
    "LCM": "lcm",
}
SCHEDULES: dict[str, str] = {
    "Normal": "normal",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
}

# The core classes each mode's graphs use (LoRAs, clip skip and a VAE override included). SaveImageWebsocket is
# not among them: it ships in the default custom_nodes/ of an install, not in the core; without it, use "save".
_MODEL = ("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "LoraLoader", "CLIPSetLastLayer",
          "VAELoader", "SaveImage")  # fmt: skip
# Below strength 1, KSamplerAdvanced runs the last int(steps * strength) of the full schedule, as diffusers does.
MODE_NODES: dict[str, tuple[str, ...]] = {
    "txt2img": (*_MODEL, "EmptyLatentImage"),
    "img2img": (*_MODEL, "KSamplerAdvanced", "LoadImage", "VAEEncode", "ImageScale"),
    "inpaint": (*_MODEL, "KSamplerAdvanced", "LoadImage", "LoadImageMask", "VAEEncode", "SetLatentNoiseMask",
                "InpaintModelConditioning"),
    "upscale": (*_MODEL, "KSamplerAdvanced", "LoadImage", "VAEEncode", "ImageScale", "UpscaleModelLoader",
                "ImageUpscaleWithModel"),
}
REQUIRED_NODES: tuple[str, ...] = tuple(dict.fromkeys(n for nodes in MODE_NODES.values() for n in nodes))
OUTPUT_NODES: dict[str, str] = {"websocket": "SaveImageWebsocket", "save": "SaveImage"}
SAVE_PREFIX = "latent-studio"

_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".onnx", ".pkl")
_PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN")
_NOT_VAES = ("pixel_space",)  # VAELoader's entry for pixel-space models: no VAE file, no latents to decode


class GraphError(RequestError):
    """A graph the server would refuse (one line, naming the node and the input)."""


def _listing(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}... ({len(names)} in all)"


# -- /object_info -----------------------------------------------------------------------------------------------
class ObjectInfo:
    """The server's `GET /object_info` answer: which node classes it has, their inputs, outputs and combos.

    An input spec is ``[TYPE]`` or ``[TYPE, {options}]``; a combo is ``[[choices...], {...}]`` (older nodes) or
    ``["COMBO", {"options": [choices...]}]`` (newer nodes). Both read the same here.
    """

    def __init__(self, data: Mapping[str, Any]):
        self.data: dict[str, Any] = dict(data)

    def __contains__(self, cls: str) -> bool:
        return self.has(cls)

    def has(self, cls: str) -> bool:
        return isinstance(self.data.get(cls), Mapping)

    def missing(self, nodes: Iterable[str]) -> list[str]:
        """The classes of `nodes` the server lacks, in their order, each once."""
        return [n for n in dict.fromkeys(nodes) if not self.has(n)]

    def inputs(self, cls: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(required, optional) input specs of a class; KeyError for a class the server lacks."""
        if not self.has(cls):
            raise KeyError(f"The ComfyUI server has no node {cls}")
        spec = self.data[cls].get("input") or {}
        return dict(spec.get("required") or {}), dict(spec.get("optional") or {})

    def outputs(self, cls: str) -> list[str]:
        """The output types of a class, by index ("MODEL", "CLIP"...); KeyError for a class the server lacks."""
        if not self.has(cls):
            raise KeyError(f"The ComfyUI server has no node {cls}")
        return list(self.data[cls].get("output") or [])

    def is_output(self, cls: str) -> bool:
        return self.has(cls) and bool(self.data[cls].get("output_node"))

    def spec(self, cls: str, name: str) -> tuple[Any, dict[str, Any]] | None:
        """(type, options) of one input (required or optional); type is a list of choices for an old-style combo.
        None when the class or the input is unknown."""
        if not self.has(cls):
            return None
        required, optional = self.inputs(cls)
        raw = required.get(name, optional.get(name))
        if not isinstance(raw, (list, tuple)) or not raw:
            return None
        opts = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
        return raw[0], dict(opts)

    def combo(self, cls: str, name: str) -> list[str]:
        """The choices of a combo input, either format; [] when the class or input is unknown or not a combo."""
        spec = self.spec(cls, name)
        if spec is None:
            return []
        kind, opts = spec
        if isinstance(kind, (list, tuple)):
            return list(kind)
        if kind == "COMBO":
            return list(opts.get("options") or [])
        return []

    def is_combo(self, cls: str, name: str) -> bool:
        spec = self.spec(cls, name)
        return spec is not None and (isinstance(spec[0], (list, tuple)) or spec[0] == "COMBO")

    def default(self, cls: str, name: str) -> Any:
        """The input's declared default; for a combo without one, its first choice (as ComfyUI's own frontend
        fills it); None when there is none (a link input, an unknown one)."""
        spec = self.spec(cls, name)
        if spec is None:
            return None
        _kind, opts = spec
        if "default" in opts:
            return opts["default"]
        choices = self.combo(cls, name)
        return choices[0] if choices else None

    @property
    def checkpoints(self) -> list[str]:
        return self.combo("CheckpointLoaderSimple", "ckpt_name")

    @property
    def vaes(self) -> list[str]:
        return [v for v in self.combo("VAELoader", "vae_name") if v not in _NOT_VAES]

    @property
    def loras(self) -> list[str]:
        return self.combo("LoraLoader", "lora_name")

    @property
    def upscalers(self) -> list[str]:
        return self.combo("UpscaleModelLoader", "model_name")

    @property
    def controlnets(self) -> list[str]:
        return self.combo("ControlNetLoader", "control_net_name")

    @property
    def sampler_names(self) -> list[str]:
        return self.combo("KSampler", "sampler_name")

    @property
    def scheduler_names(self) -> list[str]:
        return self.combo("KSampler", "scheduler")


# -- names ------------------------------------------------------------------------------------------------------
def studio_samplers(info: ObjectInfo) -> tuple[str, ...]:
    """Our sampler names the server can run, in our order."""
    have = set(info.sampler_names)
    return tuple(n for n in SAMPLER_NAMES if SAMPLERS.get(n) in have)


def studio_schedules(info: ObjectInfo) -> tuple[str, ...]:
    """Our schedule names the server can run, in our order."""
    have = set(info.scheduler_names)
    return tuple(n for n in SCHEDULE_NAMES if SCHEDULES.get(n) in have)


def comfy_names(sampler: str, schedule: str, info: ObjectInfo) -> tuple[str, str]:
    """(sampler_name, scheduler) for our sampler and schedule names (case-insensitive, A1111 aliases too).

    A name that is already one of the server's own (``dpmpp_2m_sde_gpu``) passes as it is. RequestError, one
    line, for a name the server cannot run.
    """
    have_samplers, have_schedules = info.sampler_names, info.scheduler_names
    if sampler in have_samplers:
        comfy_sampler = sampler
    else:
        ours = resolve_sampler(sampler).name  # RequestError for a name nobody knows
        comfy_sampler = SAMPLERS.get(ours, "")
        if comfy_sampler not in have_samplers:
            raise RequestError(
                f"The ComfyUI server has no sampler {ours} (it has: {', '.join(studio_samplers(info)) or 'none'})"
            )
    if schedule in have_schedules:
        comfy_schedule = schedule
    else:
        ours = resolve_schedule(schedule)
        comfy_schedule = SCHEDULES.get(ours, "")
        if comfy_schedule not in have_schedules:
            raise RequestError(
                f"The ComfyUI server has no {ours} schedule (it has: {', '.join(studio_schedules(info)) or 'none'})"
            )
    return comfy_sampler, comfy_schedule


def studio_names(sampler: str, schedule: str) -> tuple[str, str]:
    """Our (A1111's) names for a request's sampler and schedule, for the metadata: ComfyUI's own names map back
    ("dpmpp_2m" -> "DPM++ 2M", its "_gpu" noise variants to theirs); a name with no A1111 twin is kept as given."""
    by_comfy = {v: k for k, v in SAMPLERS.items()}
    by_schedule = {v: k for k, v in SCHEDULES.items()}
    plain = sampler.removesuffix("_gpu")
    if plain in by_comfy:
        ours = by_comfy[plain]
    else:
        try:
            ours = resolve_sampler(sampler).name
        except ValueError:
            ours = sampler
    if schedule in by_schedule:
        return ours, by_schedule[schedule]
    try:
        return ours, resolve_schedule(schedule)
    except ValueError:
        return ours, schedule


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    low = base.lower()
    for ext in _MODEL_EXTENSIONS:
        if low.endswith(ext):
            return base[: -len(ext)]
    return base


def _strip_ext(name: str) -> str:
    low = name.lower()
    for ext in _MODEL_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def pick(names: list[str], wanted: str, what: str) -> str:
    """The server's file name for what the user asked: exactly, else by its path within the folder (any slash,
    with or without the extension, case-insensitively), else by its stem ("ink" -> "styles/ink.safetensors").

    `wanted` may be a local path ("C:/models/ink.safetensors"): its file name is what is matched. RequestError
    naming `what` and some of the names the server has when nothing, or more than one file, matches.
    """
    names = list(names)
    if wanted in names:
        return wanted
    want = wanted.strip().replace("\\", "/")

    def norm(n: str) -> str:
        return _strip_ext(n.replace("\\", "/")).lower()

    # The same relative path ("styles/ink", "styles\\ink.safetensors"), then the same stem ("ink").
    for key, of in ((norm(want), norm), (_stem(want).lower(), lambda n: _stem(n).lower())):
        found = [n for n in names if of(n) == key]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            exact = [n for n in found if _stem(n) == _stem(want)]  # the case as written breaks a tie
            if len(exact) == 1:
                return exact[0]
            raise RequestError(f"The {what} {wanted!r} matches several files on the ComfyUI server: "
                               f"{_listing(found)}; name one with its folder")  # fmt: skip
    raise RequestError(f"The ComfyUI server has no {what} {wanted!r} (it has: {_listing(names)})")


# -- building graphs --------------------------------------------------------------------------------------------
Link = list  # [node id, output index]


class _Graph:
    """Nodes added in order with ids "1", "2"...; every required input filled: given, else the server's default."""

    def __init__(self, info: ObjectInfo):
        self.info = info
        self.nodes: dict[str, dict[str, Any]] = {}

    def need(self, cls: str, why: str = "") -> None:
        if not self.info.has(cls):
            need = f" (needed for {why})" if why else ""
            raise RequestError(f"The ComfyUI server has no node {cls}{need}: update ComfyUI or pick another mode")

    def add(self, cls: str, why: str = "", **inputs: Any) -> str:
        self.need(cls, why)
        required, _optional = self.info.inputs(cls)
        filled: dict[str, Any] = {}
        for name in required:
            if name in inputs:
                filled[name] = inputs[name]
                continue
            value = self.info.default(cls, name)
            if value is None:
                raise ValueError(f"{cls}: no value and no default for its required input {name!r}")
            filled[name] = value
        filled.update(inputs)  # optional inputs given by the caller
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": cls, "inputs": filled}
        return node_id


def find_nodes(graph: Mapping[str, Any], class_type: str) -> list[str]:
    """The ids of a graph's nodes of one class, in id order."""
    ids = [i for i, n in graph.items() if isinstance(n, Mapping) and n.get("class_type") == class_type]
    return sorted(ids, key=lambda i: (len(i), i))


def output_node(graph: Mapping[str, Any]) -> str:
    """The id of the graph's image output node (SaveImageWebsocket or SaveImage); ValueError if none."""
    for cls in OUTPUT_NODES.values():
        ids = find_nodes(graph, cls)
        if ids:
            return ids[-1]
    raise ValueError("The graph has no image output node")


def _prompts(request: GenerateRequest) -> tuple[str, str, list[tuple[str, float]]]:
    """Both prompts without their extra-network tags, and the LoRAs to apply: the prompt's tags, the negative's
    (stripped there too, as A1111 and the local engine do), then the request's list."""
    try:
        positive, tags = extract_loras(request.prompt or "")
        negative, negative_tags = extract_loras(request.negative_prompt or "")
        # A removed tag leaves its spaces behind: "a fox  easyneg" -> "a fox easyneg".
        positive, negative = (re.sub(r"[ \t]{2,}", " ", t).strip() for t in (positive, negative))
    except ValueError as e:
        raise RequestError(f"The prompt cannot be read: {e}") from e
    loras = [*tags, *negative_tags, *((n, float(w)) for n, w in request.loras)]
    return positive.strip(), negative.strip(), loras


def _round8(v: int) -> int:
    return max(16, -(-int(v) // 8) * 8)


def _size_of(request: GenerateRequest) -> tuple[int, int] | None:
    image = request.init_image
    if image is None:
        return None
    h, w = image.shape[:2]
    return int(w), int(h)


@dataclass(frozen=True)
class _Job:
    """One build_graph call's arguments, checked: what every mode's builder reads."""

    request: GenerateRequest
    checkpoint: str
    images: dict[str, str]
    inpaint_model: bool
    output: str
    seed: int | None


@dataclass(frozen=True)
class _Model:
    """The model's three outputs after its add-ons (a VAE override, LoRAs, clip skip)."""

    model: Link
    clip: Link
    vae: Link


@dataclass(frozen=True)
class _Sampling:
    """The KSampler's settings, resolved against the server before any node is added."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str


# The uploaded images each mode reads.
_MODE_IMAGES: dict[str, tuple[str, ...]] = {"txt2img": (), "img2img": ("init",), "inpaint": ("init", "mask"),
                                            "upscale": ("init",)}  # fmt: skip


def _diffuses(request: GenerateRequest) -> bool:
    return request.mode != "upscale" or request.upscale.method == "diffusion"


def _check_arguments(request: GenerateRequest, images: dict[str, str], output: str, seed: int | None) -> None:
    mode = request.mode
    if output not in OUTPUT_NODES:
        raise ValueError(f"Unknown output {output!r}; use websocket or save")
    if mode == "upscale" and request.upscale.method == "latent":
        raise UnsupportedError("The latent upscale is not available on a ComfyUI server: the x4 latent upscaler "
                               "runs on the local engine only")  # fmt: skip
    if mode not in MODE_NODES:
        raise RequestError(f"Unknown mode {mode!r}")
    if seed is None and _diffuses(request):
        raise ValueError("build_graph needs a seed: the request's or the seed argument")
    needed = _MODE_IMAGES[mode] + (tuple(f"control{i}" for i in range(len(request.controls)))
                                   if _diffuses(request) else ())  # fmt: skip
    for key in needed:
        if not images.get(key):
            raise ValueError(f"build_graph needs images[{key!r}] (an uploaded image's name) for {mode}")


# -- the shared steps: each adds its nodes in the order the graph's ids follow ----------------------------------
def _sampling(g: _Graph, job: _Job) -> _Sampling:
    r = job.request
    sampler_name, scheduler = comfy_names(r.sampler, r.schedule, g.info)
    assert job.seed is not None  # _check_arguments refused a diffusing graph without one
    return _Sampling(int(job.seed), int(r.steps), float(r.cfg), sampler_name, scheduler)


def _load_checkpoint(g: _Graph, checkpoint: str, vae_name: str | None) -> _Model:
    g.need("CheckpointLoaderSimple")
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=pick(g.info.checkpoints, checkpoint, "model"))
    vae: Link = [ckpt, 2]
    if vae_name:
        g.need("VAELoader", "a VAE override")  # before the file is picked: a missing node is said first
        vae = [g.add("VAELoader", "a VAE override", vae_name=pick(g.info.vaes, vae_name, "VAE")), 0]
    return _Model([ckpt, 0], [ckpt, 1], vae)


def _apply_loras(g: _Graph, m: _Model, loras: list[tuple[str, float]]) -> _Model:
    model, clip = m.model, m.clip
    for name, weight in loras:
        g.need("LoraLoader", "LoRAs")
        lora = g.add("LoraLoader", "LoRAs", model=model, clip=clip, lora_name=pick(g.info.loras, name, "LoRA"),
                     strength_model=float(weight), strength_clip=float(weight))  # fmt: skip
        model, clip = [lora, 0], [lora, 1]
    return _Model(model, clip, m.vae)


def _clip_skip(g: _Graph, m: _Model, clip_skip: int) -> _Model:
    if clip_skip <= 1:
        return m
    clip = [g.add("CLIPSetLastLayer", "clip skip", clip=m.clip, stop_at_clip_layer=-int(clip_skip)), 0]
    return _Model(m.model, clip, m.vae)


def _model_and_prompts(g: _Graph, job: _Job) -> tuple[_Model, Link, Link]:
    """The model with its add-ons, and the positive and negative conditioning (with the controls applied)."""
    positive_text, negative_text, loras = _prompts(job.request)  # an unreadable prompt: before the model
    m = _load_checkpoint(g, job.checkpoint, job.request.vae)
    m = _clip_skip(g, _apply_loras(g, m, loras), job.request.clip_skip)
    positive: Link = [g.add("CLIPTextEncode", text=positive_text, clip=m.clip), 0]
    negative: Link = [g.add("CLIPTextEncode", text=negative_text, clip=m.clip), 0]
    positive, negative = _apply_controls(g, job, positive, negative)
    return m, positive, negative


def _apply_controls(g: _Graph, job: _Job, positive: Link, negative: Link) -> tuple[Link, Link]:
    """ControlNetLoader + ControlNetApplyAdvanced per control (core nodes), chained: each one's conditioning feeds
    the next, as ComfyUI chains several ControlNets. The control image is uploaded as "control<i>" (as the init
    image is); ComfyUI scales it to the latent itself. Weight = strength, Guidance Start / End = start_percent /
    end_percent. A1111's other control modes have no core node (soft injection is a custom node's): refused."""
    for i, c in enumerate(job.request.controls):
        if c.mode != "Balanced":
            raise UnsupportedError(f"Control {i}: the control mode {c.mode!r} is not available on a ComfyUI server "
                                   "(core nodes apply a ControlNet balanced); use Balanced, or the local engine")
        g.need("ControlNetLoader", "ControlNets")
        name = pick(g.info.controlnets, c.model, "ControlNet")
        loader = g.add("ControlNetLoader", "ControlNets", control_net_name=name)
        image = _load_image(g, job.images[f"control{i}"])
        apply = g.add("ControlNetApplyAdvanced", "ControlNets", positive=positive, negative=negative,
                      control_net=[loader, 0], image=image, strength=float(c.weight), start_percent=float(c.start),
                      end_percent=float(c.end))  # fmt: skip
        positive, negative = [apply, 0], [apply, 1]
    return positive, negative


def _load_image(g: _Graph, name: str) -> Link:
    return [g.add("LoadImage", image=name), 0]


def _scale(g: _Graph, image: Link, size: tuple[int, int]) -> Link:
    w, h = size
    return [g.add("ImageScale", image=image, upscale_method="lanczos", width=int(w), height=int(h), crop="disabled"), 0]


def _upscale_with_model(g: _Graph, image: Link, upscaler: str | None) -> Link:
    if not upscaler:
        raise RequestError("The model upscale needs an upscaler model: pick one, or use resize or diffusion")
    g.need("UpscaleModelLoader", "upscaler models")
    name = pick(g.info.upscalers, upscaler, "upscaler model")
    loader = g.add("UpscaleModelLoader", "upscaler models", model_name=name)
    return [g.add("ImageUpscaleWithModel", upscale_model=[loader, 0], image=image), 0]


def _encode(g: _Graph, image: Link, vae: Link) -> Link:
    return [g.add("VAEEncode", pixels=image, vae=vae), 0]


def _sample_and_decode(
    g: _Graph, s: _Sampling, m: _Model, positive: Link, negative: Link, latent: Link, denoise: float
) -> Link:
    return [g.add("VAEDecode", samples=_sample(g, s, m, positive, negative, latent, denoise), vae=m.vae), 0]


def _sample(g: _Graph, s: _Sampling, m: _Model, positive: Link, negative: Link, latent: Link, denoise: float) -> Link:
    """At strength 1: KSampler. Below: the same work as the local engine (diffusers' get_timesteps), the last
    int(steps * strength) steps of the full schedule; KSampler's denoise would run all `steps` over a shorter one."""
    if denoise >= 1.0:
        samples = g.add("KSampler", model=m.model, positive=positive, negative=negative, latent_image=latent,
                        seed=s.seed, steps=s.steps, cfg=s.cfg, sampler_name=s.sampler_name, scheduler=s.scheduler,
                        denoise=1.0)  # fmt: skip
    else:
        run = min(int(s.steps * denoise), s.steps)
        if run < 1:
            raise RequestError(f"{s.steps} steps at denoising strength {denoise:g} run no step: use more steps or a "
                               "higher strength")  # fmt: skip
        samples = g.add("KSamplerAdvanced", "img2img", model=m.model, positive=positive, negative=negative,
                        latent_image=latent, add_noise="enable", noise_seed=s.seed, steps=s.steps, cfg=s.cfg,
                        sampler_name=s.sampler_name, scheduler=s.scheduler, start_at_step=s.steps - run,
                        end_at_step=10000, return_with_leftover_noise="disable")  # fmt: skip
    return [samples, 0]


def _save(g: _Graph, image: Link, output: str) -> dict[str, dict[str, Any]]:
    if output == "save":
        g.add("SaveImage", images=image, filename_prefix=SAVE_PREFIX)
    else:
        g.add("SaveImageWebsocket", images=image)
    return g.nodes


# -- one graph per mode -----------------------------------------------------------------------------------------
def _txt2img(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    r, s = job.request, _sampling(g, job)
    m, positive, negative = _model_and_prompts(g, job)
    # No size: the node's default (the backend fills in the model's native size when it knows it).
    width = int(r.width or g.info.default("EmptyLatentImage", "width") or 512)
    height = int(r.height or g.info.default("EmptyLatentImage", "height") or 512)
    latent: Link = [g.add("EmptyLatentImage", width=width, height=height, batch_size=int(r.batch)), 0]
    if r.branch is not None:
        return _save(g, _branch(g, job, s, m, positive, negative, latent), job.output)
    if r.mode == "txt2img" and r.hires.runs():
        return _save(g, _hires(g, job, s, m, positive, negative, latent, (width, height)), job.output)
    return _save(g, _sample_and_decode(g, s, m, positive, negative, latent, 1.0), job.output)


def why_no_remote_branch(request: GenerateRequest) -> str:
    """Why a branch (studio.core.branch) cannot run on a ComfyUI server as asked; "" when it can."""
    spec = request.branch
    if spec is None:
        return ""
    p = spec.parent
    if (request.schedule, request.steps) != (p.schedule, p.steps):
        return ("On a ComfyUI server a branch keeps the parent's schedule and step count: KSamplerAdvanced would "
                "resume at another noise level than the kept step's (use the local engine for that)")  # fmt: skip
    return ""


def _branch(g: _Graph, job: _Job, s: _Sampling, m: _Model, positive: Link, negative: Link, latent: Link) -> Link:
    """A branch on the server (it keeps no latents between prompts): the parent's first k steps again, returned with
    their leftover noise (KSamplerAdvanced 0 -> k), then the branch's steps k -> n with no noise added."""
    r = job.request
    spec = r.branch
    assert spec is not None
    why = why_no_remote_branch(r)
    if why:
        raise UnsupportedError(why)
    parent = spec.parent
    parent_job = dataclasses.replace(job, request=parent, seed=parent.seed)
    ps = _sampling(g, parent_job)
    pm, pp, pn = _model_and_prompts(g, parent_job) if _prompts(parent) != _prompts(r) or parent.vae != r.vae or \
        parent.clip_skip != r.clip_skip else (m, positive, negative)  # fmt: skip
    first = g.add("KSamplerAdvanced", "branching", model=pm.model, positive=pp, negative=pn, latent_image=latent,
                  add_noise="enable", noise_seed=ps.seed, steps=ps.steps, cfg=ps.cfg, sampler_name=ps.sampler_name,
                  scheduler=ps.scheduler, start_at_step=0, end_at_step=spec.step,
                  return_with_leftover_noise="enable")  # fmt: skip
    rest = g.add("KSamplerAdvanced", "branching", model=m.model, positive=positive, negative=negative,
                 latent_image=[first, 0], add_noise="disable", noise_seed=s.seed, steps=s.steps, cfg=s.cfg,
                 sampler_name=s.sampler_name, scheduler=s.scheduler, start_at_step=spec.step, end_at_step=10000,
                 return_with_leftover_noise="disable")  # fmt: skip
    return [g.add("VAEDecode", samples=[rest, 0], vae=m.vae), 0]


# A1111's latent upscalers -> LatentUpscale's upscale_method (ComfyUI has no plain "nearest" and no antialias).
_LATENT_METHODS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact",
                   "nearest-exact": "nearest-exact"}  # fmt: skip


def _hires(g: _Graph, job: _Job, s: _Sampling, m: _Model, positive: Link, negative: Link, latent: Link,
           size: tuple[int, int]) -> Link:  # fmt: skip
    """The hires fix as the local engine runs it: the first pass, LatentUpscale (latent) or decode + upscaler
    model / Lanczos + encode, then the second pass: the last hires steps of a stretched schedule at the strength."""
    h = job.request.hires
    big = h.size(*size)
    first = _sample(g, s, m, positive, negative, latent, 1.0)
    if h.is_latent():
        method = _LATENT_METHODS[LATENT_UPSCALERS[h.upscaler][0]]
        start: Link = [g.add("LatentUpscale", "the latent hires fix", samples=first, upscale_method=method,
                             width=big[0], height=big[1], crop="disabled"), 0]  # fmt: skip
    else:
        image: Link = [g.add("VAEDecode", samples=first, vae=m.vae), 0]
        if h.upscaler != "Lanczos":
            image = _upscale_with_model(g, image, h.upscaler)
        start = _encode(g, _scale(g, image, big), m.vae)
    steps = hires_schedule_steps(h.steps or s.steps, h.strength)
    second = dataclasses.replace(s, steps=steps)
    return _sample_and_decode(g, second, m, positive, negative, start, float(h.strength))


def _img2img(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    r, s = job.request, _sampling(g, job)
    m, positive, negative = _model_and_prompts(g, job)
    image = _load_image(g, job.images["init"])
    if r.width and r.height and _size_of(r) != (r.width, r.height):
        image = _scale(g, image, (r.width, r.height))  # as the local engine: the init image resized
    latent = _encode(g, image, m.vae)
    return _save(g, _sample_and_decode(g, s, m, positive, negative, latent, float(r.strength)), job.output)


def _inpaint(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    """The studio crops, fills and composites itself: the graph inpaints the image it is given, at its size."""
    r, s = job.request, _sampling(g, job)
    m, positive, negative = _model_and_prompts(g, job)
    image = _load_image(g, job.images["init"])
    mask: Link = [g.add("LoadImageMask", image=job.images["mask"], channel="red"), 0]
    if job.inpaint_model:  # a 9-channel U-Net gets the masked image and the mask as its extra input channels
        cond = g.add("InpaintModelConditioning", "inpainting models", positive=positive, negative=negative,
                     vae=m.vae, pixels=image, mask=mask, noise_mask=True)  # fmt: skip
        positive, negative, latent = [cond, 0], [cond, 1], [cond, 2]
    else:  # a 4-channel one: the known area re-imposed at every step
        latent = [g.add("SetLatentNoiseMask", samples=_encode(g, image, m.vae), mask=mask), 0]
    return _save(g, _sample_and_decode(g, s, m, positive, negative, latent, float(r.strength)), job.output)


# The server upscales the whole image: no tiling there (`request.upscale.tile` is the local engine's).
def _upscale_pixels(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    """Resize (Lanczos) or an upscaler model, then the exact size: no diffusion, no checkpoint."""
    r = job.request
    target = r.upscale_size()
    image = _load_image(g, job.images["init"])
    if r.upscale.method == "model":
        image = _upscale_with_model(g, image, r.upscale.upscaler)
    return _save(g, _scale(g, image, target), job.output)


def _upscale_diffusion(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    """An upscaler model (or Lanczos) to the size, then img2img at the request's strength. One piece, no tiles:
    `keep_composition` (the local engine's per-tile detail transfer) changes nothing here."""
    r, s = job.request, _sampling(g, job)
    target = r.upscale_size()
    image = _load_image(g, job.images["init"])
    if r.upscale.upscaler:
        image = _upscale_with_model(g, image, r.upscale.upscaler)
    # Diffusion works at multiples of 8 (VAEEncode would crop the rest away): back to the exact size after.
    work = (_round8(target[0]), _round8(target[1]))
    upscaled = _scale(g, image, work)
    m, positive, negative = _model_and_prompts(g, job)
    decoded = _sample_and_decode(g, s, m, positive, negative, _encode(g, upscaled, m.vae), float(r.strength))
    if work != target:
        decoded = _scale(g, decoded, target)
    return _save(g, decoded, job.output)


_UPSCALES: dict[str, Callable[[_Graph, _Job], dict[str, dict[str, Any]]]] = {
    "resize": _upscale_pixels,
    "model": _upscale_pixels,
    "diffusion": _upscale_diffusion,
}


def _upscale(g: _Graph, job: _Job) -> dict[str, dict[str, Any]]:
    how = job.request.upscale.method
    if how not in _UPSCALES:
        raise RequestError(f"Unknown upscale mode {how!r}; use one of {', '.join(_UPSCALES)}")
    return _UPSCALES[how](g, job)


_MODES: dict[str, Callable[[_Graph, _Job], dict[str, dict[str, Any]]]] = {
    "txt2img": _txt2img,
    "img2img": _img2img,
    "inpaint": _inpaint,
    "upscale": _upscale,
}


def build_graph(
    request: GenerateRequest,
    info: ObjectInfo,
    *,
    checkpoint: str,
    images: dict[str, str] | None = None,
    inpaint_model: bool = False,
    output: str = "websocket",
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """An API-format graph of core nodes for one request.

    `checkpoint`: the model (resolved with `pick` against the server's checkpoints). `images`: the names the
    server gave uploaded images: "init" (img2img, inpaint, upscale) and "mask" (inpaint: a grayscale PNG, white
    = repaint). `inpaint_model`: the checkpoint has a 9-channel inpainting U-Net. `output`: "websocket"
    (SaveImageWebsocket: a binary PNG frame) or "save" (SaveImage, fetched through /history and /view). `seed`
    replaces the request's (one of them is needed). txt2img makes `request.batch` images with one seed (ComfyUI's
    batch noise); the other modes make one image.

    Raises RequestError (a name the server lacks, an unreadable prompt), UnsupportedError (the latent upscaler),
    ValueError (a missing seed or image name). Check the result with `validate` before sending it.
    """
    images = dict(images or {})
    seed = request.seed if seed is None else seed
    _check_arguments(request, images, output, seed)
    g = _Graph(info)
    g.need(OUTPUT_NODES[output], "images over the WebSocket; use the save output" if output == "websocket" else "")
    job = _Job(request, checkpoint, images, inpaint_model, output, seed)
    return _MODES[request.mode](g, job)


# -- validation -------------------------------------------------------------------------------------------------
def _types(t: Any) -> set[str]:
    if isinstance(t, (list, tuple)):
        return {"COMBO"}
    return {p.strip() for p in str(t).split(",") if p.strip()}


def _types_match(given: Any, wanted: Any) -> bool:
    a, b = _types(given), _types(wanted)
    return "*" in a or "*" in b or bool(a & b)


def _shown(t: Any) -> str:
    return "COMBO" if isinstance(t, (list, tuple)) else str(t)


def _is_link(value: Any) -> bool:
    """[node id, output index] (an int id is a link too, to a node that cannot exist: ids are strings)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    source, index = value
    return isinstance(source, (str, int)) and isinstance(index, int) and not isinstance(index, bool)


def validate(graph: Mapping[str, Any], info: ObjectInfo) -> None:
    """Raise GraphError (a RequestError, so a ValueError) with one line for the first fault the server would
    refuse: an unknown class_type, a required input missing, a value of the wrong type, a combo value not in its
    list, a number outside its min/max, a link to a missing node or past its outputs, a link whose output type
    does not match the input's, a cycle, no output node.

    An uploaded image's name (an input marked `image_upload`, as LoadImage's) is not checked against its list:
    the server checks the file itself, and an image uploaded after `/object_info` was read is not in it.
    """
    if not isinstance(graph, Mapping) or not graph:
        raise GraphError("The graph is empty")
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            raise GraphError(f"Node {node_id} has no class_type")
        cls = node["class_type"]
        where = f"Node {node_id} ({cls})"
        if not info.has(cls):
            raise GraphError(f"{where}: the ComfyUI server has no node {cls}")
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            raise GraphError(f"{where}: its inputs are not a mapping")
        required, optional = info.inputs(cls)
        for name in required:
            if name not in inputs:
                raise GraphError(f"{where}: the required input {name!r} is missing")
        for name, value in inputs.items():
            if name not in required and name not in optional:
                continue  # the server ignores inputs a node does not declare
            kind, opts = info.spec(cls, name) or ("*", {})
            if isinstance(value, (list, tuple)):
                _check_link(graph, info, where, name, value, kind)
            else:
                _check_value(info, where, cls, name, value, kind, opts)
    if not any(info.is_output(n["class_type"]) for n in graph.values()):
        raise GraphError(
            "The graph has no output node (SaveImage, SaveImageWebsocket...): the server would run nothing"
        )
    _check_cycles(graph)


def _check_link(graph: Mapping[str, Any], info: ObjectInfo, where: str, name: str, value: Any, kind: Any) -> None:
    if not _is_link(value):
        raise GraphError(f"{where}: input {name!r} is {list(value)!r}, not a link [node id, output index]")
    source, index = value
    if not isinstance(source, str) or source not in graph:
        note = " (node ids are strings)" if not isinstance(source, str) and str(source) in graph else ""
        raise GraphError(f"{where}: input {name!r} links to node {source!r}, which is not in the graph{note}")
    source_cls = graph[source].get("class_type")
    outputs = info.outputs(source_cls) if info.has(source_cls) else []
    if not 0 <= index < len(outputs):
        raise GraphError(f"{where}: input {name!r} links to output {index} of node {source} ({source_cls}), "
                         f"which has {len(outputs)} output{'s' if len(outputs) != 1 else ''}")  # fmt: skip
    given = outputs[index]
    if not _types_match(given, kind):
        raise GraphError(f"{where}: input {name!r} wants {_shown(kind)} but node {source} ({source_cls}) output "
                         f"{index} is {_shown(given)}")  # fmt: skip


def _check_value(
    info: ObjectInfo, where: str, cls: str, name: str, value: Any, kind: Any, opts: Mapping[str, Any]
) -> None:
    if info.is_combo(cls, name):
        if opts.get("image_upload"):
            if not isinstance(value, str) or not value:
                raise GraphError(f"{where}: {name} must name an uploaded image, got {value!r}")
            return
        choices = info.combo(cls, name)
        if value not in choices:
            raise GraphError(f"{where}: {name} {value!r} is not one of {_listing(choices, 8)}")
        return
    if kind == "INT":
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok or (isinstance(value, float) and value.is_integer())
    elif kind == "FLOAT":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "STRING":
        ok = isinstance(value, str)
    elif kind == "BOOLEAN":
        ok = isinstance(value, bool)
    elif kind in ("*",):
        ok = True
    else:  # MODEL, CLIP, IMAGE...: only a link carries those
        raise GraphError(f"{where}: input {name!r} needs a link to a {_shown(kind)} output, not the value {value!r}")
    if not ok:
        raise GraphError(f"{where}: {name} must be {kind.lower()}, got {value!r}")
    if kind in ("INT", "FLOAT"):
        low, high = opts.get("min"), opts.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low if low is not None else '-inf'} to {high if high is not None else 'inf'}"
            raise GraphError(f"{where}: {name} {value!r} is out of range: use {span}")


def _check_cycles(graph: Mapping[str, Any]) -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(start: str) -> None:
        stack = [(start, iter(_sources(graph[start])))]
        state[start] = 1
        while stack:
            node_id, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node_id] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise GraphError(f"The graph has a cycle through node {nxt} ({graph[nxt].get('class_type')})")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(_sources(graph[nxt]))))

    for node_id in graph:
        if node_id not in state:
            visit(node_id)


def _sources(node: Mapping[str, Any]) -> list[str]:
    return [v[0] for v in (node.get("inputs") or {}).values() if _is_link(v)]


# -- the server's refusals --------------------------------------------------------------------------------------
_LIST = re.compile(r"\[([^\[\]]*)\]")


def _shorten_lists(text: str, keep: int = 5) -> str:
    def cut(m: re.Match) -> str:
        items = [p.strip() for p in m.group(1).split(",") if p.strip()]
        if len(items) <= keep + 1:
            return m.group(0)
        return f"[{', '.join(items[:keep])}, ... ({len(items)} in all)]"

    return _LIST.sub(cut, text)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _error_text(err: Any) -> str:
    if not isinstance(err, Mapping):
        return _one_line(err)
    message = _one_line(err.get("message") or err.get("type") or "")
    details = _one_line(err.get("details") or "")
    if details and details not in message:
        message = f"{message}: {details}" if message else details
    return _shorten_lists(message)


def describe_errors(body: Any, limit: int = 3) -> str:
    """A refused `POST /prompt` (its 400 answer) as one readable line, the node errors first:
    "ComfyUI refused the job: KSampler: Value not in list: sampler_name: 'foo' not in [euler, ...]"."""
    lead = "ComfyUI refused the job"
    if not isinstance(body, Mapping):
        text = _one_line(body or "")
        return f"{lead}: {text}" if text else lead
    parts: list[str] = []
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, Mapping):

        def order(k: Any) -> tuple[int, str]:
            return (0, f"{int(k):012d}") if str(k).isdigit() else (1, str(k))

        for node_id in sorted(node_errors, key=order):
            entry = node_errors[node_id]
            if not isinstance(entry, Mapping):
                continue
            cls = entry.get("class_type") or f"node {node_id}"
            for err in entry.get("errors") or []:
                text = _error_text(err)
                if text:
                    parts.append(f"{cls}: {text}")
    if not parts:
        text = _error_text(body.get("error") or "")
        if text:
            parts.append(text)
    parts = list(dict.fromkeys(parts))
    if not parts:
        return lead
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return f"{lead}: {'; '.join(parts[:limit])}{more}"
