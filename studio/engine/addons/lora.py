"""LoRA (``LoraSet``): kohya / A1111 files (``lora_unet_*``, ``lora_te_*``, SDXL ``lora_te1_*`` / ``lora_te2_*``) and
diffusers / PEFT files, loaded through diffusers' PEFT backend as named adapters, cached by (path, size, mtime) so
that switching between runs never reloads a file; each run says which LoRAs it uses and with what weight.

Before anything touches the pipeline the file's keys and shapes are checked against the pipeline's modules, so a LoRA
for another base model (or a rank / shape mismatch) is refused with one line and the pipeline is left as it was; a
load that fails anyway is rolled back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import ModelError, first_line
from ...core.modelfiles import lora_base
from ..weights import file_key, read_tensors
from .common import base_label, is_tensor, model_base, quiet

_PARTS = ("unet", "text_encoder", "text_encoder_2")
_UNSUPPORTED = {
    "hada_w1": "a LoHa (LyCORIS) network",
    "lokr_w1": "a LoKr (LyCORIS) network",
    "oft_blocks": "an OFT network",
    "lora_mid": "a LoCon with CP decomposition (LyCORIS)",
    "diff_b": "a full-weight difference (LyCORIS) network",
}


def _base_layer(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _peft_keys(part: str, state_dict: Mapping[str, Any], model) -> dict[str, Any]:
    """The keys of one pipeline part as diffusers hands them to peft (the same conversions, in the same order)."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    sub = {k.removeprefix(part + "."): v for k, v in state_dict.items() if k.startswith(part + ".")}
    if not sub:
        return {}
    if part == "unet":
        if "lora_A" not in next(iter(sub)):
            sub = convert_unet_state_dict_to_peft(sub)
        return sub
    sub = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
    if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
        sub = {k.removeprefix("text_model."): v for k, v in sub.items()}
    return sub


