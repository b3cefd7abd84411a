"""Add-ons on a loaded diffusers pipeline: LoRAs, textual-inversion embeddings, a VAE override, and their hashes.

- LoRA (``LoraSet``): kohya / A1111 files (``lora_unet_*``, ``lora_te_*``, SDXL ``lora_te1_*`` / ``lora_te2_*``) and
  diffusers / PEFT files, loaded through diffusers' PEFT backend as named adapters, cached by (path, size, mtime)
  so that switching between runs never reloads a file; each run says which LoRAs it uses and with what weight.
  Before anything touches the pipeline the file's keys and shapes are checked against the pipeline's modules, so a
  LoRA for another base model (or a rank / shape mismatch) is refused with one line and the pipeline is left as
  it was; a load that fails anyway is rolled back.
- Embeddings (``load_embeddings``): A1111 ``.pt`` (``string_to_param``), ``.safetensors`` (``emb_params``),
  diffusers (``{token: tensor}``) and SDXL (``clip_l`` + ``clip_g``) files; the keyword is the file's stem.
- VAE (``load_vae``, ``swap_vae``, ``restore_vae``): a VAE file in the diffusers or the original (LDM) layout,
  built with the loaded model's own VAE config; the model's VAE is kept to be put back.
- Hashes (``lora_hash``, ``embedding_hash``, ``vae_hash``): what A1111 writes in the infotext, streamed.

Pickle files (``.pt``, ``.ckpt``, ``.bin``, ``.pth``) are only read with ``torch.load(weights_only=True)``: a file
that needs more than tensors and plain containers (that would run code) is refused.
"""

from __future__ import annotations

import contextlib
import json
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ModelError, first_line
from ..core.filehash import embedding_short_hash, file_hash, lora_short_hash, vae_short_hash
from ..core.modelfiles import lora_base

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
BASE_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}

# =============================================================================================
# Hashes (A1111's modules/hashes.py: calculate_sha256 and addnet_hash_safetensors)


# One implementation, cached on disk by path, size and mtime: studio.core.filehash.


def addnet_hash(path: str | Path) -> str:
    """The full "addnet" sha256: a ``.safetensors`` file's bytes after its 8-byte length and JSON header (so that
    editing the metadata keeps the hash), the whole file for any other format."""
    return file_hash(path, "addnet")


def lora_hash(path: str | Path) -> str:
    """A1111's LoRA short hash (``Lora hashes: "name: abcdef012345"``): the first 12 hex digits of the addnet hash."""
    return lora_short_hash(path)


def embedding_hash(path: str | Path) -> str:
    """A1111's textual-inversion hash (``TI hashes``): the first 12 hex digits of the file's sha256."""
    return embedding_short_hash(path)


def vae_hash(path: str | Path) -> str:
    """A1111's ``VAE hash``: the first 10 hex digits of the file's sha256."""
    return vae_short_hash(path)


# =============================================================================================
# Reading weight files


def file_key(path: str | Path, what: str = "file") -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): a file version; ModelError when it cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise ModelError(f"{what[:1].upper()}{what[1:]} not found: {p.name}") from e
    except OSError as e:
        raise ModelError(f"Cannot read {p.name}: {e.strerror or e}") from e
    return str(p.resolve()), st.st_size, st.st_mtime_ns


