"""What a model file is, from its header alone: no weights read, no torch, no pickle run.

A ``.safetensors`` file starts with an 8-byte little-endian length and a JSON header naming every tensor with
its dtype, shape and byte range; that is enough to tell a checkpoint (and its architecture) from a VAE, a LoRA,
an embedding or an upscaler, and to notice a truncated file before torch sees it. For pickle files
(``.ckpt``, ``.pt``, ``.pth``) the key names are read by walking the pickle's opcodes with ``pickletools``,
which never executes them; shapes are not known there until the file is loaded with
``torch.load(weights_only=True)``.

Architecture ids (``ARCHS``) name the config folders shipped in ``resources/configs/``.
"""

from __future__ import annotations

import json
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError, first_line

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MODEL_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit

# id -> (label, diffusers pipeline class for its main mode)
ARCHS: dict[str, tuple[str, str]] = {
    "sd1": ("SD 1.x", "StableDiffusionPipeline"),
    "sd1-inpaint": ("SD 1.x inpainting", "StableDiffusionInpaintPipeline"),
    "sd2": ("SD 2.x", "StableDiffusionPipeline"),
    "sd2-v": ("SD 2.x v-prediction", "StableDiffusionPipeline"),
    "sd2-inpaint": ("SD 2.x inpainting", "StableDiffusionInpaintPipeline"),
    "sdxl": ("SDXL", "StableDiffusionXLPipeline"),
    "sdxl-inpaint": ("SDXL inpainting", "StableDiffusionXLInpaintPipeline"),
    "x4-upscaler": ("SD x4 upscaler", "StableDiffusionUpscalePipeline"),
}
FAMILY = {  # arch -> the engine's model family
    "sd1": "sd",
    "sd1-inpaint": "sd",
    "sd2": "sd",
    "sd2-v": "sd",
    "sd2-inpaint": "sd",
    "sdxl": "sdxl",
    "sdxl-inpaint": "sdxl",
    "x4-upscaler": "upscale",
}
BASE = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}  # what a LoRA / embedding / VAE is for

UNET = "model.diffusion_model."
_SD1_TEXT = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.embeddings.")
_SD2_TEXT = "cond_stage_model.model."
_XL_TEXT_L = "conditioner.embedders.0.transformer."
_XL_TEXT_G = "conditioner.embedders.1.model."
_XL_REFINER_G = "conditioner.embedders.0.model."


@dataclass(frozen=True)
class Header:
    """A weights file's tensor names -> shapes (shapes empty for pickles, where they are not known yet)."""

    path: Path
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    data_offset: int = 0  # where the tensor bytes start (safetensors): the "addnet" hash skips what is before
    pickle: bool = False
    offsets: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # byte range of each tensor's data

    @property
    def keys(self) -> Iterable[str]:
        return self.shapes.keys()


def read_header(path: str | Path) -> Header:
    """The header of a ``.safetensors`` file, or the key names of a pickle; ModelError for anything broken."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ModelError(f"Cannot read {p.name}: {e.strerror or e}") from e
    if size == 0:
        raise ModelError(f"{p.name} is empty (0 bytes): the download or copy did not finish")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return Header(p, dict.fromkeys(pickle_keys(p), ()), pickle=True)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{p.name} is truncated ({size} bytes): not a complete safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                raise ModelError(f"{p.name} is not a safetensors file, or it is truncated (its header is unreadable)")
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"Cannot read {p.name}: {e.strerror or e}") from e
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except RecursionError as e:  # "[[[[..." 100000 deep: json's decoder recurses
        raise ModelError(f"{p.name} is not a safetensors file, or it is corrupt (its header nests too deep)") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{p.name} is not a safetensors file, or it is corrupt (header: {first_line(e)[:120]})") from e
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    offsets: dict[str, tuple[int, int]] = {}
    end = 0
    try:
        for k, v in meta.items():
            if k == "__metadata__":
                continue
            shapes[k] = tuple(_count(d) for d in v["shape"])
            dtypes[k] = str(v["dtype"])
            a, b = (_count(o) for o in v["data_offsets"])
            if b < a:
                raise ValueError("data_offsets run backwards")
            offsets[k] = (a, b)
            end = max(end, b)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelError(f"{p.name}: the safetensors header is corrupt ({first_line(e)[:120]})") from e
    if 8 + n + end > size:
        have = size - 8 - n
        raise ModelError(
            f"{p.name} is truncated: its header names {end:,} bytes of weights but the file holds {max(have, 0):,}; "
            "download or copy it again"
        )
    extra = meta.get("__metadata__") or {}
    return Header(p, shapes, dtypes, extra if isinstance(extra, dict) else {}, data_offset=8 + n, offsets=offsets)


def _count(value: object) -> int:
    """A shape dimension or byte offset as safetensors writes it: a whole number >= 0 (not 1e400, -1, 1.5 or "4",
    which json hands over as inf, a float or a string)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{str(value)[:20]} is not a size")
    return value


