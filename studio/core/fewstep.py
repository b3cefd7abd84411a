"""Few-step models: named presets (sampler, schedule, steps, CFG) and their detection from a file.

Torch-free and Qt-free. Detection reads only what is cheap: the file's name, a safetensors header (its
`__metadata__` and its tensor names, never a tensor) or a diffusers folder's json files. It only *suggests* a
preset: the panel offers it in one line with an Apply action, the CLI applies one only when `--preset` names it.

The presets are the settings the distillations' authors publish for diffusers:
  LCM (LCM-LoRA, LCM checkpoints)        LCMScheduler, 2-8 steps, CFG 1-2
  SD / SDXL Turbo (ADD)                  Euler a, trailing spacing, 1-4 steps, CFG 0 (no guidance: 0 or 1 alike)
  SDXL Lightning                         Euler, trailing spacing ("SGM Uniform"), as many steps as it was made for
  Hyper-SD                               DDIM trailing (TCD for the 1-step files), CFG 1
  TCD                                    TCDScheduler (gamma 0.3), 4-8 steps, CFG 1
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ModelError, RequestError
from .modelfiles import PICKLE_SUFFIXES, read_header
from .prompts import extract_loras


@dataclass(frozen=True)
class Preset:
    name: str
    sampler: str
    schedule: str
    steps: int
    cfg: float
    use: str  # which models it is for (help text, tooltips)

    @property
    def label(self) -> str:
        return f"{self.name}: {self.steps} step{'s' if self.steps != 1 else ''}, CFG {self.cfg:g}"

    def fields(self) -> dict[str, object]:
        """The request/panel fields the preset sets."""
        return {"sampler": self.sampler, "schedule": self.schedule, "steps": self.steps, "cfg": self.cfg}

    def matches(self, values: Mapping[str, object] | object) -> bool:
        """Whether `values` (a mapping or an object with these attributes) already holds the preset's settings."""
        get = values.get if isinstance(values, Mapping) else (lambda k: getattr(values, k, None))
        return all(get(k) == v for k, v in self.fields().items())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("LCM", "LCM", "Normal", 4, 1.5, "an LCM-LoRA (<lora:lcm-lora-sdv1-5:1>) or an LCM checkpoint"),
        Preset("SD Turbo", "Euler a", "SGM Uniform", 1, 1.0, "SD Turbo and SDXL Turbo (ADD), 1-4 steps"),
        Preset("Lightning 4-step", "Euler", "SGM Uniform", 4, 1.0, "SDXL Lightning 4-step checkpoints and LoRAs"),
        Preset("Lightning 8-step", "Euler", "SGM Uniform", 8, 1.0, "SDXL Lightning 8-step checkpoints and LoRAs"),
        Preset("Hyper-SD", "DDIM", "SGM Uniform", 8, 1.0, "Hyper-SD LoRAs and checkpoints (set the steps they name)"),
        Preset("TCD", "TCD", "Normal", 4, 1.0, "TCD LoRAs; Hyper-SD's 1-step files (1 step)"),
    )
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_PRESET_ALIASES = {"turbo": "SD Turbo", "sdxlturbo": "SD Turbo", "lightning": "Lightning 4-step",
                   "lightning4": "Lightning 4-step", "lightning8": "Lightning 8-step", "hyper": "Hyper-SD",
                   "hypersd": "Hyper-SD", "lcmlora": "LCM"}  # fmt: skip


def resolve_preset(name: str) -> Preset:
    """A preset by name, ignoring case, spaces and dashes ("lightning-4-step", "sd turbo", "turbo"); a clear error."""
    key = _norm(name)
    for p in PRESETS.values():
        if _norm(p.name) == key:
            return p
    if key in _PRESET_ALIASES:
        return PRESETS[_PRESET_ALIASES[key]]
    raise RequestError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESET_NAMES)}")


# -- detection ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detected:
    """A few-step model or LoRA found in a file, with the preset it wants and why we think so."""

    preset: Preset
    file: str  # the file's (or folder's) name, for the panel's hint
    reason: str  # "its name", "its metadata (modelspec.title)", "its layers", ...

    @property
    def hint(self) -> str:
        return f"{self.file} looks like a few-step model ({self.reason}): {self.preset.label}"


_STEPS = re.compile(r"(\d{1,2})[-_ ]?steps?(?![a-z])")
# Hyper as a word ("Hyper-SD15", "juggernaut_hyper"), never "hyperrealism"; lcm/tcd as words (3 letters occur
# inside words); turbo and lightning wherever they are ("dreamshaperXLTurbo").
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![a-z])hyper(?:[-_ ]?sd(?:xl|15|1\.5)?)?(?![a-z])"), "Hyper-SD"),
    (re.compile(r"lightning"), "Lightning"),
    (re.compile(r"(?<![a-z])tcd(?![a-z])"), "TCD"),
    (re.compile(r"(?<![a-z])lcm(?![a-z])"), "LCM"),
    (re.compile(r"turbo"), "SD Turbo"),
)
# The metadata a LoRA or checkpoint trainer writes about what the file is (kohya's ss_*, Stability's modelspec.*).
META_KEYS = ("modelspec.title", "modelspec.description", "modelspec.usage_hint", "modelspec.tags", "ss_output_name",
             "ss_training_comment", "name", "title", "description")  # fmt: skip