def read_tensors(
    path: str | Path, what: str = "file", allow: Sequence[type] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, safetensors metadata) of a ``.safetensors`` file, or a pickle read with ``weights_only=True``
    (plus the container classes in `allow`, e.g. ``torch.nn.ParameterDict``: no code of the file runs).

    ModelError (one line naming the file) for a missing, empty, truncated or corrupt file, for an unknown format,
    and for a pickle that would run code.
    """
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise ModelError(f"{what[:1].upper()}{what[1:]} not found: {name}")
    if p.stat().st_size == 0:
        raise ModelError(f"{name} is empty (0 bytes): the download or copy did not finish")
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS:
        from safetensors import safe_open

        try:
            tensors: dict[str, Any] = {}
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError...: the same thing to the artist
            raise ModelError(f"{name} is damaged or incomplete (not a readable safetensors file): copy it again") from e
        return tensors, meta
    if suffix in PICKLE_SUFFIXES:
        import pickle

        import torch

        try:
            with torch.serialization.safe_globals(list(allow)):
                data = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" in str(e).lower() or "weights_only" in str(e):
                raise ModelError(
                    f"{name} contains program code, not only weights, and was not opened for safety; "
                    "use a .safetensors version of it"
                ) from e
            raise ModelError(f"{name} is damaged or incomplete (not a readable PyTorch file): copy it again") from e
        except Exception as e:  # noqa: BLE001 - EOFError, RuntimeError (zip), ...
            raise ModelError(f"{name} is damaged or incomplete (not a readable PyTorch file): copy it again") from e
        if not isinstance(data, Mapping):
            raise ModelError(f"{name} is not a {what}: it holds a {type(data).__name__}, not named weights")
        return dict(data), {}
    raise ModelError(f"{name}: unsupported file type {p.suffix or '(none)'}; use .safetensors (or .pt)")


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' warnings while an add-on loads (transformers prints a "LOAD REPORT" of every base
    weight "missing" from a LoRA, peft warns about several adapters, diffusers about keys it filtered)."""
    import warnings

    import diffusers
    import transformers

    t_log, d_log = transformers.utils.logging, diffusers.utils.logging
    levels = t_log.get_verbosity(), d_log.get_verbosity()
    bars = t_log.is_progress_bar_enabled(), d_log.is_progress_bar_enabled()
    t_log.set_verbosity_error()
    d_log.set_verbosity_error()
    t_log.disable_progress_bar()  # "Loading weights" of every text-encoder adapter
    d_log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        t_log.set_verbosity(levels[0])
        d_log.set_verbosity(levels[1])
        if bars[0]:
            t_log.enable_progress_bar()
        if bars[1]:
            d_log.enable_progress_bar()


# =============================================================================================
# What a pipeline is


def model_base(pipe) -> str:
    """sd1 / sd2 / sdxl for a loaded pipeline (two text encoders: SDXL; 1024-wide cross-attention: SD 2.x)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = getattr(pipe, "unet", None)
    if unet is not None and unet.config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def _label(base: str) -> str:
    return BASE_LABELS.get(base, base)


# =============================================================================================
# LoRA

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

    label = _label(model_base(pipe))
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
        elif not _is_tensor(raw[k]):
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
        raise ModelError(f"{name} is a LoRA for {_label(file_base)}; the loaded model is {_label(pipe_base)}")
    unet = getattr(pipe, "unet", None)
    try:
        with _quiet():
            state_dict, alphas = type(pipe).lora_state_dict(
                dict(raw), unet_config=unet.config if unet is not None else None
            )
    except Exception as e:  # noqa: BLE001 - diffusers' converters raise ValueError/KeyError/IndexError
        if any(k.startswith("lora_unet_") and "input_blocks" in k for k in raw) and pipe_base != "sdxl":
            raise ModelError(f"{name} is a LoRA for SDXL; the loaded model is {_label(pipe_base)}") from e
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
        with _quiet():  # peft warns that another adapter is now the active one; _activate sets them anyway
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
        with _quiet():
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


# =============================================================================================
# Textual-inversion embeddings

_EMBEDDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {keyword.lower(): LoadedEmbedding}


def embedding_vectors(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """An embedding file's vectors, (n, width) float tensors, by encoder: {"": t} or SDXL {"clip_l", "clip_g"}."""
    import torch

    def as_matrix(v: Any, what: str):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim not in (1, 2) or v.numel() == 0:
            raise ModelError(f"{name} is not a textual-inversion embedding ({what} is not a list of vectors)")
        return (v if v.ndim == 2 else v.unsqueeze(0)).detach().to(torch.float32)

    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": as_matrix(data["clip_l"], "clip_l"), "clip_g": as_matrix(data["clip_g"], "clip_g")}
    if "string_to_param" in data:  # A1111 .pt (a dict, or the original textual_inversion's ParameterDict)
        params = dict(data["string_to_param"].items()) if hasattr(data["string_to_param"], "items") else {}
        if params:
            value = params.get("*", next(iter(params.values())))
            return {"": as_matrix(value, "string_to_param")}
        raise ModelError(f"{name} is not a textual-inversion embedding (its string_to_param is empty)")
    if "emb_params" in data:  # A1111 .safetensors
        return {"": as_matrix(data["emb_params"], "emb_params")}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: {token: tensor}
        ((k, v),) = tensors.items()
        return {"": as_matrix(v, k)}
    sample = ", ".join(list(data)[:3]) or "nothing"
    raise ModelError(f"{name} is not a textual-inversion embedding (it holds {sample})")