def _pickle_bytes(path: Path) -> bytes:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not names:
                    raise ModelError(f"{path.name} is not a PyTorch checkpoint (a zip with no data.pkl)")
                return z.read(names[0])
        with open(path, "rb") as f:
            return f.read(64 * 1024 * 1024)  # a legacy file's pickle comes first; its tensors after it
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelError(f"{path.name} is corrupt or truncated ({e})") from e


def _walk_pickle(path: Path) -> tuple[list[str], list[str]]:
    """(string constants, imported globals "module.name") of a torch pickle, by reading its opcodes only."""
    data = _pickle_bytes(path)
    strings: list[str] = []
    globals_: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE") and isinstance(arg, str):
                strings.append(arg)
            elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                globals_.append(arg.replace(" ", "."))
            elif name == "STACK_GLOBAL":
                globals_.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            elif name in ("REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ") and not globals_:
                globals_.append("?")  # an object built from nothing imported: not a state dict
            elif name == "STOP":
                break
    except Exception as e:  # noqa: BLE001 - any parse failure means the same thing to the artist
        if not strings:
            raise ModelError(f"{path.name} is not a PyTorch checkpoint, or it is corrupt ({e})") from e
    return strings, globals_


def pickle_keys(path: Path) -> list[str]:
    """The string constants of a torch pickle (zip or legacy), found without running it: they hold the keys."""
    return _walk_pickle(path)[0]


def pickle_globals(path: Path) -> list[str]:
    """What a torch pickle imports ("torch._utils._rebuild_tensor_v2", ...), found without running it."""
    return _walk_pickle(path)[1]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _strip(shapes: Mapping[str, tuple[int, ...]]) -> Mapping[str, tuple[int, ...]]:
    """Some tools save the whole Lightning module (``state_dict.`` / ``model.`` wrappers): drop the wrapper."""
    for prefix in ("state_dict.", "module."):
        if any(k.startswith(prefix + UNET) for k in shapes):
            return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    return shapes


