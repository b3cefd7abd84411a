"""Offline loading of diffusers-layout pipeline folders, and what the engine knows of a loaded model."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelError, RequestError, first_line, is_out_of_memory
from ..core.modelfiles import ARCHS, FAMILY, MODEL_FILE_SUFFIXES, classify_header, read_header

# model_index.json _class_name -> (family, layout)
_KNOWN = {
    "StableDiffusionPipeline": ("sd", "txt2img"),
    "StableDiffusionImg2ImgPipeline": ("sd", "txt2img"),
    "StableDiffusionInpaintPipeline": ("sd", "inpaint"),
    "StableDiffusionXLPipeline": ("sdxl", "txt2img"),
    "StableDiffusionXLImg2ImgPipeline": ("sdxl", "txt2img"),
    "StableDiffusionXLInpaintPipeline": ("sdxl", "inpaint"),
    "StableDiffusionUpscalePipeline": ("upscale", "upscale"),
}
_PIPES = {
    "sd": {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    },
    "upscale": {"upscale": "StableDiffusionUpscalePipeline"},
}


_OPTIONAL_PARTS = {"safety_checker", "feature_extractor", "image_encoder"}  # never loaded by the studio


@dataclass(frozen=True)
class ModelLayout:
    """What a model folder is, read from its json files alone (no weights touched)."""

    path: Path
    family: str  # sd, sdxl, upscale
    layout: str  # txt2img, inpaint, upscale
    unet_in_channels: int
    class_name: str
    arch: str = ""  # an ARCHS id (modelfiles); single files always have one
    single_file: bool = False

    @property
    def modes(self) -> tuple[str, ...]:
        if self.family == "upscale":
            return ("upscale",)
        return ("txt2img", "img2img", "inpaint")


def resolve_model_path(model: str | os.PathLike | None, builtin: Path) -> Path:
    if model is None or str(model) == "":
        if not (builtin / "model_index.json").is_file():
            raise ModelError(
                f"The built-in model is missing ({builtin}); train it (see models/builtin/README.md) or choose a model"
            )
        return builtin
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelError(f"Model not found: {p}")
    return p.resolve()


def read_layout(path: Path) -> ModelLayout:
    """Recognise a diffusers pipeline folder: txt2img, 9-channel inpainting, the x4 upscaler, SDXL."""
    if path.is_file():
        return _file_layout(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{path} is not a diffusers model folder (no model_index.json)")
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
        cls = info["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path.name}: model_index.json is unreadable ({e})") from e
    try:
        unet_cfg = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
        in_ch = int(unet_cfg.get("in_channels", 4))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path.name}: the U-Net config is missing or unreadable ({e})") from e
    missing = [
        name
        for name, spec in info.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and len(spec) == 2
        and spec[0] is not None
        and name not in _OPTIONAL_PARTS
        and not (path / name).is_dir()
    ]
    if missing:
        # Caught here: diffusers would otherwise reach for the hub, or load a half pipeline.
        raise ModelError(f"{path.name} is incomplete: missing {', '.join(sorted(missing))}")
    if cls not in _KNOWN:
        raise ModelError(f"{path.name}: unsupported pipeline type {cls}")
    family, layout = _KNOWN[cls]
    if family != "upscale":
        # The U-Net decides: a 9-channel input is an inpainting model whatever the index says.
        layout = "inpaint" if in_ch == 9 else "txt2img"
        if in_ch not in (4, 9):
            raise ModelError(f"{path.name}: a U-Net with {in_ch} input channels is not supported")
    return ModelLayout(path, family, layout, in_ch, cls, arch=_diffusers_arch(path))


_KIND_ADVICE = {
    "lora": "a LoRA: add it to the prompt as <lora:{name}:1> instead",
    "vae": "a VAE: choose it as the VAE of a checkpoint instead",
    "embedding": "a textual-inversion embedding: write its name, {name}, in the prompt instead",
    "upscaler": "an upscaler model: use it in the Upscale mode instead",
}


def _file_layout(path: Path) -> ModelLayout:
    """A single-file checkpoint's layout from its safetensors header (or a pickle's key names) alone."""
    if path.suffix.lower() not in MODEL_FILE_SUFFIXES:
        raise ModelError(f"{path.name} is not a model: expected a .safetensors or .ckpt checkpoint, or a diffusers folder")
    header = read_header(path)
    found = classify_header(header)
    if found.kind == "unknown":
        raise ModelError(found.note or f"{path.name} is not a Stable Diffusion checkpoint")
    if found.kind != "checkpoint":
        advice = _KIND_ADVICE.get(found.kind, "not a checkpoint").format(name=path.stem)
        raise ModelError(f"{path.name} is not a checkpoint but {advice}")
    arch = found.arch
    family = FAMILY[arch]
    in_ch = 9 if arch.endswith("inpaint") else 7 if arch == "x4-upscaler" else 4
    layout = "inpaint" if in_ch == 9 else "upscale" if family == "upscale" else "txt2img"
    return ModelLayout(path, family, layout, in_ch, ARCHS[arch][1], arch=arch, single_file=True)


def _diffusers_arch(path: Path) -> str:
    from ..core.modelfiles import classify

    return classify(path).arch


def check_mode(layout: ModelLayout, mode: str, upscale_mode: str = "") -> None:
    """Refuse a model that cannot do the mode, from its layout alone (no weights read): the x4 upscaler layout
    only upscales (upscale method "latent"), and the latent upscale needs that layout."""
    name = layout.path.name
    if mode == "upscale" and upscale_mode == "latent":
        if layout.family != "upscale":
            raise RequestError(
                f"The latent upscale needs an x4 upscaler model (StableDiffusionUpscalePipeline); {name} is a "
                "text-to-image model: use the diffusion upscale with it"
            )
    elif layout.family == "upscale" and not (mode == "upscale" and upscale_mode in ("resize", "model")):
        what = "a diffusion upscale" if mode == "upscale" else mode
        raise RequestError(
            f"{name} is an x4 upscaler model: it only upscales an image (upscale method latent); "
            f"pick a text-to-image model for {what}"
        )


def model_key(path: Path, prediction: str = "auto") -> tuple:
    idx = path / "model_index.json"
    st = idx.stat() if idx.exists() else path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, prediction)


@dataclass
class LoadedModel:
    key: tuple
    layout: ModelLayout
    base: Any  # the pipeline as loaded
    device: Any
    dtype: Any
    scheduler_config: Any
    latent_rgb: tuple[np.ndarray, np.ndarray]
    hash_job: Any = None  # the A1111 hash, computed beside the first run (hashing 4 GB takes seconds)
    prediction: str = "epsilon"  # the scheduler's prediction type as loaded (SD 2.x: detected or the user's)
    _pipes: dict[str, Any] = field(default_factory=dict)
    vae_override: dict[tuple, Any] = field(default_factory=dict)  # the VAE file chosen last, by file version
    tiny: Any = None  # a TinyDecoder (TAESD or the model's own) for true-colour previews; None: the linear factors

    @property
    def name(self) -> str:
        """As A1111 writes "Model:": a file's name without its suffix."""
        return self.layout.path.stem if self.layout.single_file else self.layout.path.name

    @property
    def hash(self) -> str:
        """The model's A1111 hash ("" when the files cannot be read); waits for the hashing thread if needed."""
        job = self.hash_job
        if job is None:
            return ""
        job.join()
        return job.digest

    @property
    def family(self) -> str:
        return self.layout.family

    @property
    def inpainting_unet(self) -> bool:
        return self.layout.unet_in_channels == 9

    @property
    def vae(self):
        return self.base.vae

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.base.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> tuple[int, int]:
        s = self.base.unet.config.sample_size
        s = s[0] if isinstance(s, (list, tuple)) else s
        px = int(s) * self.vae_scale_factor
        return px, px

    @property
    def size_multiple(self) -> int:
        downs = len(self.base.unet.config.block_out_channels) - 1
        return max(8, self.vae_scale_factor * 2**downs) if self.family != "upscale" else 8

    def pipe(self, mode: str):
        """The pipeline for a mode, sharing the loaded weights (from_pipe never reloads)."""
        if mode not in self._pipes:
            import diffusers

            cls = getattr(diffusers, _PIPES[self.family][mode])
            p = self.base if isinstance(self.base, cls) else cls.from_pipe(self.base)
            p.set_progress_bar_config(disable=True)
            self._pipes[mode] = p
        return self._pipes[mode]