def _width_base(width: int) -> str:
    return {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL"}.get(width, "")


def _encoders(pipe) -> dict[str, tuple[Any, Any]]:
    """Which vectors go where: "" (SD 1.x/2.x) or "clip_l" + "clip_g" (SDXL) -> (text encoder, tokenizer)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"clip_l": (pipe.text_encoder, pipe.tokenizer), "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2)}
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ModelError("This model has no text encoder: embeddings cannot be used with it")
    return {"": (pipe.text_encoder, pipe.tokenizer)}


def _check_embedding(pipe, vectors: dict[str, Any], name: str) -> None:
    base = model_base(pipe)
    encoders = _encoders(pipe)
    if set(vectors) != set(encoders):
        if "clip_g" in vectors:
            raise ModelError(f"{name} is an embedding for SDXL; the loaded model is {_label(base)}")
        width = vectors[""].shape[1]
        made = _width_base(width) or f"a {width}-wide text encoder"
        raise ModelError(f"{name} is an embedding for {made}; the loaded model is SDXL")
    for enc, tensor in vectors.items():
        text_encoder, _tok = encoders[enc]
        want = text_encoder.get_input_embeddings().weight.shape[1]
        have = tensor.shape[1]
        if have != want:
            made = f" (made for {_width_base(have)})" if _width_base(have) else ""
            which = f" {enc}" if enc else ""
            raise ModelError(
                f"{name}{which} has vectors of width {have}{made}; the loaded model's text encoder takes width {want}"
            )


@dataclass(frozen=True)
class LoadedEmbedding:
    keyword: str  # the file's stem, as written in prompts
    token: str  # the tokenizer's token (+ token_1, token_2... for more vectors)
    vectors: int
    key: tuple[str, int, int]  # the file version


def _free(token: str, tokenizers: Iterable[Any]) -> bool:
    # convert_tokens_to_ids, not get_vocab(): that builds a 49k-entry dict holding the GIL (16 ms a call).
    def known(t, tok: str) -> bool:
        tid = t.convert_tokens_to_ids(tok)
        return tid is not None and (tid != t.unk_token_id or tok == t.unk_token)

    return all(not known(t, token) and not known(t, f"{token}_1") for t in tokenizers)


def load_embeddings(pipe, paths: Iterable[str | Path]) -> list[str]:
    """Load textual-inversion embeddings into the pipeline's tokenizer(s) and text encoder(s); their keywords.

    The keyword is the file's stem (A1111's convention). Its token is the keyword in lower case (CLIP lower-cases
    prompts; a mixed-case token would never match); a keyword that is already a piece of CLIP's vocabulary (say
    "wide", which "widescreen" is made of) gets the token ``<wide>`` instead, so that no vocabulary vector is
    overwritten. Pass prompts through ``prompt_with_embeddings`` so that keywords in any case, and those, reach
    their tokens. Idempotent: a keyword already loaded from the same file version is skipped. All files are read
    and checked before any is loaded, so a refused one (ModelError) leaves the pipeline as it was.
    """
    todo: list[LoadedEmbedding] = []
    vectors_of: dict[str, dict[str, Any]] = {}
    keywords: list[str] = []
    encoders = _encoders(pipe)
    tokenizers = [tok for _te, tok in encoders.values()]
    for path in paths:
        p = Path(path)
        key = file_key(p, "embedding")
        keyword = p.stem
        keywords.append(keyword)
        if any(e.keyword.lower() == keyword.lower() for e in todo):
            raise ModelError(f"Two embeddings are named {keyword}: rename one of the files")
        done = [_EMBEDDINGS.get(tok, {}).get(keyword.lower()) for tok in tokenizers]
        if all(d is not None and d.key == key for d in done):
            continue  # already loaded, the same file version
        if any(d is not None for d in done):
            raise ModelError(
                f"An embedding named {keyword} is already loaded from another file (or an older version of "
                f"{p.name}); reload the model to use this one"
            )
        import torch

        data, _meta = read_tensors(p, "embedding", allow=(torch.nn.ParameterDict,))
        vectors = embedding_vectors(data, p.name)
        _check_embedding(pipe, vectors, p.name)
        token = next((t for t in (keyword.lower(), f"<{keyword.lower()}>") if _free(t, tokenizers)), None)
        if token is None or not keyword.strip() or any(c.isspace() for c in keyword):
            raise ModelError(f"{p.name}: {keyword!r} cannot be used as a keyword; rename the file")
        count = next(iter(vectors.values())).shape[0]
        todo.append(LoadedEmbedding(keyword, token, count, key))
        vectors_of[keyword] = vectors
    for emb in todo:
        loaded: list[tuple[Any, Any]] = []
        try:
            with _quiet():
                for enc, (text_encoder, tokenizer) in encoders.items():
                    pipe.load_textual_inversion(
                        vectors_of[emb.keyword][enc], token=emb.token, text_encoder=text_encoder, tokenizer=tokenizer
                    )
                    loaded.append((text_encoder, tokenizer))
        except Exception as e:  # noqa: BLE001 - roll back the encoders already done (SDXL), then one line
            for text_encoder, tokenizer in loaded:
                with contextlib.suppress(Exception):
                    pipe.unload_textual_inversion(emb.token, tokenizer=tokenizer, text_encoder=text_encoder)
            raise ModelError(f"Cannot use embedding {emb.keyword}: {first_line(e)}") from e
        for tokenizer in tokenizers:
            _EMBEDDINGS.setdefault(tokenizer, {})[emb.keyword.lower()] = emb
    return keywords


def loaded_embeddings(pipe) -> list[LoadedEmbedding]:
    """The embeddings load_embeddings put into this pipeline's (first) tokenizer, by keyword."""
    tok = getattr(pipe, "tokenizer", None)
    found = _EMBEDDINGS.get(tok, {}) if tok is not None else {}
    return [found[k] for k in sorted(found)]


