"""Generation metadata in AUTOMATIC1111's `parameters` format: write, read, parse; model hashes.

The text (what A1111 writes into a PNG `parameters` chunk, or as EXIF UserComment in JPEG/WebP):

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (only when there is one)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

No Qt and no torch here: numpy, Pillow and the standard library only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PureWindowsPath
from typing import NamedTuple

from . import filehash
from .errors import ModelError, RequestError, first_line
from .modelfiles import MODEL_FILE_SUFFIXES
from .requests import MAX_SEED, MAX_UPSCALE_SIDE, GenerateRequest
from .samplers import resolve_sampler, resolve_schedule
from .speed import SPEEDS

# --------------------------------------------------------------------------------------------
# Writing

#: A1111's order for the keys it writes first.
CORE_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Clip skip",
)
#: Known extras, written after the core keys in this order; unknown keys follow in the order given.
EXTRA_KEYS: tuple[str, ...] = (
    "Mask blur",
    "Inpaint area",
    "Masked area padding",
    "Masked content",
    "Hires upscale",
    "Hires resize",
    "Hires steps",
    "Hires upscaler",
    "Upscale mode",
    "Upscale tile",
    "Upscale overlap",
    "Upscale keep composition",  # ours: written only when off (a diffusion upscale's tiles paint free texture)
    "Lora hashes",
    "TI hashes",
    "Speed",  # ours: the speed mode a run used (studio.core.speed), written by the backend that ran it
    "Deep cache",  # ours: the DeepCache interval of a run that reused deep U-Net features (it changes pixels)
)
LAST_KEYS: tuple[str, ...] = ("Version",)

_KEY_OK = re.compile(r"^\w[\w \-/]+$")

NEGATIVE_PREFIX = "Negative prompt:"


def format_value(v: object) -> str:
    """A value as A1111 writes it: integral floats without ".0", other floats by repr (0.75 -> "0.75")."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):  # numpy floats too
        f = float(v)  # type: ignore[arg-type]
        if math.isfinite(f) and f.is_integer():
            return str(int(f))
        # str() of a numpy float32 is its shortest form ("0.1"), repr() of a Python float is.
        return str(v) if hasattr(v, "dtype") else repr(f)
    if hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iub":  # numpy integer / bool scalars
        return str(v.item())  # type: ignore[attr-defined]
    return str(v)