def _any(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_checkpoint(header: Header) -> str:
    """The architecture id of a single-file checkpoint (see ARCHS), or ModelError saying what was found.

    From tensor names and shapes only (diffusers' ``infer_diffusers_model_type`` looks at the same things):
    the text encoder's layout tells SD 1.x (CLIP ViT-L), SD 2.x (OpenCLIP) and SDXL (both, as
    ``conditioner.embedders``); the U-Net's input convolution tells 4 (text-to-image), 9 (inpainting) or 7 (the
    x4 upscaler: latent + low-res image) channels. SD 2.x epsilon vs v-prediction is not in the keys: "sd2" is
    returned and the loader decides (one U-Net call, or the user's setting).
    """
    shapes = _strip(header.shapes)
    keys = list(shapes)
    name = header.path.name
    if not _any(keys, UNET):
        raise ModelError(f"{name} is not a Stable Diffusion checkpoint: {describe_found(header)}")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight", ())
    in_ch = conv_in[1] if len(conv_in) == 4 else None
    if _any(keys, _XL_TEXT_G) and _any(keys, _XL_TEXT_L):
        base = "sdxl"
    elif _any(keys, _XL_REFINER_G):
        raise ModelError(f"{name} is an SDXL refiner; only SDXL base models are supported (use it for img2img later)")
    elif _any(keys, _SD2_TEXT):
        base = "sd2"
    elif _any(keys, *_SD1_TEXT):
        base = "sd1"
    else:
        # No text encoder in the file (some tools strip it): the cross-attention width decides.
        width = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
        if width == 768:
            base = "sd1"
        elif width == 1024:
            base = "sd2"
        elif width == 2048:
            base = "sdxl"
        else:
            raise ModelError(f"{name}: a U-Net without a text encoder this studio recognises ({describe_found(header)})")
    if header.pickle and in_ch is None:
        return base  # shapes unknown before loading; the loader checks the input channels
    if in_ch == 4:
        return base
    if in_ch == 9:
        return f"{base}-inpaint"
    if in_ch == 7 and base == "sd2":
        return "x4-upscaler"
    if in_ch == 8:
        raise ModelError(f"{name}: an 8-channel U-Net (an InstructPix2Pix model) is not supported")
    raise ModelError(f"{name}: a {BASE.get(base, base)} U-Net with {in_ch} input channels is not supported")


def describe_found(header: Header, n: int = 3) -> str:
    keys = list(header.keys)
    if not keys:
        return "it holds no tensors"
    prefixes = sorted({k.split(".")[0] for k in keys})
    sample = ", ".join(keys[:n])
    return f"{len(keys)} tensors under {', '.join(prefixes[:5])}{'...' if len(prefixes) > 5 else ''} (e.g. {sample})"


# ---------------------------------------------------------------------------------------------
# Every other kind of file an artist's model folders hold


@dataclass(frozen=True)
class ModelFile:
    """One entry of the model library."""

    path: Path
    kind: str  # checkpoint, diffusers, vae, lora, embedding, upscaler, controlnet, unknown
    arch: str = ""  # checkpoints: an ARCHS id; add-ons: "sd1", "sd2", "sdxl" or ""
    size: int = 0  # bytes (a folder: its weight files)
    note: str = ""  # why it is unknown or broken
    control: str = ""  # ControlNets: the control type the file name or metadata says (canny, depth...), or ""

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() or self.path.suffix else self.path.name

    @property
    def arch_label(self) -> str:
        if self.kind in ("checkpoint", "diffusers"):
            return ARCHS.get(self.arch, (self.arch or "?",))[0]
        return BASE.get(self.arch, self.arch)


_LORA = re.compile(r"(lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up|hada_w1|lokr_w1|\.alpha$|lora_te\d?_)")
_UPSCALER_HINTS = (
    "conv_first.",
    "model.0.weight",
    "body.0.",
    "conv_after_body.",
    "layers.0.residual_group.",
    "conv_up1.",
    "upconv1.",
    "conv_hr.",
    "params_ema.",
    "params.",
)


def lora_base(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """sd1 / sd2 / sdxl for a LoRA from its key names and shapes (kohya, diffusers and PEFT names); "" when the
    file does not tell. The library lists by it; the loader refuses a LoRA of another base with it."""
    keys = list(shapes)
    if any(k.startswith(("lora_te1_", "lora_te2_", "te1.", "te2.", "text_encoder_2.")) for k in keys):
        return "sdxl"

    def down(k: str, s) -> bool:
        return ("lora_down" in k or "lora_A" in k or "lora.down" in k) and len(s) == 2

    for k, s in shapes.items():
        if down(k, s) and ("attn2_to_k" in k or "attn2.to_k" in k or "attn2.processor.to_k" in k):
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(int(s[1]), "")
    for k, s in shapes.items():
        if down(k, s) and ("self_attn_q_proj" in k or "self_attn.q_proj" in k or "self_attn.to_q" in k):
            return {768: "sd1", 1024: "sd2"}.get(int(s[1]), "")
    if any("input_blocks_7_1_transformer_blocks_9" in k or "input_blocks.7.1.transformer_blocks.9" in k for k in keys):
        return "sdxl"
    return ""


def embedding_vectors(header: Header) -> dict[str, tuple[int, ...]]:
    """An embedding's tensors by encoder ("clip_l" / "clip_g" for SDXL, "" for SD 1.x / 2.x), or {}."""
    s = header.shapes
    if "clip_l" in s and "clip_g" in s:
        return {"clip_l": s["clip_l"], "clip_g": s["clip_g"]}
    if "emb_params" in s:
        return {"": s["emb_params"]}
    params = [k for k in s if k.startswith("string_to_param.")]
    if len(params) == 1:
        return {"": s[params[0]]}
    if len(s) == 1:
        (k, shape), = s.items()
        if len(shape) in (1, 2) and "." not in k:
            return {"": shape}
    return {}


def classify_header(header: Header) -> ModelFile:
    """Checkpoint (with architecture), VAE, LoRA, embedding, upscaler, or unknown (saying what was found)."""
    p = header.path
    size = _size(p)
    keys = list(header.keys)
    shapes = _strip(header.shapes)
    control = controlnet_kind(header)  # before the checkpoint test: old ControlNet files hold a whole U-Net too
    if control is not None:
        return control
    if _any(shapes, UNET):
        try:
            return ModelFile(p, "checkpoint", detect_checkpoint(header), size)
        except ModelError as e:
            return ModelFile(p, "unknown", "", size, note=str(e))
    if any(_LORA.search(k) for k in keys[:200]):
        return ModelFile(p, "lora", "" if header.pickle else lora_base(header.shapes), size)
    if header.pickle and ("string_to_param" in keys or "string_to_token" in keys):
        return ModelFile(p, "embedding", "", size)
    vectors = {} if header.pickle else embedding_vectors(header)
    if vectors:
        width = next(iter(vectors.values()))[-1]
        arch = "sdxl" if "clip_g" in vectors else {768: "sd1", 1024: "sd2"}.get(width, "")
        return ModelFile(p, "embedding", arch, size)
    vae_keys = [k.removeprefix("first_stage_model.").removeprefix("vae.") for k in keys]
    if vae_keys and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in vae_keys):
        return ModelFile(p, "vae", "", size)
    if any(k.startswith(_UPSCALER_HINTS) for k in keys):
        return ModelFile(p, "upscaler", "", size)
    return ModelFile(p, "unknown", "", size, note=f"{p.name} is not a model this studio knows: {describe_found(header)}")


# ---------------------------------------------------------------------------------------------
# ControlNets (and the control add-ons the studio does not run: T2I-Adapters, control-LoRAs)

CONTROL_PREFIX = "control_model."  # lllyasviel's (A1111's) files; ComfyUI's and kohya's conversions drop it
# Control types as file names say them (control_v11p_sd15_canny, diffusers_xl_depth_full, t2i-adapter_xl_sketch...).
CONTROL_TYPES: tuple[tuple[str, str], ...] = (
    ("canny", "canny"), ("depth", "depth"), ("lineart", "lineart"), ("softedge", "softedge"), ("hed", "softedge"),
    ("pidi", "softedge"), ("scribble", "scribble"), ("sketch", "scribble"), ("openpose", "pose"), ("pose", "pose"),
    ("tile", "tile"), ("inpaint", "inpaint"), ("seg", "seg"), ("normal", "normal"), ("mlsd", "mlsd"),
    ("shuffle", "shuffle"), ("ip2p", "ip2p"), ("qrcode", "qrcode"), ("union", "union"),
)


def control_type(name: str, metadata: Mapping[str, str] | None = None) -> str:
    """The control type a ControlNet's file name (or its safetensors metadata) says, or ""."""
    texts = [name.lower()] + [str(v).lower() for k, v in (metadata or {}).items() if "control" in k.lower()]
    for text in texts:
        for word, kind in CONTROL_TYPES:
            if re.search(rf"(^|[^a-z]){word}", text):
                return kind
    return ""


def _cross_width_base(shapes: Mapping[str, tuple[int, ...]]) -> str:
    width = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width or 0, "")