def load_model(path: Path, device, dtype, prediction: str = "auto", memory=None, folders=()) -> LoadedModel:
    """Read a model folder or single-file checkpoint from disk, offline, and place it on the device. ``folders``:
    the model library's folders, where a TAESD file (or a ``vae_approx`` folder of them) may also be."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from . import tinydecoder
    from .preview import factors_for

    layout = read_layout(path)
    if layout.single_file:
        from .singlefile import load_single_file

        pipe, _ = load_single_file(path, layout.arch, dtype=dtype, prediction=prediction)
        in_ch = int(pipe.unet.config.in_channels)
        if in_ch != layout.unet_in_channels:  # a pickle: its shapes were unknown until now
            if in_ch == 9 and layout.family != "upscale":
                arch = layout.arch + "-inpaint"
                layout = ModelLayout(path, layout.family, "inpaint", 9, ARCHS[arch][1], arch=arch, single_file=True)
            else:
                raise ModelError(f"{path.name}: a U-Net with {in_ch} input channels is not supported")
    else:
        pipe = _load_folder(path, layout, dtype)
        if prediction in ("epsilon", "v_prediction") and pipe.scheduler.config.get("prediction_type") != prediction:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
    from ..core.memory import MemoryOptions, apply

    apply(pipe, memory or MemoryOptions(), device)
    pipe.set_progress_bar_config(disable=True)
    job = _HashJob(path)
    loaded = LoadedModel(
        key=model_key(path, prediction),
        layout=layout,
        base=pipe,
        device=device,
        dtype=dtype,
        scheduler_config=pipe.scheduler.config,
        latent_rgb=factors_for(path, layout.family),
        tiny=tinydecoder.for_model(path, layout.family, 2 ** (len(pipe.vae.config.block_out_channels) - 1),
                                   int(pipe.vae.config.latent_channels), tuple(Path(f) for f in folders)),
        hash_job=job,
        prediction=str(pipe.scheduler.config.get("prediction_type", "epsilon")),
    )
    if loaded.tiny is not None:
        loaded.tiny.module.to(device)
    mode = "inpaint" if layout.layout == "inpaint" else layout.layout
    loaded._pipes[mode] = pipe
    return loaded


class _HashJob(threading.Thread):
    """The model hash on its own thread: the load does not wait for it, the first result's metadata does
    (a cached hash, the usual case after the first time, is back at once)."""

    def __init__(self, path: Path):
        super().__init__(name="model-hash", daemon=True)  # short-lived: not a studio-* thread
        self.path = path
        self.digest = ""
        self.start()

    def run(self) -> None:
        from ..core.metadata import model_hash

        try:
            self.digest = model_hash(self.path)
        except (OSError, ModelError):
            self.digest = ""  # a hash is nice to have in the metadata, never a reason to refuse a model


def _load_folder(path: Path, layout: ModelLayout, dtype):
    import diffusers

    cls = getattr(diffusers, layout.class_name)
    if layout.family == "sd":
        cls = getattr(diffusers, _PIPES["sd"][layout.layout])
    extra: dict[str, Any] = {}
    if layout.family == "sd":
        extra.update(safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    elif layout.family == "upscale":  # StableDiffusionUpscalePipeline takes no requires_safety_checker
        extra.update(safety_checker=None, feature_extractor=None, watermarker=None)
    try:
        return cls.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
    except Exception as e:  # noqa: BLE001 - corrupt weights raise many kinds; the artist gets one line
        if is_out_of_memory(e):
            raise
        raise ModelError(f"Cannot load model {path.name}: {first_line(e)}") from e