def prompt_with_embeddings(pipe, prompt: str) -> str:
    """The prompt with every loaded keyword, as a whole word in any case, replaced by its token.

    diffusers then expands a token to its vectors (``tok tok_1 ...``) inside the pipeline; that expansion is
    case-sensitive, and a keyword that collided with CLIP's vocabulary has a token of its own, hence this step.
    A keyword inside a longer word is left alone (A1111 matches whole tokens too).
    """
    for emb in loaded_embeddings(pipe):
        pattern = r"(?<![0-9A-Za-z_])" + re.escape(emb.keyword) + r"(?![0-9A-Za-z_])"
        prompt = re.sub(pattern, lambda _m, t=emb.token: t, prompt, flags=re.IGNORECASE)
    return prompt


# =============================================================================================
# VAE override

_VAE_PREFIXES = ("first_stage_model.", "vae.")
_VAE_TOP = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_OLD_ATTN = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _vae_layout(keys: Iterable[str], name: str) -> tuple[str, str]:
    """("diffusers" | "original", prefix) of a VAE's keys; ModelError for what is not a VAE."""
    keys = list(keys)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelError(f"{name} is a full checkpoint, not a VAE")
    prefix = next((p for p in _VAE_PREFIXES if any(k.startswith(p + "encoder.") for k in keys)), "")
    stripped = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in stripped):
        return "diffusers", prefix
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in stripped):
        return "original", prefix
    sample = ", ".join(keys[:2]) or "nothing"
    raise ModelError(f"{name} is not a VAE (it holds {sample})")