def _name_base(name: str) -> str:
    low = name.lower()
    if re.search(r"(sdxl|[^a-z]xl[^a-z]|xl$)", low):
        return "sdxl"
    if re.search(r"sd2|sd21|sd-2|v2[^a-z0-9]", low):
        return "sd2"
    if re.search(r"sd15|sd1[^0-9]|v11|control_sd15|sd-1", low):
        return "sd1"
    return ""


def controlnet_layout(keys: Iterable[str]) -> str:
    """"original" (lllyasviel's layout: input_hint_block, zero_convs, middle_block_out, with or without
    control_model.), "diffusers" (controlnet_cond_embedding, controlnet_down_blocks), or ""."""
    ks = set(keys)
    if {"input_hint_block.0.weight", "zero_convs.0.0.weight"} <= ks or {
        CONTROL_PREFIX + "input_hint_block.0.weight", CONTROL_PREFIX + "zero_convs.0.0.weight"} <= ks:
        return "original"
    if {"controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight"} <= ks:
        return "diffusers"
    return ""


def controlnet_kind(header: Header) -> ModelFile | None:
    """A ControlNet (kind "controlnet", arch sd1 / sd2 / sdxl from its cross-attention width, else its name), or a
    T2I-Adapter / control-LoRA (kind "unknown", the note naming it: the studio does not run those), or None."""
    p = header.path
    keys = list(header.keys)
    if any(k == "lora_controlnet" or k.endswith(".lora_controlnet") for k in keys):
        return ModelFile(p, "unknown", _name_base(p.name), _size(p), note=(
            f"{p.name} is a control-LoRA (Stability's LoRA-compressed ControlNet): not supported here; use a full "
            "ControlNet of the same type"))
    if any(k.startswith(("adapter.conv_in.", "adapter.body.", "body.0.in_conv.")) for k in keys) or (
        "conv_in.weight" in header.shapes and any(k.startswith("body.0.block1.") for k in keys)
    ):
        return ModelFile(p, "unknown", _name_base(p.name), _size(p), note=(
            f"{p.name} is a T2I-Adapter: not supported here; use a ControlNet of the same type"))
    layout = controlnet_layout(keys)
    if not layout:
        return None
    base = "" if header.pickle else _cross_width_base(header.shapes)
    if not base and any("input_blocks.7.1.transformer_blocks.9" in k or "down_blocks.2.attentions.0.transformer_blocks.9"
                        in k for k in keys):
        base = "sdxl"
    if not base and any("label_emb.0.0" in k or k.startswith("add_embedding.") for k in keys):
        base = "sdxl"  # SDXL's text_time embedding; SD 1.x / 2.x ControlNets have none
    base = base or _name_base(p.name)
    return ModelFile(p, "controlnet", base, _size(p), control=control_type(p.stem, header.metadata))


