"""Requests and results: plain, immutable data passed between the UI, the worker and the engine."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .branch import BranchSpec, SamplerState
from .control import ControlSpec, validate_controls
from .errors import RequestError
from .speed import DEFAULT_SPEED, SPEEDS, Speed

Mode = Literal["txt2img", "img2img", "inpaint", "upscale"]
PreviewKind = Literal["x0", "latent", "none"]
MODES: tuple[str, ...] = ("txt2img", "img2img", "inpaint", "upscale")
INPAINT_AREAS: tuple[str, ...] = ("whole", "masked")
MASKED_CONTENTS: tuple[str, ...] = ("original", "fill", "noise")
# Upscaling: "resize" (Lanczos only), "model" (an upscaler model file: ESRGAN, SwinIR... through spandrel),
# "diffusion" (resize, then tiled img2img at low strength with the loaded model), "latent" (the x4 upscaler layout).
UPSCALE_MODES: tuple[str, ...] = ("resize", "model", "diffusion", "latent")
MAX_SIDE = 4096  # px a side: the largest working size, and the largest img2img / inpaint input
MAX_UPSCALE_SIDE = 8192  # px: an upscale past this is refused before any work starts
MAX_UPSCALE_PIXELS = 8192 * 8192
MAX_SEED = 2**32 - 1
# DeepCache (reuse of the U-Net's deep features): intervals 2..5; 0 or 1 is off. Below this many sampler steps
# it is ignored (with a note): too few steps lie between the full ones for their features to stay close.
MAX_DEEP_CACHE = 5
DEEP_CACHE_MIN_STEPS = 15


def _frozen_copy(a: np.ndarray | None, ndim: tuple[int, ...], what: str) -> np.ndarray | None:
    if a is None:
        return None
    a = np.array(a, dtype=np.uint8, copy=True)  # copied at submit: later canvas edits never reach a run
    if a.ndim not in ndim:
        raise RequestError(f"{what} must be an image array with {ndim} dimensions, got shape {a.shape}")
    a.setflags(write=False)
    return a


InpaintArea = Literal["whole", "masked"]
MaskedContent = Literal["original", "fill", "noise"]
UpscaleMethod = Literal["resize", "model", "diffusion", "latent"]
Prediction = Literal["auto", "epsilon", "v_prediction"]


@dataclass(frozen=True)
class InpaintOptions:
    """How an inpaint works (A1111's options and defaults). The request's mask is white (255) where to repaint."""

    mask_blur: int = 4  # px: Gaussian feather of the mask's edge
    area: InpaintArea = "whole"  # the "whole" picture, or only the "masked" area at full working resolution
    padding: int = 32  # px around the blurred mask's box, for area "masked"
    masked_content: MaskedContent = "original"  # what the masked area starts from

    def replace(self, **changes) -> InpaintOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class UpscaleOptions:
    """How an upscale works: the init image grown by `scale`, or to the request's width x height when both are set."""

    method: UpscaleMethod = "diffusion"
    scale: float = 2.0
    upscaler: str | None = None  # an upscaler model file: method "model", and the resize step of "diffusion"
    tile: int = 0  # tile size in output px; 0: automatic (the model's working size, or the upscaler's advice)
    tile_overlap: int = 0  # px; 0: automatic
    # diffusion over several tiles: True adds only each tile's sharpening detail to the resized picture; False
    # keeps only its low frequencies (colours, composition), so the model paints new texture into flat areas
    keep_composition: bool = True

    def replace(self, **changes) -> UpscaleOptions:
        return dataclasses.replace(self, **changes)


# Hires fix (A1111's two-pass text to image): its latent-space upscalers, by A1111's names -> (torch's
# interpolate mode, antialias); any other upscaler is "Lanczos" (a plain resize) or an upscaler model file.
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
HIRES_MAX_SCALE = 4.0


@dataclass(frozen=True)
class HiresOptions:
    """A1111's hires fix for text to image: the image made at the request's size, upscaled by `scale` (in latent
    space, or in pixels by Lanczos or an upscaler model), then an img2img pass at `strength` for `steps` steps
    (0: the request's steps). Defaults are A1111's."""

    enabled: bool = False
    scale: float = 2.0
    upscaler: str = "Latent"  # a LATENT_UPSCALERS name, "Lanczos", or an upscaler model file
    steps: int = 0
    strength: float = 0.7

    def replace(self, **changes) -> HiresOptions:
        return dataclasses.replace(self, **changes)

    def runs(self) -> bool:
        """Whether a second pass runs: on, and enlarging (A1111 drops a hires fix of factor 1 and writes no keys)."""
        return self.enabled and self.scale > 1.0

    def is_latent(self) -> bool:
        return self.upscaler in LATENT_UPSCALERS

    def size(self, width: int, height: int, multiple: int = 8) -> tuple[int, int]:
        """The second pass's size: the first's times scale (A1111's int()), down to the model's multiple."""
        w, h = int(width * self.scale), int(height * self.scale)
        return max(multiple, w - w % multiple), max(multiple, h - h % multiple)


def hires_schedule_steps(steps: int, strength: float) -> int:
    """The img2img schedule whose last `steps` steps start at `strength`: diffusers (and the ComfyUI graphs) run
    int(n * strength) of n steps, so the smallest n that runs `steps`. A1111 stretches its hires schedule the
    same way, so "Hires steps: 10" is 10 steps run."""
    n = max(steps, math.ceil(steps / strength))
    while int(n * strength) < steps:  # float rounding: 20 / 0.7 * 0.7 may land just under 20
        n += 1
    while n > steps and int((n - 1) * strength) >= steps:
        n -= 1
    return n


# The flat names of the nested options (the panel's, the CLI's and the metadata reader's) -> their nest's names.
INPAINT_FIELDS = {"mask_blur": "mask_blur", "inpaint_area": "area", "inpaint_padding": "padding",
                  "masked_content": "masked_content"}  # fmt: skip
UPSCALE_FIELDS = {"upscale_mode": "method", "scale": "scale", "upscaler": "upscaler", "tile": "tile",
                  "tile_overlap": "tile_overlap", "keep_composition": "keep_composition"}  # fmt: skip
HIRES_FIELDS = {"hires_fix": "enabled", "hires_scale": "scale", "hires_upscaler": "upscaler", "hires_steps": "steps",
                "hires_strength": "strength"}  # fmt: skip


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. `seed=None` draws a random seed; the result reports the one used.

    The top-level fields are the sampling every mode shares (prompt, model, sampler, steps, CFG, seed, size, batch,
    strength); the options of one mode nest (`inpaint`, `upscale`). width/height None means the model's native
    size. Image i of a batch uses seed + i, so any image of a batch can be reproduced alone. Memory settings are
    not part of a run: they are the backend's (`Backend.set_memory`).
    """

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None  # a model folder or file; None: the built-in model
    mode: Mode = "txt2img"
    sampler: str = "Euler a"
    schedule: str = "Normal"
    steps: int = 20
    cfg: float = 7.0
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    batch: int = 1
    strength: float = 0.75  # img2img / inpaint / diffusion upscale denoising strength
    init_image: np.ndarray | None = field(default=None, repr=False, compare=False)  # HxWx3 uint8
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # HxW uint8, 255 = repaint
    preview: PreviewKind = "x0"  # what the per-step preview shows: x0 estimate, the noisy latent, or nothing
    clip_skip: int = 1  # A1111 convention: 1 = last layer
    inpaint: InpaintOptions = field(default_factory=InpaintOptions)
    upscale: UpscaleOptions = field(default_factory=UpscaleOptions)
    hires: HiresOptions = field(default_factory=HiresOptions)  # txt2img only
    # Add-ons and model options. LoRAs also come from the prompt as A1111 writes them (<lora:name:0.8>);
    # these are (file or library name, weight) pairs on top of those. vae: a VAE file or library name, "" = the
    # model's own. prediction: "auto" (SD 2.x: detected), "epsilon" or "v_prediction" for a model that needs it.
    loras: tuple[tuple[str, float], ...] = ()
    vae: str = ""
    prediction: Prediction = "auto"
    speed: Speed = DEFAULT_SPEED  # exact, fast or turbo (studio.core.speed); a result's request holds the one used
    tiny_decode: bool = False  # the final decode by the model's tiny decoder (TAESD), when it has one: fast, approximate
    deep_cache: int = 0  # reuse the U-Net's deep features: the full U-Net every N steps (2..5); 0 = off
    # Exact on a CPU: convert the U-Net for OpenVINO f32 first where it is not yet (once per model and LoRA set:
    # minutes, gigabytes on disk; then 1.16x (idle) to 1.6x (busy) per step at 512 px at plain diffusers' pixels). Not in the metadata.
    prepare_exact: bool = False
    controls: tuple[ControlSpec, ...] = ()  # ControlNets (studio.core.control), in every mode
    # A1111's variation seeds (studio.core.variation): the seed's noise slerped toward the noise of `subseed`
    # (None: drawn at random when the strength is above 0) by `subseed_strength`; seed_resize_from_w/h (both
    # above 0): the seed's noise made at that size and pasted centred, so a composition survives a new size.
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # A run that continues another from its step k (studio.core.branch); None: a run from pure noise.
    branch: BranchSpec | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "init_image", _frozen_copy(self.init_image, (3,), "The init image"))
        object.__setattr__(self, "mask", _frozen_copy(self.mask, (2,), "The mask"))

    def replace(self, **changes) -> GenerateRequest:
        return dataclasses.replace(self, **changes)

    def with_fields(self, **fields) -> GenerateRequest:
        """A copy with fields given by their flat names, as the panel, the CLI and A1111's parameters text name
        them: the inpaint and upscale options (mask_blur, inpaint_area, inpaint_padding, masked_content;
        upscale_mode, scale, upscaler, tile, tile_overlap, keep_composition) go to their nests, the rest to the request."""
        inpaint = {INPAINT_FIELDS[k]: fields.pop(k) for k in list(fields) if k in INPAINT_FIELDS}
        upscale = {UPSCALE_FIELDS[k]: fields.pop(k) for k in list(fields) if k in UPSCALE_FIELDS}
        if inpaint:
            fields["inpaint"] = self.inpaint.replace(**inpaint)
        if upscale:
            fields["upscale"] = self.upscale.replace(**upscale)
        hires = {HIRES_FIELDS[k]: fields.pop(k) for k in list(fields) if k in HIRES_FIELDS}
        if hires:
            fields["hires"] = self.hires.replace(**hires)
        return self.replace(**fields) if fields else self

    def input_image(self) -> np.ndarray:
        """The init image of a mode that needs one (img2img, inpaint, upscale); RequestError without one."""
        if self.init_image is None:
            raise RequestError(f"{self.mode} needs an input image")
        return self.init_image

    def input_mask(self) -> np.ndarray:
        """An inpaint's mask; RequestError without one."""
        if self.mask is None:
            raise RequestError("Inpainting needs a mask: paint the area to repaint")
        return self.mask

    def get_field(self, name: str):
        """A field by its flat name (see with_fields)."""
        if name in INPAINT_FIELDS:
            return getattr(self.inpaint, INPAINT_FIELDS[name])
        if name in UPSCALE_FIELDS:
            return getattr(self.upscale, UPSCALE_FIELDS[name])
        if name in HIRES_FIELDS:
            return getattr(self.hires, HIRES_FIELDS[name])
        return getattr(self, name)

    @classmethod
    def from_fields(cls, **fields) -> GenerateRequest:
        """A request from flat field names (see with_fields)."""
        return cls().with_fields(**fields)

    def validate(self) -> None:
        """Raise RequestError with a message an artist understands."""
        if self.mode not in MODES:
            raise RequestError(f"Unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        top = MAX_UPSCALE_SIDE if self.mode == "upscale" else MAX_SIDE  # an upscale's width x height is its target
        for name, v in (("Width", self.width), ("Height", self.height)):
            if v is None:
                continue
            if not 8 <= v <= top:  # NaN too: it compares False both ways
                raise RequestError(f"{name} {v} is out of range: use 8 to {top} pixels")
            if v % 8:
                lo, hi = v - v % 8, v - v % 8 + 8
                raise RequestError(f"{name} {v} is not a multiple of 8: use {lo or 8} or {hi}")
        if not 1 <= self.steps <= 1000:
            raise RequestError(f"Steps must be between 1 and 1000, got {self.steps}")
        if not 1 <= self.batch <= 64:
            raise RequestError(f"Batch size must be between 1 and 64, got {self.batch}")
        if not 0.0 <= self.cfg <= 100.0:
            raise RequestError(f"CFG scale must be between 0 and 100, got {self.cfg}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise RequestError(f"Seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.mode in ("img2img", "inpaint", "upscale") and self.init_image is None:
            raise RequestError(f"{self.mode} needs an input image")
        if self.mode in ("img2img", "inpaint") and self.init_image is not None:
            ih, iw = self.init_image.shape[:2]
            if max(iw, ih) > MAX_SIDE:  # refused before any work (the engine would run minutes, then fail)
                raise RequestError(f"The input image is {iw}x{ih}: {self.mode} takes at most {MAX_SIDE} px a side")
        if self.mode in ("img2img", "inpaint") and not 0.0 < self.strength <= 1.0:
            raise RequestError(f"Denoising strength must be in (0, 1], got {self.strength}")
        if self.mode == "inpaint":
            self._validate_inpaint()
        if self.mode == "upscale":
            self._validate_upscale()
        if self.mode == "txt2img" and self.hires.enabled:
            self.validate_hires(self.width, self.height)
        if self.preview not in ("x0", "latent", "none"):
            raise RequestError(f"Unknown preview kind {self.preview!r}")
        if not 1 <= self.clip_skip <= 12:
            raise RequestError(f"Clip skip must be between 1 and 12, got {self.clip_skip}")
        if self.prediction not in ("auto", "epsilon", "v_prediction"):
            raise RequestError(f"Unknown prediction type {self.prediction!r}; use auto, epsilon or v_prediction")
        if self.speed not in SPEEDS:
            raise RequestError(f"Unknown speed mode {self.speed!r}; use {', '.join(SPEEDS)}")
        if not 0 <= self.deep_cache <= MAX_DEEP_CACHE:
            raise RequestError(f"Deep cache must be an interval of 2 to {MAX_DEEP_CACHE} steps (0 = off), "
                               f"got {self.deep_cache}")  # fmt: skip
        for name, weight in self.loras:
            if not isinstance(name, str) or not name or not -10.0 <= float(weight) <= 10.0:
                raise RequestError(f"A LoRA needs a name and a weight between -10 and 10, got {name!r}: {weight!r}")
        validate_controls(tuple(self.controls))
        if self.branch is not None:
            self.branch.validate(self)
        self._validate_variation()

    def _validate_variation(self) -> None:
        if not 0.0 <= self.subseed_strength <= 1.0:  # NaN too
            raise RequestError(f"Variation seed strength must be between 0 and 1, got {self.subseed_strength:g}")
        if self.subseed is not None and not 0 <= self.subseed <= MAX_SEED:
            raise RequestError(f"Variation seed must be between 0 and {MAX_SEED}, got {self.subseed}")
        for name, v in (("width", self.seed_resize_from_w), ("height", self.seed_resize_from_h)):
            if v and not 8 <= v <= MAX_SIDE:
                raise RequestError(f"Resize seed from {name} {v} is out of range: use 0 (off) or 8 to {MAX_SIDE}")


    def _validate_inpaint(self) -> None:
        mask = self.input_mask()
        ih, iw = self.input_image().shape[:2]
        if mask.shape != (ih, iw):
            mh, mw = mask.shape
            raise RequestError(f"The mask is {mw}x{mh} but the image is {iw}x{ih}: they must be the same size")
        if not mask.any():
            raise RequestError("The mask is empty: paint the area to repaint")
        if not 0 <= self.inpaint.mask_blur <= 256:
            raise RequestError(f"Mask blur must be between 0 and 256 px, got {self.inpaint.mask_blur}")
        if self.inpaint.area not in INPAINT_AREAS:
            raise RequestError(f"Unknown inpaint area {self.inpaint.area!r}; use whole or masked")
        if not 0 <= self.inpaint.padding <= 1024:
            raise RequestError(f"Masked area padding must be between 0 and 1024 px, got {self.inpaint.padding}")
        if self.inpaint.masked_content not in MASKED_CONTENTS:
            raise RequestError(f"Unknown masked content {self.inpaint.masked_content!r}; use original, fill or noise")


    def validate_hires(self, width: int | None, height: int | None) -> None:
        """The hires fix's options; its final size when the first pass's is known (None: the model's, checked by
        the engine once it knows it)."""
        h = self.hires
        if not 1.0 <= h.scale <= HIRES_MAX_SCALE:  # NaN too
            raise RequestError(f"The hires upscale factor must be between 1 and {HIRES_MAX_SCALE:g}, got {h.scale:g}")
        if not isinstance(h.upscaler, str) or not h.upscaler.strip():
            raise RequestError("The hires fix needs an upscaler: Latent, Lanczos or an upscaler model")
        if not 0 <= h.steps <= 1000:
            raise RequestError(f"Hires steps must be between 0 (the same as the first pass) and 1000, got {h.steps}")
        if not 0.0 < h.strength <= 1.0:
            raise RequestError(f"The hires denoising strength must be in (0, 1], got {h.strength:g}")
        if width and height:
            fw, fh = h.size(width, height)
            if max(fw, fh) > MAX_SIDE:
                raise RequestError(f"Hires fix {width}x{height} x{h.scale:g} = {fw}x{fh} is too large: at most "
                                   f"{MAX_SIDE} px a side (a smaller factor, or upscale afterwards)")  # fmt: skip

    def upscale_size(self) -> tuple[int, int]:
        """The output size of an upscale: width x height when both are set, else the input times scale."""
        ih, iw = self.input_image().shape[:2]
        if self.width and self.height:
            return int(self.width), int(self.height)
        return max(1, round(iw * self.upscale.scale)), max(1, round(ih * self.upscale.scale))

    def _validate_upscale(self) -> None:
        if self.upscale.method not in UPSCALE_MODES:
            raise RequestError(f"Unknown upscale mode {self.upscale.method!r}; use one of {', '.join(UPSCALE_MODES)}")
        if not (self.width and self.height) and not 1.0 <= self.upscale.scale <= 8.0:
            raise RequestError(f"The upscale factor must be between 1 and 8, got {self.upscale.scale:g}")
        w, h = self.upscale_size()
        if max(w, h) > MAX_UPSCALE_SIDE or w * h > MAX_UPSCALE_PIXELS:
            ih, iw = self.input_image().shape[:2]
            raise RequestError(f"Upscaling {iw}x{ih} to {w}x{h} is too large: at most {MAX_UPSCALE_SIDE} px a side")
        if self.upscale.method == "model" and not self.upscale.upscaler:
            raise RequestError("The model upscale needs an upscaler model: pick one, or use resize or diffusion")
        if self.upscale.tile and not 64 <= self.upscale.tile <= 4096:
            raise RequestError(f"The tile size must be between 64 and 4096 px, got {self.upscale.tile}")
        if not 0 <= self.upscale.tile_overlap <= 512:
            raise RequestError(f"The tile overlap must be between 0 and 512 px, got {self.upscale.tile_overlap}")
        if self.upscale.method in ("diffusion", "latent") and not 0.0 < self.strength <= 1.0:
            raise RequestError(f"Denoising strength must be in (0, 1], got {self.strength}")


@dataclass(frozen=True)
class StepInfo:
    """Handed to on_step after every sampler step (steps as the artist set them, 1-based)."""

    step: int
    total: int
    elapsed: float  # seconds since the run started
    preview: np.ndarray | None = field(default=None, repr=False)  # small HxWx3 uint8 RGB of image 0 (None if preview="none")
    # A run of several passes (tiles of an upscale, a hires pass) says where it is: stage "tile", part 3 of 9.
    stage: str = ""
    part: int = 0
    parts: int = 0
    # Where in the output this preview belongs (x, y, w, h in output px): a tile of an upscale. None: all of it.
    region: tuple[int, int, int, int] | None = None

    def label(self) -> str:
        """'step 4/20', or 'tile 3/9, step 4/20' within a multi-pass run; 'tile 3/9' for a pass without steps
        (total 0: an upscaler model's tiles); the phase alone before the first step ('loading model')."""
        if self.stage and not self.total and self.parts:
            return f"{self.stage} {self.part}/{self.parts}"
        if self.stage and not self.step and not self.parts:
            return self.stage
        text = f"step {self.step}/{self.total}"
        if self.stage and self.parts:
            return f"{self.stage} {self.part}/{self.parts}, {text}"
        return f"{self.stage}, {text}" if self.stage else text


@dataclass(frozen=True)
class GenerateResult:
    """What a run produced. A cancelled run has `cancelled=True` and no images."""

    images: list[np.ndarray]  # HxWx3 uint8 each
    request: GenerateRequest  # the exact parameters used: seed, width and height filled in
    seeds: list[int]  # the seed of each image
    cancelled: bool = False
    # Every step's latent as the sampler carries it (x_t) and the x0 estimate, float16,
    # shape (steps, batch, C, h, w): the step timeline scrubs through these after the run.
    latents: np.ndarray | None = field(default=None, repr=False)
    x0: np.ndarray | None = field(default=None, repr=False)
    model_name: str = ""
    model_hash: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # load, sample, decode, total (seconds)
    steps_done: int = 0
    # Small RGB previews of every step of image 0, per view ("x0", "latent"), for the step timeline.
    # Filled by the backend: from the kept latents locally, from the server's preview frames remotely.
    step_previews: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    # An "only masked" inpaint: the box (x0, y0, x1, y1, image pixels, x1/y1 exclusive) of the input image the
    # run worked on, at the working size (request.width x request.height); None = the whole image. The images
    # above always have the input image's size. The step previews and latents are of the working area: a UI
    # places a preview by scaling it to this box (before the run, studio.core.inpaint.crop_box gives the same
    # box from the request's mask, mask_blur, inpaint_padding and working size).
    crop: tuple[int, int, int, int] | None = None
    # Metadata keys the run adds, as A1111 writes them: "Lora hashes", "TI hashes", "VAE", "VAE hash"; "Speed".
    extra_params: dict[str, str] = field(default_factory=dict)
    # One line for the artist about how the run went, when not as asked ("This CPU has no native bf16: fast ran
    # as exact"); "" when it went as asked.
    notice: str = ""
    # One-line notes for the artist about how the run went ("Deep cache off: 8 steps is below 15").
    notes: list[str] = field(default_factory=list)
    # Every step's whole sampler state (x_t at full precision, the history, the generators): what a branch from
    # that step continues (studio.core.branch). Empty where the backend keeps none.
    step_states: list[SamplerState] = field(default_factory=list, repr=False)