def _check_fit(pipe, state_dict: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """Refuse (ModelError) a converted LoRA state dict that does not fit the pipeline; the parts it touches."""
    import torch

    label = base_label(model_base(pipe))
    unknown = [k for k in state_dict if not k.startswith(tuple(p + "." for p in _PARTS))]
    if unknown:
        raise ModelError(f"{name}: a LoRA layout this studio cannot read (e.g. {unknown[0]})")
    parts = []
    for part in _PARTS:
        if not any(k.startswith(part + ".") for k in state_dict):
            continue
        model = getattr(pipe, part, None)
        if model is None:
            raise ModelError(f"{name} is a LoRA for SDXL (two text encoders); the loaded model is {label}")
        modules = dict(model.named_modules())
        sub = _peft_keys(part, state_dict, model)
        for key, tensor in sub.items():
            if not key.endswith(".lora_A.weight"):
                continue
            mod_name = key[: -len(".lora_A.weight")]
            up = sub.get(mod_name + ".lora_B.weight")
            where = f"{part}.{mod_name}" if part != "unet" else mod_name
            if mod_name not in modules:
                raise ModelError(
                    f"{name} does not fit the loaded model ({label}): it changes a layer the model does not have "
                    f"({where})"
                )
            if up is None:
                raise ModelError(f"{name} is damaged: layer {where} has a down but no up weight")
            base = _base_layer(modules[mod_name])
            down_shape, up_shape = tuple(tensor.shape), tuple(up.shape)
            if isinstance(base, torch.nn.Linear):
                want_in, want_out, ndim = base.in_features, base.out_features, 2
            elif isinstance(base, torch.nn.Conv2d):
                want_in, want_out, ndim = base.in_channels, base.out_channels, 4
            else:
                raise ModelError(
                    f"{name} does not fit the loaded model ({label}): layer {where} is a {type(base).__name__}, "
                    "which a LoRA cannot change"
                )
            ok = (
                len(down_shape) == ndim
                and len(up_shape) == ndim
                and down_shape[1] == want_in
                and up_shape[0] == want_out
                and down_shape[0] == up_shape[1]
            )
            if not ok:
                have = f"{down_shape[1] if len(down_shape) > 1 else '?'}->{up_shape[0] if up_shape else '?'}"
                raise ModelError(
                    f"{name} does not fit the loaded model ({label}): layer {where} is {want_in}->{want_out} "
                    f"in the model but {have} in the LoRA (rank {down_shape[0] if down_shape else '?'})"
                )
        parts.append(part)
    if not parts:
        raise ModelError(f"{name} holds no LoRA weights")
    return tuple(parts)


def _convert_lora(pipe, raw: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, float] | None]:
    """A LoRA file's tensors in diffusers' layout, with kohya's alphas; ModelError for what is not a LoRA."""
    import torch

    for k, v in list(raw.items()):
        if not isinstance(k, str):
            raise ModelError(f"{name} is not a LoRA: its weights are not named")
        if isinstance(v, (int, float)) and k.endswith(".alpha"):
            raw[k] = torch.tensor(float(v))
        elif not is_tensor(raw[k]):
            raise ModelError(f"{name} is not a LoRA: {k} is a {type(v).__name__}, not a tensor")
    for marker, what in _UNSUPPORTED.items():
        if any(marker in k for k in raw):
            raise ModelError(f"{name} is {what}; only LoRA / LoCon files are supported")
    if not any("lora" in k for k in raw):
        sample = ", ".join(list(raw)[:2]) or "nothing"
        raise ModelError(f"{name} is not a LoRA (it holds {sample})")
    shapes = {k: tuple(v.shape) for k, v in raw.items()}
    file_base = lora_base(shapes)
    pipe_base = model_base(pipe)
    if file_base and file_base != pipe_base:
        raise ModelError(f"{name} is a LoRA for {base_label(file_base)}; the loaded model is {base_label(pipe_base)}")
    unet = getattr(pipe, "unet", None)
    try:
        with quiet():
            state_dict, alphas = type(pipe).lora_state_dict(
                dict(raw), unet_config=unet.config if unet is not None else None
            )
    except Exception as e:  # noqa: BLE001 - diffusers' converters raise ValueError/KeyError/IndexError
        if any(k.startswith("lora_unet_") and "input_blocks" in k for k in raw) and pipe_base != "sdxl":
            raise ModelError(f"{name} is a LoRA for SDXL; the loaded model is {base_label(pipe_base)}") from e
        raise ModelError(f"{name}: a LoRA layout this studio cannot read ({first_line(e)})") from e
    if not all("lora" in k for k in state_dict):
        bad = next(k for k in state_dict if "lora" not in k)
        raise ModelError(f"{name}: a LoRA layout this studio cannot read (e.g. {bad})")
    return state_dict, alphas


def _adapters_of(model) -> set[str]:
    cfg = getattr(model, "peft_config", None)
    return set(cfg) if isinstance(cfg, dict) else set()