def quote(text: str) -> str:
    """A1111's infotext quoting: a value holding ",", ":" or a newline becomes a JSON string.

    A value that starts and ends with a double quote is quoted too (A1111 does not, but its reader
    would otherwise unquote it and change it).
    """
    if "," in text or ":" in text or "\n" in text or (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _ordered_keys(params: Mapping[str, object]) -> list[str]:
    known = set(CORE_KEYS) | set(EXTRA_KEYS) | set(LAST_KEYS)
    keys = [k for k in CORE_KEYS if k in params]
    keys += [k for k in EXTRA_KEYS if k in params]
    keys += [k for k in params if k not in known]
    keys += [k for k in LAST_KEYS if k in params]
    return keys


def format_parameters(prompt: str, negative: str, params: Mapping[str, object]) -> str:
    """The A1111 `parameters` text. Keys whose value is None or "" are left out.

    Raises ValueError for a key a reader could not parse back (it must match `\\w[\\w \\-/]+`).
    """
    pairs = []
    for k in _ordered_keys(params):
        v = params[k]
        if v is None:
            continue
        s = format_value(v)
        if s == "":
            continue
        if not _KEY_OK.match(k):
            raise ValueError(f"Metadata key {k!r} cannot be read back: use letters, digits, spaces, '-', '/'")
        pairs.append(f"{k}: {quote(s)}")
    negative_text = f"\n{NEGATIVE_PREFIX} {negative}" if negative else ""
    # A1111 strips the whole text: a leading newline of an empty prompt disappears.
    return f"{prompt}{negative_text}\n{', '.join(pairs)}".strip()


#: Our masked content -> A1111's "Masked content" value. "original" (A1111's default) is not written.
MASKED_CONTENT_NAMES: dict[str, str] = {"fill": "fill", "noise": "latent noise"}
#: The keys A1111 writes for an inpaint only (any one of them makes a text an inpaint's).
INPAINT_KEYS: tuple[str, ...] = ("Mask blur", "Inpaint area", "Masked area padding", "Masked content")


def inpaint_parameters(request: GenerateRequest) -> dict[str, object]:
    """The inpaint keys of a request, as A1111 (modules/processing.py, img2img init) writes them:

    - "Mask blur": the blur in px. A1111 writes it only when it is above 0; we write it always (also 0),
      so that our inpaint PNGs say they are inpaints and a reader restores 0, not A1111's default 4.
    - "Inpaint area": "Only masked", and "Masked area padding": the padding in px, only for only-masked
      (A1111 writes neither for the whole picture).
    - "Masked content": "fill" or "latent noise" (our "noise", pixel-space noise standing in for it);
      nothing for "original" (A1111 writes nothing for original either; its 4th choice, "latent nothing",
      we do not have).
    """
    out: dict[str, object] = {"Mask blur": int(request.inpaint.mask_blur)}
    if request.inpaint.area == "masked":
        out["Inpaint area"] = "Only masked"
        out["Masked area padding"] = int(request.inpaint.padding)
    content = MASKED_CONTENT_NAMES.get(request.inpaint.masked_content)
    if content:
        out["Masked content"] = content
    return out


#: Our upscale methods (GenerateRequest.upscale.method), as written after "Upscale mode:".
UPSCALE_MODES: tuple[str, ...] = ("resize", "model", "diffusion", "latent")
#: "Hires upscaler" values that name no upscaler file (A1111's Lanczos, and its latent-space upscalers).
PLAIN_UPSCALERS = ("lanczos", "latent", "none", "")


def upscaler_name(request: GenerateRequest) -> str:
    """What "Hires upscaler" says for an upscale: the upscaler file's name (no folder, no suffix), "Lanczos" for
    a plain resize (also the resize step of a diffusion upscale without an upscaler), "Latent" for the x4
    latent upscaler."""
    mode = request.upscale.method
    if mode == "latent":
        return "Latent"
    if mode in ("model", "diffusion") and request.upscale.upscaler:
        return PureWindowsPath(str(request.upscale.upscaler)).stem or "Lanczos"  # "/" and "\\" both separate folders
    return "Lanczos"


def upscale_parameters(request: GenerateRequest) -> dict[str, object]:
    """The upscale keys of an upscale request, A1111's hires-fix keys where they fit:

    - "Hires upscale": the factor (scale), or "Hires resize": "WxH" when the output size was given and is not
      the input times the factor (A1111 writes one or the other);
    - "Hires upscaler": see `upscaler_name`;
    - ours: "Upscale mode" (resize, model, diffusion, latent: it makes a text an upscale's), "Upscale tile" and
      "Upscale overlap" (output px) when they were set (0, automatic, is not written); "Upscale keep
      composition: False" for a diffusion upscale with it off.
    """
    out: dict[str, object] = {}
    image = request.init_image
    target = (request.width, request.height) if request.width and request.height else None
    if image is not None:
        ih, iw = image.shape[:2]
        by_scale = (max(1, round(iw * request.upscale.scale)), max(1, round(ih * request.upscale.scale)))
        if target is not None and tuple(target) != by_scale:
            out["Hires resize"] = f"{target[0]}x{target[1]}"
        else:
            out["Hires upscale"] = float(request.upscale.scale)
    elif target is not None:
        out["Hires resize"] = f"{target[0]}x{target[1]}"
    else:
        out["Hires upscale"] = float(request.upscale.scale)
    out["Hires upscaler"] = upscaler_name(request)
    out["Upscale mode"] = request.upscale.method
    if request.upscale.tile:
        out["Upscale tile"] = int(request.upscale.tile)
    if request.upscale.tile_overlap:
        out["Upscale overlap"] = int(request.upscale.tile_overlap)
    if request.upscale.method == "diffusion" and not request.upscale.keep_composition:
        out["Upscale keep composition"] = False  # absent: on (the default, and every image made before it)
    return out


def hires_parameters(request: GenerateRequest) -> dict[str, object]:
    """A text-to-image hires fix's keys as A1111 (processing.py, txt2img init) writes them: "Denoising strength"
    (the second pass's), "Hires upscale", "Hires steps" (only when not 0, the first pass's steps), "Hires
    upscaler" (A1111's name: "Latent", "Latent (bicubic)"..., "Lanczos", or the upscaler file's name)."""
    h = request.hires
    name = h.upscaler if h.is_latent() or h.upscaler == "Lanczos" else PureWindowsPath(h.upscaler).stem or h.upscaler
    return {"Denoising strength": float(h.strength), "Hires upscale": float(h.scale), "Hires steps": h.steps or None,
            "Hires upscaler": name}  # fmt: skip


def parameters_for(
    request: GenerateRequest,
    seed: int,
    model_name: str,
    model_hash: str,
    version: str,
    extra: Mapping[str, object] | None = None,
    index: int = 0,
) -> str:
    """The `parameters` text for one image of a run (image i of a batch: pass its own seed, and i as `index`:
    its variation seed is the request's + i).

    Size is WxH (left out when the request has none); Schedule type is always our schedule name;
    Denoising strength only for img2img / inpaint and a diffusion / latent upscale; Clip skip only when > 1;
    an inpaint adds the keys of `inpaint_parameters`. `extra` adds keys (e.g. "Hires upscale") in A1111's
    order; a None value removes a key.

    An upscale (mode "upscale") is written as A1111 writes a hires fix: Size is the input image's size, the
    keys of `upscale_parameters` say how it was enlarged. A diffusion or latent upscale has the usual keys
    besides; a resize or an upscaler-model upscale ran no sampler and no prompt, so its text is only Size, the
    upscale keys and Version.
    """
    if request.mode == "upscale":
        return _upscale_text(request, seed, model_name, model_hash, version, extra)
    size = f"{request.width}x{request.height}" if request.width and request.height else None
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule,
        "CFG scale": request.cfg,
        "Seed": seed,
        "Size": size,
        "Model hash": model_hash,
        "Model": model_name,
    }
    if request.mode in ("img2img", "inpaint", "upscale"):
        params["Denoising strength"] = request.strength
    params.update(variation_parameters(request, index))
    if request.clip_skip > 1:
        params["Clip skip"] = request.clip_skip
    if request.mode == "inpaint":
        params.update(inpaint_parameters(request))
    if request.mode == "txt2img" and request.hires.runs():
        params.update(hires_parameters(request))
    if request.deep_cache > 1:
        params["Deep cache"] = request.deep_cache
    params.update(control_parameters(request))
    if extra:
        params.update(extra)
    params["Version"] = version
    return format_parameters(request.prompt, request.negative_prompt, params)