def load_vae(path: str | Path, config_dir: str | Path, dtype=None):
    """An AutoencoderKL from a VAE file, built with the VAE config of a diffusers model folder (``vae/config.json``).

    Both layouts: diffusers (``encoder.down_blocks.0.resnets.0...``) and the original one
    (``encoder.down.0.block.0...``, possibly ``first_stage_model.``-prefixed), converted by diffusers'
    ``from_single_file``. ModelError for a broken file, something that is not a VAE, or a VAE of another shape.
    """
    import torch
    from diffusers import AutoencoderKL

    p = Path(path)
    name = p.name
    data, _meta = read_tensors(p, "VAE")
    if "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = dict(data["state_dict"])
    data = {k: v for k, v in data.items() if isinstance(k, str) and _is_tensor(v)}
    layout, prefix = _vae_layout(data, name)
    config_dir = Path(config_dir)
    if not (config_dir / "vae" / "config.json").is_file():
        raise ModelError(f"Cannot use {name}: the model folder {config_dir.name} has no vae/config.json")
    try:
        with _quiet():
            if layout == "diffusers":
                config = AutoencoderKL.load_config(str(config_dir), subfolder="vae", local_files_only=True)
                vae = AutoencoderKL.from_config(config)
                sd = {}
                for k, v in data.items():
                    if not k.startswith(prefix):
                        continue
                    k = k[len(prefix) :]
                    if not k.startswith(_VAE_TOP):
                        continue  # training leftovers (loss., model_ema....)
                    if ".attentions." in k:
                        for old, new in _OLD_ATTN.items():
                            k = k.replace(old, new)
                    sd[k] = v
                vae.load_state_dict(sd, strict=True)
            else:
                vae = AutoencoderKL.from_single_file(
                    data, config=str(config_dir), subfolder="vae", local_files_only=True
                )
    except (RuntimeError, ValueError, KeyError, IndexError, OSError) as e:
        raise ModelError(f"{name} does not fit this model's VAE ({_mismatch(e)})") from e
    vae.requires_grad_(False)
    vae.eval()
    if dtype is not None:
        with _quiet():  # diffusers warns about casting with to(); nothing of this VAE must stay in float32
            vae.to(dtype=dtype)
    bad = next((k for k, t in vae.state_dict().items() if t.device == torch.device("meta")), None)
    if bad:
        raise ModelError(f"{name} does not fit this model's VAE (it has no weights for {bad})")
    return vae


def _mismatch(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"size mismatch for ([\w.]+)", text)
    if m:
        return f"a layer of another size: {m.group(1)}"
    m = re.search(r'Missing key\(s\) in state_dict: "([^"]+)"', text)
    if m:
        return f"missing weights, e.g. {m.group(1)}"
    m = re.search(r'Unexpected key\(s\) in state_dict: "([^"]+)"', text)
    if m:
        return f"weights this VAE does not have, e.g. {m.group(1)}"
    return first_line(e)


_OWN_VAE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the model's U-Net -> its own VAE


def _vae_flags(src, dst) -> None:
    for flag in ("use_tiling", "use_slicing"):
        if hasattr(src, flag) and hasattr(dst, flag):
            setattr(dst, flag, getattr(src, flag))


def _own_key(pipe):
    unet = getattr(pipe, "unet", None)
    return pipe if unet is None else unet


def swap_vae(pipe, vae) -> None:
    """Decode with `vae` (moved to the current VAE's device and dtype); ``None`` puts the model's own back.

    The model's own VAE is remembered per U-Net, so every pipeline of a model (``from_pipe``) restores the same
    one, even one made after the swap."""
    if vae is None:
        restore_vae(pipe)
        return
    current = pipe.vae
    key = _own_key(pipe)
    if key not in _OWN_VAE:
        _OWN_VAE[key] = current
    if vae is current:
        return
    with _quiet():
        vae.to(device=current.device, dtype=current.dtype)
    _vae_flags(current, vae)
    pipe.vae = vae


def restore_vae(pipe) -> None:
    """Put the model's own VAE back (nothing to do when it was never swapped)."""
    own = _OWN_VAE.get(_own_key(pipe))
    if own is None or pipe.vae is own:
        return
    _vae_flags(pipe.vae, own)
    pipe.vae = own


def own_vae(pipe):
    """The model's own VAE (the current one when it was never swapped)."""
    return _OWN_VAE.get(_own_key(pipe), pipe.vae)