def detect_text(text: str) -> Preset | None:
    """The preset a name or description points at ("sdxl_lightning_2step_lora" -> Lightning at 2 steps)."""
    low = text.lower()
    for pattern, family in _RULES:
        if not pattern.search(low):
            continue
        m = _STEPS.search(low)
        steps = int(m.group(1)) if m and 1 <= int(m.group(1)) <= 16 else None
        if family == "Lightning":
            steps = steps or 4
            return replace(PRESETS["Lightning 4-step"], name=f"Lightning {steps}-step", steps=steps)
        if family == "Hyper-SD" and steps == 1:
            return replace(PRESETS["TCD"], name="Hyper-SD 1-step (TCD)", steps=1)  # its authors run it with TCD
        preset = PRESETS[family]
        return replace(preset, steps=steps) if steps else preset
    return None


def _lcm_lora_layers(keys: Iterable[str]) -> bool:
    """An LCM-LoRA's layer set (diffusers' LCM distillation script): every U-Net linear and conv, the resnets'
    time-embedding projections and the down/up-sampler convs included, and no text encoder. Style LoRAs train the
    attention layers (and the text encoder); a full-U-Net LoCon without text-encoder layers would look alike, so
    this is only a suggestion, as every detection is."""
    keys = list(keys)
    time_emb = any("time_emb_proj" in k for k in keys)
    samplers = any("downsamplers" in k or "upsamplers" in k for k in keys)
    text = any(k.startswith(("lora_te", "text_encoder", "te.", "te1.", "te2.")) for k in keys)
    return time_emb and samplers and not text


def _from_header(path: Path) -> tuple[Preset, str] | None:
    header = read_header(path)
    for key in META_KEYS:
        value = header.metadata.get(key)
        if isinstance(value, str) and value and (preset := detect_text(value)):
            return preset, f"its metadata ({key})"
    keys = list(header.keys)
    # An LCM-distilled U-Net's guidance embedding (diffusers' time_cond_proj_dim): the pipeline feeds CFG to it.
    if any(k.endswith("cond_proj.weight") and ("time_embed" in k) for k in keys):
        return PRESETS["LCM"], "its U-Net's guidance embedding"
    if any(".lora_" in k or "lora_" in k.split(".")[0] for k in keys[:50]) and _lcm_lora_layers(keys):
        return PRESETS["LCM"], "its layers, as an LCM-LoRA's"
    return None


def _from_folder(folder: Path) -> tuple[Preset, str] | None:
    def config(*parts: str) -> dict:
        try:
            data = json.loads(folder.joinpath(*parts).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    if config("unet", "config.json").get("time_cond_proj_dim"):
        return PRESETS["LCM"], "its U-Net's guidance embedding"
    cls = str(config("scheduler", "scheduler_config.json").get("_class_name", ""))
    if cls in ("LCMScheduler", "TCDScheduler"):
        return PRESETS[cls.removesuffix("Scheduler")], f"its scheduler ({cls})"
    return None


_cache: dict[tuple[str, int, int], Detected | None] = {}


def detect_file(path: str | Path) -> Detected | None:
    """The preset a checkpoint, LoRA or diffusers folder asks for, or None. Cached by path, size and mtime; a file
    that cannot be read says nothing (the run itself reports it)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _cache:
        return _cache[key]
    found: tuple[Preset, str] | None = None
    name = p.name if p.is_dir() else p.stem
    if (preset := detect_text(name)) is not None:
        found = preset, "its name"
    else:
        try:
            if p.is_dir():
                found = _from_folder(p)
            elif p.suffix.lower() not in PICKLE_SUFFIXES:  # a pickle's keys cost a read of the archive: name only
                found = _from_header(p)
        except (ModelError, OSError):
            found = None
    result = Detected(found[0], name, found[1]) if found else None
    if len(_cache) > 512:
        _cache.clear()
    _cache[key] = result
    return result


def suggest(model: str, prompt: str, find_lora: Callable[[str], str | None]) -> Detected | None:
    """The preset for a run: the prompt's LoRAs first (`<lora:lcm-lora-sdv1-5:1>`; a LoRA is what changes the
    sampling), then the model. `find_lora` maps a LoRA name to its file (None: not found)."""
    try:
        loras = extract_loras(prompt or "")[1]
    except ValueError:
        loras = []
    for name, weight in loras:
        if not weight:
            continue
        path = find_lora(name)
        found = detect_file(path) if path else None
        if found is None and (preset := detect_text(Path(name).name)) is not None:
            found = Detected(preset, Path(name).name, "its name")  # not in the model folders: the name still says
        if found is not None:
            return found
    return detect_file(model) if model else None