def variation_parameters(request: GenerateRequest, index: int = 0) -> dict[str, object]:
    """A1111's variation keys: "Variation seed" (image i's: the request's + i) and its strength when the strength is
    above 0, "Seed resize from" (WxH) when both sizes are above 0."""
    params: dict[str, object] = {}
    if request.subseed_strength > 0 and request.subseed is not None:
        params["Variation seed"] = (request.subseed + index) % (MAX_SEED + 1)
        params["Variation seed strength"] = float(request.subseed_strength)
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
    return params


# -- ControlNet (A1111's sd-webui-controlnet keys) ------------------------------------------------------------------


def control_parameters(request: GenerateRequest) -> dict[str, object]:
    """``ControlNet 0: "Module: canny, Model: name [hash], Weight: 1.0, Resize Mode: Crop and Resize, Guidance Start:
    0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"`` per control, as the extension writes them
    (its hash: the first 8 hex of the file's SHA-256, when already cached; the control image is not in the text)."""
    out: dict[str, object] = {}
    for i, c in enumerate(request.controls):
        path = Path(c.model)
        name = path.stem if path.suffix.lower() in MODEL_FILE_SUFFIXES else path.name
        digest = cached_model_hash(path) if path.exists() else None
        fields = (("Module", c.module), ("Model", f"{name} [{digest[:8]}]" if digest else name),
                  ("Weight", float(c.weight)), ("Resize Mode", "Crop and Resize"), ("Guidance Start", float(c.start)),
                  ("Guidance End", float(c.end)), ("Pixel Perfect", False), ("Control Mode", c.mode))  # fmt: skip
        out[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields)
    return out


# A1111's preprocessor names -> ours (studio.core.control.CONTROL_MODULES), by prefix.
_A1111_MODULES = (("none", "none"), ("canny", "canny"), ("depth", "depth"), ("openpose", "pose"), ("dw_openpose", "pose"),
                  ("lineart", "lineart"), ("softedge", "softedge"), ("hed", "softedge"), ("pidinet", "softedge"),
                  ("scribble", "scribble"), ("tile", "tile"), ("invert", "scribble"))  # fmt: skip


def control_fields(text: str) -> list[dict[str, object]]:
    """The controls a `parameters` text names (ours or A1111's), in order: model (the name), model_hash, module,
    weight, start, end, mode; the control images are not in the text (see studio.core.output.save_control_images)."""
    from .control import CONTROL_MODES

    params = parse_parameters(text)["params"]
    found = []
    for key in sorted((k for k in params if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1])):
        p = dict(param_pairs(params[key]))
        m = re.fullmatch(r"(.*?)\s*\[([0-9a-fA-F]{8,10})\]", p.get("Model", "").strip())
        raw = p.get("Module", "none").strip().lower()
        module = next((ours for prefix, ours in _A1111_MODULES if raw.startswith(prefix)), "none")
        mode = p.get("Control Mode", "Balanced").strip()
        found.append({
            "model": m.group(1) if m else p.get("Model", "").strip(),
            "model_hash": m.group(2).lower() if m else "",
            "module": module,
            "weight": _to_float(p.get("Weight")) if _to_float(p.get("Weight")) is not None else 1.0,
            "start": _to_float(p.get("Guidance Start")) or 0.0,
            "end": _to_float(p.get("Guidance End")) if _to_float(p.get("Guidance End")) is not None else 1.0,
            "mode": mode if mode in CONTROL_MODES else "Balanced",
        })
    return found


#: `extra` keys giving a resize or model upscale the prompt and negative prompt to write (not as keys): the source
#: image's, as A1111's extras tab keeps them (`studio upscale` of a PNG with parameters). A sampled upscale writes
#: the prompt it ran with.
SOURCE_PROMPT_KEYS = ("Source prompt", "Source negative")