def controlnet_folder(folder: Path) -> ModelFile | None:
    """A diffusers ControlNet folder (config.json of ControlNetModel beside its weights), or None."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or cfg.get("_class_name") not in ("ControlNetModel", "T2IAdapter"):
        return None
    if cfg.get("_class_name") == "T2IAdapter":
        return ModelFile(folder, "unknown", "", _folder_size(folder),
                         note=f"{folder.name} is a T2I-Adapter: not supported here; use a ControlNet of the same type")
    width = cfg.get("cross_attention_dim")
    base = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width if isinstance(width, int) else 0, "")
    return ModelFile(folder, "controlnet", base or _name_base(folder.name), _folder_size(folder),
                     control=control_type(folder.name))


def classify(path: str | Path) -> ModelFile:
    """Classify one file or diffusers folder; never raises (a broken file is "unknown" with a note): one crafted file
    in a model folder must not take the library, and so every generation and the window, down with it."""
    p = Path(path)
    try:
        if p.is_dir():
            if (p / "model_index.json").is_file():
                arch = _diffusers_arch(p)
                return ModelFile(p, "diffusers", arch, _folder_size(p))
            if (control := controlnet_folder(p)) is not None:
                return control
            return ModelFile(p, "unknown", note="a folder with no model_index.json")
        return classify_header(read_header(p))
    except ModelError as e:
        return ModelFile(p, "unknown", "", _size(p), note=first_line(e))
    except Exception as e:  # noqa: BLE001 - a header no check above foresaw: the file is unusable, nothing else
        return ModelFile(p, "unknown", "", _size(p), note=f"{p.name} cannot be read as a model ({type(e).__name__})")


def _diffusers_arch(folder: Path) -> str:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    cls = str(index.get("_class_name", ""))
    in_ch = int(unet.get("in_channels", 4))
    if "Upscale" in cls:
        return "x4-upscaler"
    if "XL" in cls:
        return "sdxl-inpaint" if in_ch == 9 else "sdxl"
    base = "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"
    return f"{base}-inpaint" if in_ch == 9 else base


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _folder_size(p: Path) -> int:
    return sum(_size(f) for f in p.rglob("*") if f.suffix.lower() in MODEL_FILE_SUFFIXES)


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
