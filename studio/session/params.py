"""The prompt panel's values and how they become a request (no Qt)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from studio.core.metadata import FIELD_LIMITS, UPSCALE_TARGET, Refused
from studio.core.requests import GenerateRequest
from studio.core.samplers import DEFAULT_SAMPLER
from studio.core.speed import DEFAULT_SPEED, SPEEDS
from studio.paths import BUILTIN_LATENT_UPSCALER, BUILTIN_UPSCALER

# Fields a stored PNG's parameters can restore into the panel (the model only if it is here).
RESTORED_FIELDS = ("prompt", "negative_prompt", "sampler", "schedule", "steps", "cfg", "seed", "width", "height",
                   "strength", "mask_blur", "inpaint_area", "inpaint_padding", "masked_content", "scale",
                   "upscale_mode", "vae", "speed", "hires_fix", "hires_scale", "hires_upscaler", "hires_steps",
                   "hires_strength", "deep_cache", "subseed", "subseed_strength", "seed_resize_from_w",
                   "seed_resize_from_h", "keep_composition")
MODES = ("txt2img", "img2img", "inpaint", "upscale")  # what the panel's mode switch offers


def fits(name: str, value: Any) -> bool:
    """Whether a number may be a Params field: within GenerateRequest.validate's limits (FIELD_LIMITS), so that
    no spin box overflows and Generate never quotes a 100-digit number. Seed -1 is random, width/height 0 the
    model's size (up to an upscale's target size). Fields without a limit always fit."""
    alias = {"upscale_strength": "strength", "seed_resize_from_h": "seed_resize_from_w"}
    limit = FIELD_LIMITS.get(alias.get(name, name))
    if limit is None or isinstance(value, str):
        return True
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    if math.isnan(v):
        return False
    if name in ("seed", "subseed") and v == -1:
        return True
    if name.startswith("seed_resize_from_"):
        return v == 0 or limit.allows(v)
    if name in ("width", "height"):
        return v == 0 or UPSCALE_TARGET.allows(v)
    return limit.allows(v)


@dataclass
class Params:
    """The prompt panel's values. seed -1 = random; width/height 0 = the model's native size."""

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""  # a model folder or file; "" = the built-in model
    sampler: str = DEFAULT_SAMPLER  # Euler (why: studio.core.samplers)
    schedule: str = "Normal"
    steps: int = 20
    cfg: float = 7.0
    seed: int = -1
    width: int = 0
    height: int = 0
    batch: int = 1
    mode: str = "txt2img"  # txt2img, img2img (the canvas image as a start) or inpaint (its masked area)
    strength: float = 0.75  # denoising strength for img2img and inpaint
    mask_blur: int = 4
    inpaint_area: str = "whole"  # "whole" picture or only the "masked" area (at full working resolution)
    inpaint_padding: int = 32
    masked_content: str = "original"  # original, fill, noise
    upscale_mode: str = "model"  # resize, model, diffusion, latent; "model" keeps the picture (diffusion may not)
    scale: float = 2.0
    upscaler: str = ""  # an upscaler the backend lists (a file locally); "": Lanczos, or the built-in SwinIR
    tile: int = 0  # px; 0: automatic
    tile_overlap: int = 0
    upscale_strength: float = 0.3  # a diffusion upscale keeps the composition: low strength
    keep_composition: bool = True  # diffusion tiles add only sharpening detail; off: they paint new texture too
    vae: str = ""  # a VAE file, or a name the model library knows; "" = the model's own
    speed: str = ""  # exact, fast or turbo (studio.core.speed); "" = not chosen yet: the backend's default
    # Hires fix (Text mode): A1111's two passes; the upscaler is "Latent"..., "Lanczos" or an upscaler file
    hires_fix: bool = False
    hires_scale: float = 2.0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0  # 0: the same as the first pass
    hires_strength: float = 0.7
    deep_cache: int = 0  # DeepCache: the full U-Net every N steps (2..5), deep features reused between; 0 = off
    prepare_exact: bool = False  # Engine > Prepare Exact with OpenVINO: exact converts a model once (remembered)
    # Refine a region (studio.session.region): with a selection, Image and Upscale runs work on it and paste back
    region_in_place: bool = True
    region_feather: int = 12  # px of soft edge, inside the selection
    # A1111's variation seeds (Text mode): subseed -1 = random; strength 0 = off; resize-from 0 = off
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def copy(self) -> Params:
        return Params.from_dict(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Params:
        p = cls()
        for f in fields(cls):
            if data and f.name in data and data[f.name] is not None:
                value = data[f.name]
                try:
                    value = type(getattr(p, f.name))(value)
                except (TypeError, ValueError, OverflowError):
                    continue
                if fits(f.name, value):  # a settings file with steps 1e100 keeps the default
                    setattr(p, f.name, value)
        return p

    def with_fields(self, found: dict[str, Any]) -> Params:
        """These parameters with what an image's metadata stores (request field names -> values)."""
        p = self.copy()
        for name in RESTORED_FIELDS:
            if found.get(name) is not None:
                try:
                    value = type(getattr(p, name))(found[name])
                except (TypeError, ValueError, OverflowError):
                    continue
                if fits(name, value):  # request_fields refused the rest already; this keeps the panel safe
                    setattr(p, name, value)
        if found.get("prompt") is not None and "subseed_strength" not in found:
            p.subseed_strength = 0.0  # an image without A1111's variation keys used none: reproduce it so
        if found.get("prompt") is not None and "seed_resize_from_w" not in found:
            p.seed_resize_from_w = p.seed_resize_from_h = 0
        if found.get("hires_fix"):
            p.mode = "txt2img"  # an A1111 hires image reproduces in Text mode
        if found.get("batch") and fits("batch", found["batch"]):
            p.batch = int(found["batch"])
        model = found.get("model")
        if model and Path(str(model)).exists():
            p.model = str(model)
        return p

    def refused_lines(self, refused: list[Refused]) -> list[str]:
        """What the artist reads about values of an image that were not restored, with the values these keep."""
        lines = []
        for r in refused:
            if r.field == "width":
                kept: object = f"{self.width}x{self.height}" if self.width and self.height else "the model's size"
            else:
                kept = getattr(self, r.field, None)
                kept = "random" if r.field == "seed" and kept == -1 else kept
            lines.append(r.line(kept))
        return lines

    def to_request(self, preview: str = "x0") -> GenerateRequest:
        if self.mode == "upscale":
            return self._upscale_request(preview)
        return GenerateRequest.from_fields(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            model=self.model or None,
            sampler=self.sampler,
            schedule=self.schedule,
            steps=int(self.steps),
            cfg=float(self.cfg),
            seed=None if self.seed < 0 else int(self.seed),
            width=int(self.width) or None,
            height=int(self.height) or None,
            batch=int(self.batch),
            preview=preview,
            mode=self.mode if self.mode in MODES else "txt2img",
            strength=float(self.strength),
            mask_blur=int(self.mask_blur),
            inpaint_area=self.inpaint_area,
            inpaint_padding=int(self.inpaint_padding),
            masked_content=self.masked_content,
            vae=self.vae,
            speed=self.speed if self.speed in SPEEDS else DEFAULT_SPEED,
            **(self.hires_fields() if self.mode == "txt2img" else {}),
            **(self.variation_fields() if self.mode == "txt2img" else {}),
            deep_cache=int(self.deep_cache),
            prepare_exact=bool(self.prepare_exact),
        )

    def variation_fields(self) -> dict[str, Any]:
        return dict(subseed=None if self.subseed < 0 else int(self.subseed), subseed_strength=float(self.subseed_strength),
                    seed_resize_from_w=int(self.seed_resize_from_w), seed_resize_from_h=int(self.seed_resize_from_h))

    def hires_fields(self) -> dict[str, Any]:
        if not self.hires_fix:
            return {}
        return dict(hires_fix=True, hires_scale=float(self.hires_scale), hires_upscaler=self.hires_upscaler or "Latent",
                    hires_steps=int(self.hires_steps), hires_strength=float(self.hires_strength))  # fmt: skip

    def _upscale_request(self, preview: str) -> GenerateRequest:
        # The panel's width x height is the text-to-image size; an upscale goes by its factor. The latent
        # method needs a model of the x4 upscaler layout: with the built-in model chosen, the built-in one.
        model = self.model or None
        if self.upscale_mode == "latent" and model is None and (BUILTIN_LATENT_UPSCALER / "model_index.json").is_file():
            model = str(BUILTIN_LATENT_UPSCALER)
        upscaler = self.upscaler or None
        if self.upscale_mode == "model" and upscaler is None and BUILTIN_UPSCALER.is_file():
            upscaler = str(BUILTIN_UPSCALER)  # no model picked (none listed yet): the built-in SwinIR, never an error
        return GenerateRequest.from_fields(
            prompt=self.prompt, negative_prompt=self.negative_prompt, model=model, mode="upscale",
            sampler=self.sampler, schedule=self.schedule, steps=int(self.steps), cfg=float(self.cfg),
            seed=None if self.seed < 0 else int(self.seed), preview=preview,
            strength=float(self.upscale_strength) if self.upscale_mode == "diffusion" else 1.0,  # latent: as trained
            upscale_mode=self.upscale_mode, scale=float(self.scale), upscaler=upscaler,
            tile=int(self.tile), tile_overlap=int(self.tile_overlap), keep_composition=bool(self.keep_composition),
        )  # fmt: skip