def _upscale_text(
    request: GenerateRequest,
    seed: int,
    model_name: str,
    model_hash: str,
    version: str,
    extra: Mapping[str, object] | None,
) -> str:
    image = request.init_image
    if image is not None:
        size: str | None = f"{image.shape[1]}x{image.shape[0]}"
    else:
        size = f"{request.width}x{request.height}" if request.width and request.height else None
    sampled = request.upscale.method in ("diffusion", "latent")
    extra = dict(extra or {})
    source = [str(extra.pop(k, None) or "") for k in SOURCE_PROMPT_KEYS]
    params: dict[str, object] = {}
    if sampled:
        params.update({
            "Steps": request.steps,
            "Sampler": request.sampler,
            "Schedule type": request.schedule,
            "CFG scale": request.cfg,
            "Seed": seed,
        })  # fmt: skip
    params["Size"] = size
    if sampled:
        params.update({"Model hash": model_hash, "Model": model_name, "Denoising strength": request.strength})
        if request.clip_skip > 1:
            params["Clip skip"] = request.clip_skip
    params.update(upscale_parameters(request))
    if extra:
        params.update(extra)
    params["Version"] = version
    if not sampled:
        return format_parameters(source[0], source[1], params)
    return format_parameters(request.prompt, request.negative_prompt, params)


# --------------------------------------------------------------------------------------------
# Parsing

#: A1111's regex for one `Key: value` pair of the parameters line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
# RE_PARAM in parts, for param_pairs: a run of key characters, a word character, the value after the colon.
_RE_KEY_RUN = re.compile(r"[\w \-/]+")
_RE_WORD = re.compile(r"\w")
_RE_VALUE = re.compile(r'\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def param_pairs(line: str) -> list[tuple[str, str]]:
    """`RE_PARAM.findall(line)` in linear time.

    findall retries RE_PARAM from every position, and each try runs to the end of the run of key characters
    before it finds no colon: quadratic in a long word or a long sentence without commas. A key can only
    start at the first word character of such a run and only end at the run's end, so each run is looked at
    once: it holds a key when a colon follows it and the key would have two characters or more.
    """
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(line):
        for run in _RE_KEY_RUN.finditer(line, pos):
            end = run.end()
            if line.startswith(":", end):
                word = _RE_WORD.search(line, run.start(), end)
                if word is not None and end - word.start() >= 2:
                    value = _RE_VALUE.match(line, end + 1)
                    assert value is not None  # the value pattern matches anything up to a comma or the end
                    pairs.append((line[word.start() : end], value.group(1)))
                    pos = value.end()
                    break
        else:
            break
    return pairs

#: A1111 schedule labels that may end a combined sampler name ("DPM++ 2M Karras"), longest first.
SCHEDULE_LABELS: tuple[str, ...] = (
    "Align Your Steps",
    "Polyexponential",
    "SGM Uniform",
    "Exponential",
    "KL Optimal",
    "Automatic",
    "Uniform",
    "Karras",
    "Simple",
    "Normal",
    "Beta",
    "DDIM",
)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, str) else text


def split_sampler(name: str) -> tuple[str, str | None]:
    """ "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); a name without a schedule suffix -> (name, None)."""
    for label in SCHEDULE_LABELS:
        if name.lower().endswith(" " + label.lower()) and len(name) > len(label) + 1:
            return name[: -len(label) - 1].rstrip(), label
    return name, None


def parse_parameters(text: str) -> dict:
    """Parse A1111-style `parameters` text.

    Returns {"prompt": str, "negative_prompt": str, "params": {key: value}}: every pair of the last
    line, values as strings (JSON-quoted values unquoted). The last line counts as parameters only
    when it holds at least 3 pairs; otherwise it is part of the prompt. With no "Schedule type" key,
    a combined sampler name ("DPM++ 2M Karras") is split: params["Sampler"] = "DPM++ 2M",
    params["Schedule type"] = "Karras".
    """
    text = text.replace("\r\n", "\n").strip()
    *lines, last = text.split("\n")
    pairs = param_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        last, pairs = "", []

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if not in_negative and line.lstrip().startswith(NEGATIVE_PREFIX):
            in_negative = True
            rest = line.lstrip()[len(NEGATIVE_PREFIX) :]
            negative_lines.append(rest[1:] if rest.startswith(" ") else rest)
        elif in_negative:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    params: dict[str, str] = {}
    for k, v in pairs:
        params[k.strip()] = unquote(v)

    sampler = params.get("Sampler")
    if sampler and "Schedule type" not in params:
        base, schedule = split_sampler(sampler)
        if schedule is not None:
            params["Sampler"] = base
            params["Schedule type"] = schedule

    return {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines), "params": params}


# Our schedules; A1111's "Automatic" means the sampler's default: the model's own for most,
# Karras or Exponential for the DPM family since A1111 1.9 (sd_samplers_kdiffusion.py).
_AUTOMATIC_SCHEDULE = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "DPM++ 2M SDE": "Exponential",
}


def _known(resolve, raw: str):
    """Our name for an A1111 sampler or schedule name, or None when we have no such thing."""
    try:
        found = resolve(raw)
    except RequestError:
        return None
    return getattr(found, "name", found)


def _default(name: str):
    for f in fields(GenerateRequest):
        if f.name == name:
            return f.default
    raise KeyError(name)