def _delete_adapter(pipe, adapter: str) -> None:
    """Remove one adapter from every part, also from layers a failed load injected before registering it."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for part in _PARTS:
        model = getattr(pipe, part, None)
        if model is None or not (adapter in _adapters_of(model) or _has_peft_layers(model)):
            continue
        with quiet():  # peft warns that another adapter is now the active one; _activate sets them anyway
            delete_adapter_layers(model, adapter)
            cfg = getattr(model, "peft_config", None)
            if isinstance(cfg, dict):
                cfg.pop(adapter, None)


def _has_peft_layers(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _unload_all(pipe) -> None:
    """Remove every adapter and put the plain layers back (diffusers' unload_lora_weights, per part)."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

    for part in _PARTS:
        model = getattr(pipe, part, None)
        if model is None or not (_adapters_of(model) or _has_peft_layers(model)):
            continue
        if hasattr(model, "unload_lora"):
            model.unload_lora()
        else:
            _remove_text_encoder_monkey_patch(model)


def _activate(pipe, adapters: Sequence[tuple[str, float]]) -> None:
    """Make exactly `adapters` (name, weight) active on every part; weight-0 ones are left off entirely."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    wanted = [(n, float(w)) for n, w in adapters if float(w) != 0.0]
    for part in _PARTS:
        model = getattr(pipe, part, None)
        if model is None:
            continue
        present = _adapters_of(model)
        if not present:
            continue
        use = [(n, w) for n, w in wanted if n in present]
        diffusers_model = hasattr(model, "set_adapters")
        if not use:
            if diffusers_model:
                model.disable_lora()
            else:
                disable_lora_for_text_encoder(model)
            continue
        names, weights = [n for n, _ in use], [w for _, w in use]
        if diffusers_model:
            model.enable_lora()
            model.set_adapters(names, weights)
        else:
            enable_lora_for_text_encoder(model)
            set_adapters_for_text_encoder(names, model, weights)


@dataclass
class LoadedLora:
    """One LoRA file held as a named adapter on the pipeline."""

    path: Path
    key: tuple[str, int, int]
    adapter: str
    parts: tuple[str, ...]  # unet, text_encoder, text_encoder_2
    used: int = 0  # the apply() call that used it last (least recently used goes first)


class LoraSet:
    """The LoRAs of one loaded pipeline: ``apply([(path, weight), ...])`` before each run.

    Adapters are kept loaded (up to `max_loaded`) and keyed by (path, size, mtime): a run that uses the same
    LoRAs as an earlier one only switches adapters and weights. ``apply([])`` turns every LoRA off (the output is
    then exactly the plain model's); ``unload()`` removes them all. The adapters live on the pipeline's modules,
    so pipelines made from it with ``from_pipe`` (same U-Net and text encoders) see the same LoRAs.
    """

    def __init__(self, pipe, max_loaded: int = 8):
        if not hasattr(type(pipe), "load_lora_into_unet") or getattr(pipe, "unet", None) is None:
            raise ModelError(f"LoRAs cannot be used with this kind of model ({type(pipe).__name__})")
        self.pipe = pipe
        self.max_loaded = max(1, int(max_loaded))
        self._loaded: dict[str, LoadedLora] = {}  # resolved path -> entry
        self._active: list[tuple[str, float]] = []  # (adapter, weight)
        self._calls = 0
        self._counter = 0

    @property
    def loaded(self) -> list[LoadedLora]:
        return list(self._loaded.values())

    @property
    def active(self) -> list[tuple[str, float]]:
        """(adapter name, weight) of the LoRAs the next run uses (weight 0 included, although it is left off)."""
        return list(self._active)

    def apply(self, loras: Iterable[tuple[str | Path, float]]) -> list[LoadedLora]:
        """Use these LoRAs, with these weights, for the next run; nothing else. Loads what is not loaded yet.

        ModelError when one of them cannot be used: nothing of that call is left on the pipeline and the LoRAs of
        the previous call stay as they were.
        """
        self._calls += 1
        wanted: dict[str, float] = {}
        paths: dict[str, Path] = {}
        for path, weight in loras:
            key = file_key(path, "LoRA")[0]
            wanted[key] = wanted.get(key, 0.0) + float(weight)  # the same file twice: the weights add up
            paths[key] = Path(path)
        previous = list(self._active)
        new: list[str] = []
        entries: list[LoadedLora] = []
        try:
            for key in wanted:
                entry, fresh = self._ensure(paths[key])
                if fresh:
                    new.append(key)
                entries.append(entry)
        except BaseException:
            for key in new:
                self._drop(key)
            live = {e.adapter for e in self._loaded.values()}
            self._active = [(n, w) for n, w in previous if n in live]
            self._sync()
            raise
        for entry in entries:
            entry.used = self._calls
        self._active = [(e.adapter, wanted[k]) for e, k in zip(entries, wanted, strict=True)]
        self._evict(keep={e.adapter for e in entries})
        self._sync()
        return entries

    def clear(self) -> None:
        """No LoRA for the next run (they stay loaded for later runs)."""
        self.apply([])

    def unload(self) -> None:
        """Remove every adapter: the pipeline's modules are the plain model's again."""
        self._loaded.clear()
        self._active = []
        _unload_all(self.pipe)

    # ------------------------------------------------------------------------------------------

    def _sync(self) -> None:
        if not self._loaded:
            _unload_all(self.pipe)
            return
        _activate(self.pipe, self._active)

    def _drop(self, key: str) -> None:
        entry = self._loaded.pop(key, None)
        if entry is not None:
            _delete_adapter(self.pipe, entry.adapter)
        if not self._loaded:
            _unload_all(self.pipe)

    def _evict(self, keep: set[str]) -> None:
        spare = sorted((e for e in self._loaded.values() if e.adapter not in keep), key=lambda e: e.used)
        while len(self._loaded) > self.max_loaded and spare:
            self._drop(spare.pop(0).key[0])

    def _ensure(self, path: Path) -> tuple[LoadedLora, bool]:
        key = file_key(path, "LoRA")
        entry = self._loaded.get(key[0])
        if entry is not None and entry.key == key:
            return entry, False
        if entry is not None:  # the file changed on disk: its old adapter goes
            self._drop(key[0])
        raw, meta = read_tensors(path, "LoRA")
        name = path.name
        state_dict, alphas = _convert_lora(self.pipe, raw, name)
        parts = _check_fit(self.pipe, state_dict, name)
        adapter = self._adapter_name(path)
        metadata = None
        if meta.get("lora_adapter_metadata"):  # a diffusers/PEFT file's LoraConfig (alpha, rank pattern...)
            try:
                metadata = json.loads(meta["lora_adapter_metadata"])
            except ValueError:
                metadata = None
        if metadata is not None:
            alphas = None  # diffusers refuses both; the file's own config wins
        try:
            self._load(state_dict, alphas, metadata, adapter, parts)
        except Exception as e:  # noqa: BLE001 - peft/transformers raise many kinds; roll back, one line
            _delete_adapter(self.pipe, adapter)
            if not self._loaded:
                _unload_all(self.pipe)
            raise ModelError(f"Cannot use LoRA {name}: {first_line(e)}") from e
        entry = LoadedLora(Path(path), key, adapter, parts)
        self._loaded[key[0]] = entry
        return entry, True

    def _load(self, state_dict, alphas, metadata, adapter: str, parts: tuple[str, ...]) -> None:
        pipe = self.pipe
        cls = type(pipe)
        with quiet():
            if "unet" in parts:
                cls.load_lora_into_unet(
                    state_dict,
                    network_alphas=alphas,
                    unet=pipe.unet,
                    adapter_name=adapter,
                    metadata=metadata,
                    _pipeline=pipe,
                )
            for part in ("text_encoder", "text_encoder_2"):
                if part in parts:
                    cls.load_lora_into_text_encoder(
                        state_dict,
                        network_alphas=alphas,
                        text_encoder=getattr(pipe, part),
                        prefix=part,
                        lora_scale=1.0,
                        adapter_name=adapter,
                        metadata=metadata,
                        _pipeline=pipe,
                    )

    def _adapter_name(self, path: Path) -> str:
        self._counter += 1
        stem = re.sub(r"\W+", "_", path.stem)[:40] or "lora"
        return f"{stem}_{self._counter}"


def lora_set(pipe) -> LoraSet:
    """The LoraSet of a pipeline, shared by every pipeline that shares its U-Net (``from_pipe``).

    Kept on the U-Net itself (a weak-keyed table would keep the U-Net alive through the set's own reference)."""
    found = getattr(pipe.unet, "_studio_loras", None)
    if found is None:
        found = LoraSet(pipe)
        object.__setattr__(pipe.unet, "_studio_loras", found)
    return found