@dataclass(frozen=True)
class Limit:
    """The values GenerateRequest.validate accepts for one restored field (key: the metadata key that holds it)."""

    key: str
    lo: float
    hi: float
    above_lo: bool = False  # strength: above 0, not 0
    zero: bool = False  # tile: 0 (automatic) too
    multiple: int = 1  # width, height: a multiple of 8

    def allows(self, v: float) -> bool:
        if self.zero and v == 0:
            return True
        inside = (self.lo < v if self.above_lo else self.lo <= v) and v <= self.hi
        return inside and (self.multiple == 1 or v % self.multiple == 0)

    def text(self) -> str:
        span = f"{format_value(float(self.lo))}-{format_value(float(self.hi))}"
        if self.above_lo:
            span = f"above {format_value(float(self.lo))}, up to {format_value(float(self.hi))}"
        if self.zero:
            span = f"0 or {span}"
        return f"{span}, a multiple of {self.multiple}" if self.multiple > 1 else span


#: GenerateRequest.validate's ranges, by flat field name: a restored value outside is refused (kept as it was).
FIELD_LIMITS: dict[str, Limit] = {
    "steps": Limit("Steps", 1, 1000),
    "cfg": Limit("CFG scale", 0, 100),
    "seed": Limit("Seed", 0, MAX_SEED),
    "width": Limit("Size", 8, 4096, multiple=8),
    "height": Limit("Size", 8, 4096, multiple=8),
    "batch": Limit("Batch size", 1, 64),
    "strength": Limit("Denoising strength", 0, 1, above_lo=True),
    "clip_skip": Limit("Clip skip", 1, 12),
    "mask_blur": Limit("Mask blur", 0, 256),
    "inpaint_padding": Limit("Masked area padding", 0, 1024),
    "scale": Limit("Hires upscale", 1, 8),
    "tile": Limit("Upscale tile", 64, 4096, zero=True),
    "tile_overlap": Limit("Upscale overlap", 0, 512),
    "hires_scale": Limit("Hires upscale", 1, 4),
    "hires_steps": Limit("Hires steps", 0, 1000),
    "hires_strength": Limit("Denoising strength", 0, 1, above_lo=True),
    "deep_cache": Limit("Deep cache", 0, 5),
    "subseed": Limit("Variation seed", 0, MAX_SEED),
    "subseed_strength": Limit("Variation seed strength", 0, 1),
    "seed_resize_from_w": Limit("Seed resize from", 8, 4096, zero=True),  # 0: off
}


def _shown(raw: str) -> str:
    """A value from a file as a message may quote it: printable and short (not a 100-digit number)."""
    text = "".join(c if c.isprintable() else "?" for c in raw.strip()[:40])
    return text if len(raw.strip()) <= 16 else text[:12] + "…"


class Refused(NamedTuple):
    """A value of the text that was not restored: `field` keeps what it was."""

    key: str  # the metadata key, as the text has it
    raw: str
    field: str  # the flat field name; "width" for a Size (width and height)
    why: str  # "out of range (1-1000)", "not a number"

    def line(self, kept: object = None) -> str:
        """'Steps 1e100 in the image is out of range (1-1000): kept 20' (kept None: a field the caller lacks)."""
        return f"{self.key} {_shown(self.raw)} in the image is {self.why}: " + ("ignored" if kept is None else
                                                                                  f"kept {kept}")


def _restore_number(out: dict, refused: list[Refused] | None, p: Mapping[str, str], key: str, name: str,
                    value: float | None) -> None:
    """out[name] = value when FIELD_LIMITS allow it, else a Refused for the artist (the field keeps its value)."""
    limit = FIELD_LIMITS[name]
    if value is not None and limit.allows(value):
        out[name] = value
    elif refused is not None:
        refused.append(Refused(key, p[key], name, _why(p[key], limit)))


def _why(raw: str, limit: Limit) -> str:
    try:
        f = float(raw.strip())
    except ValueError:
        return "not a number"
    if math.isnan(f):
        return "not a number"
    if math.isfinite(f) and limit.allows(math.floor(f)) and not f.is_integer():
        return "not a whole number"
    return f"out of range ({limit.text()})"


def _to_int(s: str | None) -> int | None:
    if s is None:
        return None
    try:
        return int(s.strip())
    except ValueError:
        try:
            f = float(s.strip())
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f.is_integer() else None


def _to_float(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        f = float(s.strip())
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def request_fields(text: str, refused: list[Refused] | None = None) -> dict:
    """GenerateRequest fields restored from `parameters` text, by their flat names (the panel's), ready for
    `request.with_fields(**fields)`, which puts the inpaint and upscale options in their nests.

    Keys: prompt, negative_prompt, steps, sampler, schedule, cfg, seed, width, height, strength,
    clip_skip, deep_cache (our "Deep cache" key; 0 without it), vae (the "VAE" name, when the text has one: the caller looks it up), and for an inpaint's text (one with any of INPAINT_KEYS) mode "inpaint", mask_blur,
    inpaint_area, masked_content and (when the text has it) inpaint_padding. A1111's defaults fill missing keys (Steps 20, Sampler "Euler a" (our default), CFG 7,
    Clip skip 1, Schedule type "Automatic" = the sampler's default, which for a name without a
    schedule is our "Normal"). Seed, Size and Denoising strength are present only when the text has
    them (A1111 leaves the UI as it is). A value we cannot use (an unknown sampler or schedule, a
    number that does not parse) is left out, so the caller keeps its current value.

    An upscale's text (one with "Upscale mode"): mode "upscale", upscale_mode, scale ("Hires upscale"), the
    target width/height only from "Hires resize" (its Size is the input's, so Size is not restored), upscaler:
    the name "Hires upscaler" gives (None for Lanczos / Latent: a name, never a path, so the caller looks it
    up), tile and tile_overlap (0 when absent), keep_composition (True unless "Upscale keep composition: False").

    A txt2img hires fix's text (A1111's keys without "Upscale mode", see `_hires_fields`): hires_fix True,
    hires_scale ("Hires upscale", or "Hires resize" over Size), hires_steps (0 when absent), hires_upscaler (the
    name), hires_strength ("Denoising strength", then not restored as strength).

    Inpaint keys are read as A1111 writes them: no "Mask blur" means 0 (A1111 leaves it out at 0), no
    "Inpaint area" means "whole" ("Only masked" -> "masked"), no "Masked content" means "original"
    ("fill" -> "fill", "latent noise" -> "noise"; "latent nothing" is left out); "Masked area padding"
    is restored only when present (it is written for only-masked alone).

    A number outside what GenerateRequest.validate accepts (FIELD_LIMITS: "Steps: 1e100", "Mask blur: -5", NaN) is
    left out too, and named in `refused` when a list is given (Refused.line says it to the artist).
    """
    parsed = parse_parameters(text)
    p: dict[str, str] = parsed["params"]
    out: dict[str, object] = {"prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"]}

    if "Steps" in p:
        _restore_number(out, refused, p, "Steps", "steps", _to_int(p["Steps"]))
    else:
        out["steps"] = _default("steps")

    sampler: str | None
    if "Sampler" in p:
        raw = p["Sampler"].strip()
        sampler = _known(resolve_sampler, raw)
    else:
        sampler = _default("sampler")
    if sampler is not None:
        out["sampler"] = sampler

    if "Schedule type" in p:
        sched_raw = p["Schedule type"].strip().lower()
        if sched_raw == "automatic":
            schedule: str | None = _AUTOMATIC_SCHEDULE.get(sampler or "", "Normal")
        else:
            schedule = _known(resolve_schedule, sched_raw)
    else:
        schedule = "Normal"
    if schedule is not None:
        out["schedule"] = schedule

    if "CFG scale" in p:
        _restore_number(out, refused, p, "CFG scale", "cfg", _to_float(p["CFG scale"]))
    else:
        out["cfg"] = float(_default("cfg"))
    if "Seed" in p:
        _restore_number(out, refused, p, "Seed", "seed", _to_int(p["Seed"]))
    if "Size" in p and "Upscale mode" not in p:  # an upscale's Size is its input's, not restored
        _restore_size(out, refused, p, "Size", FIELD_LIMITS["width"])
    if "Denoising strength" in p:
        _restore_number(out, refused, p, "Denoising strength", "strength", _to_float(p["Denoising strength"]))
    if "Clip skip" in p:
        _restore_number(out, refused, p, "Clip skip", "clip_skip", _to_int(p["Clip skip"]))
    else:
        out["clip_skip"] = 1
    if "Deep cache" in p:  # ours; absent (any other tool's image): the run reused nothing
        _restore_number(out, refused, p, "Deep cache", "deep_cache", _to_int(p["Deep cache"]))
    else:
        out["deep_cache"] = 0
    _variation_fields(out, p, refused)
    if p.get("VAE", "").strip():  # A1111 writes the chosen VAE's file name; the caller looks it up
        out["vae"] = p["VAE"].strip()
    if p.get("Speed", "").strip().lower() in SPEEDS:  # ours; absent (A1111, a server): the panel keeps its own
        out["speed"] = p["Speed"].strip().lower()
    out.update(_inpaint_fields(p, refused))
    if "Upscale mode" in p:
        out.update(_upscale_fields(p, refused))
    elif out.get("mode") != "inpaint":
        _hires_fields(out, p, refused)
    return out


def _variation_fields(out: dict, p: Mapping[str, str], refused: list[Refused] | None) -> None:
    """A1111's variation keys, only when the text has them (the panel resets its variation for a text without:
    session.params.Params.with_fields)."""
    if "Variation seed strength" in p:
        _restore_number(out, refused, p, "Variation seed strength", "subseed_strength",
                        _to_float(p["Variation seed strength"]))  # fmt: skip
    if "Variation seed" in p:
        _restore_number(out, refused, p, "Variation seed", "subseed", _to_int(p["Variation seed"]))
    if "Seed resize from" in p:
        size: dict = {}
        _restore_size(size, refused, p, "Seed resize from", FIELD_LIMITS["seed_resize_from_w"])
        if size:
            out["seed_resize_from_w"], out["seed_resize_from_h"] = size["width"], size["height"]


HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize")


def _hires_fields(out: dict, p: Mapping[str, str], refused: list[Refused] | None) -> None:
    """A1111's txt2img hires fix: on when the text has "Denoising strength" and a hires key (A1111's own rule,
    ui.py's enable_hr paste field); that strength is the hires pass's, not img2img's (out["strength"] moves)."""
    if "Denoising strength" not in p or not any(k in p for k in HIRES_KEYS):
        return
    out["hires_fix"] = True  # a txt2img run (the panel switches to Text mode: Params.with_fields)
    if "strength" in out:
        out["hires_strength"] = out.pop("strength")
    if "Hires upscale" in p:
        _restore_number(out, refused, p, "Hires upscale", "hires_scale", _to_float(p["Hires upscale"]))
    elif "Hires resize" in p and out.get("width"):  # "1024x1024": the factor from the first pass's Size
        m = _RE_SIZE.match(p["Hires resize"])
        factor = round(int(m.group(1)) / int(str(out["width"])), 4) if m else None
        _restore_number(out, refused, p, "Hires resize", "hires_scale", factor)
    if "Hires steps" in p:
        _restore_number(out, refused, p, "Hires steps", "hires_steps", _to_int(p["Hires steps"]))
    else:
        out["hires_steps"] = 0
    name = p.get("Hires upscaler", "").strip()
    if name and name.lower() != "none":  # A1111's "None": no upscaler at all; ours keeps the panel's
        out["hires_upscaler"] = name  # a name: the caller finds the upscaler file of that name


#: An upscale's target ("Hires resize"): validate's limit for it, any size up to MAX_UPSCALE_SIDE.
UPSCALE_TARGET = Limit("Hires resize", 1, MAX_UPSCALE_SIDE)


def _restore_size(out: dict, refused: list[Refused] | None, p: Mapping[str, str], key: str, limit: Limit) -> None:
    m = _RE_SIZE.match(p[key])
    try:
        w, h = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    except ValueError:  # more digits than int() takes: out of range all the same
        w = h = -1
    if w is not None and h is not None and limit.allows(w) and limit.allows(h):
        out["width"], out["height"] = w, h
    elif refused is not None:
        why = f"out of range ({limit.text()})" if m else "not a size (WxH)"
        refused.append(Refused(key, p[key], "width", why))


def _upscale_fields(p: Mapping[str, str], refused: list[Refused] | None = None) -> dict[str, object]:
    out: dict[str, object] = {}
    mode = p["Upscale mode"].strip().lower()
    if mode not in UPSCALE_MODES:
        return out
    out.update(mode="upscale", upscale_mode=mode)
    if "Hires resize" in p:
        _restore_size(out, refused, p, "Hires resize", UPSCALE_TARGET)
    if "Hires upscale" in p:
        _restore_number(out, refused, p, "Hires upscale", "scale", _to_float(p["Hires upscale"]))
    name = p.get("Hires upscaler", "").strip()
    # A name, never a path: the caller finds the upscaler file of that name (or has none).
    out["upscaler"] = None if name.lower() in PLAIN_UPSCALERS or mode in ("resize", "latent") else name
    for key, field_name in (("Upscale tile", "tile"), ("Upscale overlap", "tile_overlap")):
        if key in p:
            _restore_number(out, refused, p, key, field_name, _to_int(p[key]))
        else:
            out[field_name] = 0
    out["keep_composition"] = p.get("Upscale keep composition", "True").strip().lower() != "false"
    return out


_AREAS = {"only masked": "masked", "whole picture": "whole"}
_CONTENTS = {"original": "original", "fill": "fill", "latent noise": "noise"}


def _inpaint_fields(p: Mapping[str, str], refused: list[Refused] | None = None) -> dict[str, object]:
    if not any(k in p for k in INPAINT_KEYS):
        return {}
    out: dict[str, object] = {"mode": "inpaint"}
    if "Mask blur" in p:
        _restore_number(out, refused, p, "Mask blur", "mask_blur", _to_int(p["Mask blur"]))
    else:
        out["mask_blur"] = 0
    area = _AREAS.get(p.get("Inpaint area", "Whole picture").strip().lower())
    if area is not None:
        out["inpaint_area"] = area
    if "Masked area padding" in p:
        _restore_number(out, refused, p, "Masked area padding", "inpaint_padding", _to_int(p["Masked area padding"]))
    content = _CONTENTS.get(p.get("Masked content", "original").strip().lower())
    if content is not None:
        out["masked_content"] = content
    return out


# --------------------------------------------------------------------------------------------
# Reading from image files

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment -> text. A1111 writes b"UNICODE\\0" + UTF-16BE (piexif's default); UTF-16LE,
    b"ASCII\\0\\0\\0" (often really UTF-8), JIS and an undefined (zero) prefix are accepted too."""
    if isinstance(raw, str):
        for mark in ("UNICODE\0", "ASCII\0\0\0"):
            if raw.startswith(mark):
                raw = raw[len(mark) :]
        return raw.rstrip("\0")
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body.startswith(b"\xfe\xff"):
            enc, body = "utf-16-be", body[2:]
        elif body.startswith(b"\xff\xfe"):
            enc, body = "utf-16-le", body[2:]
        else:
            # ASCII-range text has its zero bytes first in BE, second in LE.
            even = body[0::2].count(0)
            odd = body[1::2].count(0)
            enc = "utf-16-le" if odd > even else "utf-16-be"
        if len(body) % 2:
            body = body[:-1]
        text = body.decode(enc, errors="replace")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\0")


def encode_user_comment(text: str) -> bytes:
    """Text -> EXIF UserComment as A1111 (piexif) writes it: b"UNICODE\\0" + UTF-16BE."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def read_parameters(path: str | os.PathLike) -> str | None:
    """The `parameters` text of an image, or None when it has none.

    PNG: the `parameters` tEXt/zTXt/iTXt chunk. JPEG/WebP (and PNG eXIf): EXIF UserComment.
    An unreadable file raises RequestError("Cannot read image ...: ...") and nothing else.
    """
    from PIL import Image  # Pillow only here and in output.py

    path = Path(path)
    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
            if text is None and im.format == "PNG":
                try:
                    text = im.text.get("parameters")  # type: ignore[attr-defined]  # PngImageFile's  # text chunks after the image data
                except Exception:  # a truncated tail: keep what the header had
                    text = None
            if text is None:
                exif = im.getexif()
                raw = exif.get_ifd(EXIF_IFD).get(USER_COMMENT) or exif.get(USER_COMMENT)
                if raw:
                    text = decode_user_comment(raw)
            if text is None and isinstance(im.info.get("comment"), (bytes, str)):
                c = im.info["comment"]
                text = c.decode("utf-8", errors="replace") if isinstance(c, bytes) else c
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise RequestError(f"Cannot read image {path}: {first_line(e)}") from e
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text or not text.strip():
        return None
    return str(text)


# --------------------------------------------------------------------------------------------
# Model hashes

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _folder_weight_files(folder: Path) -> list[Path]:
    """The files that identify a diffusers folder: its U-Net weights.

    The U-Net is what differs between fine-tunes (text encoders and VAE are often shared), so the
    hash covers `unet/diffusion_pytorch_model*.safetensors` (all shards, sorted by name), or the
    `.bin` weights when there are no safetensors. A folder without a `unet/` subfolder (a
    transformer-based pipeline, or a plain folder of weights) hashes every weight file under it,
    sorted by relative path. The files are hashed as one stream, in that order.
    """
    unet = folder / "unet"
    if unet.is_dir():
        for pattern in (
            "diffusion_pytorch_model*.safetensors",
            "diffusion_pytorch_model*.bin",
            "*.safetensors",
            "*.bin",
        ):
            files = sorted(p for p in unet.glob(pattern) if p.is_file() and not p.name.endswith(".index.json"))
            if files:
                return files
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def model_hash(path: str | os.PathLike) -> str:
    """A1111's model hash: the first 10 hex digits of the SHA-256 of the whole file.

    For a diffusers folder: of its U-Net weight file(s), see `_folder_weight_files`. Hashed by `filehash`, cached
    on disk by resolved path, size and modification time (of every hashed file), so a second call costs a stat.
    Raises ModelError when the file or folder cannot be read.
    """
    p = Path(path)
    try:
        resolved = p.resolve()
        if not resolved.is_dir():
            return filehash.model_short_hash(resolved)  # a single file: A1111's hash, kept on disk across sessions
        files = _folder_weight_files(resolved)
        if not files:
            raise ModelError(f"Cannot hash model {p}: the folder has no weight files")
        return filehash.files_hash(resolved, files)[:10]
    except OSError as e:
        raise ModelError(f"Cannot hash model {p}: {first_line(e.strerror or e)}") from e


def cached_model_hash(path: str | os.PathLike) -> str | None:
    """model_hash when the disk cache already holds it (every model a run has used), else None: it reads no
    weights, so the window may ask on its own thread."""
    resolved = Path(path).resolve()
    if not resolved.is_dir():
        found = filehash.cached_file_hash(resolved)
    else:
        files = _folder_weight_files(resolved)
        found = filehash.cached_files_hash(resolved, files) if files else None
    return found[:10] if found else None


def clear_hash_cache() -> None:
    """Drop the in-memory copy of the hash cache (tests point it elsewhere)."""
    filehash.forget()


def branch_info(path: str | os.PathLike):
    """The branch keys (studio.core.branch) of an image file's parameters: a BranchInfo, or None for a plain run or
    a file without parameters."""
    from .branch import read_info

    try:
        text = read_parameters(path)
    except (OSError, RequestError):
        return None
    return read_info(parse_parameters(text)["params"]) if text else None
