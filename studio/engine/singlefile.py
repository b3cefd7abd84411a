"""Single-file checkpoints (A1111 / ComfyUI ``.safetensors``, pickle ``.ckpt``) loaded offline.

``from_single_file`` is always given ``config=`` one of the diffusers-format folders shipped in
``resources/configs/`` (without it diffusers reaches for the hub, whatever ``local_files_only`` says), and the
tokenizers built here from the one shared CLIP BPE in ``resources/tokenizer/`` plus that folder's settings. A
pickle is scanned first (``modelfiles.pickle_globals``: its imports, read without running it) and then read by
diffusers with ``torch.load(weights_only=True)``; anything needing more than tensors is refused with the one wording
of ``weights.pickle_with_code``.

SD 2.x v-prediction is not in the keys: A1111's test decides (the U-Net run once on a constant input at
t = 999: a v-model's output is about minus its input), unless the user set it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

from ..core.errors import ModelError, first_line, is_out_of_memory
from ..core.modelfiles import ARCHS, PICKLE_SUFFIXES, pickle_globals
from ..paths import TOKENIZER_DIR, configs_dir
from .weights import code_refusal, damaged, pickle_with_code

log = logging.getLogger(__name__)


def config_folder(arch: str, root: Path | None = None) -> Path:
    folder = Path(root or configs_dir()) / arch
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"The configuration for {ARCHS.get(arch, (arch,))[0]} models is missing ({folder})")
    return folder


def make_tokenizer(settings_dir: Path):
    """A CLIPTokenizer from the shared BPE files and one folder's tokenizer settings (pad token, lengths)."""
    from transformers import CLIPTokenizer

    try:
        settings = json.loads((settings_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    keep = ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token", "do_lower_case", "errors")
    kwargs = {k: settings[k] for k in keep if isinstance(settings.get(k), (str, int, bool))}
    # from_pretrained, not the constructor: transformers 5 renamed its vocab_file/merges_file arguments and
    # silently ignores the old names (a 3-token vocabulary).
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, **kwargs)


def check_pickle(path: Path) -> None:
    """Refuse a pickle that imports anything but tensor rebuilding (before torch opens it)."""
    bad = [g for g in pickle_globals(path) if not _allowed_global(g)]
    if bad:
        raise pickle_with_code(path.name, bad)


# What a plain state dict's pickle imports (torch's weights_only unpickler allows about these). Anything else
# (pytorch_lightning callbacks, builtins.eval, os.system...) is refused before torch opens the file.
_ALLOWED = re.compile(
    r"^(torch\._utils\._rebuild_[a-z_0-9]+|torch\.[A-Za-z0-9]*Storage|torch\.storage\.(TypedStorage|UntypedStorage)"
    r"|torch\._tensor\._rebuild_from_type_v2|torch\.nn\.parameter\.Parameter|torch\.Size|torch\.device"
    r"|torch\.(float|bfloat|half|int|uint|bool|complex|double|long|short)[0-9]*"
    r"|collections\.OrderedDict|builtins\.(set|dict|list|tuple|int|float|str|bytearray)|_codecs\.encode"
    r"|numpy\.core\.multiarray\._reconstruct|numpy\.(ndarray|dtype))$"
)


def _allowed_global(name: str) -> bool:
    return bool(_ALLOWED.match(name))


def load_single_file(
    path: Path,
    arch: str,
    *,
    dtype: Any,
    prediction: str = "auto",
    configs_root: Path | None = None,
) -> tuple[Any, str]:
    """The pipeline for a checkpoint of architecture ``arch`` (on the CPU), and the prediction type used."""
    import diffusers

    if arch not in ARCHS:
        raise ModelError(f"{path.name}: unknown architecture {arch!r}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        check_pickle(path)
    folder = config_folder(arch, configs_root)
    cls = getattr(diffusers, ARCHS[arch][1])
    kwargs: dict[str, Any] = {"tokenizer": make_tokenizer(folder / "tokenizer")}
    if (folder / "tokenizer_2").is_dir():
        kwargs["tokenizer_2"] = make_tokenizer(folder / "tokenizer_2")
    if arch.startswith(("sd1", "sd2")):
        kwargs.update(safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    elif arch == "x4-upscaler":
        kwargs.update(safety_checker=None, feature_extractor=None, watermarker=None)
    converted = _read_converted(path, dtype) if path.suffix.lower() == ".safetensors" else None
    try:
        with _checkpoint_is(converted):
            pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                                        **kwargs)  # fmt: skip
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - shape mismatches, corrupt tensors: one line for the artist
        refusal = code_refusal(e, path.name)  # diffusers' torch.load(weights_only=True) refused what the scan let by
        if refusal is not None:
            raise refusal from e
        if isinstance(e, pickle.UnpicklingError):
            raise damaged(path.name) from e
        if is_out_of_memory(e):
            raise
        raise ModelError(f"Cannot load {path.name} as {ARCHS[arch][0]}: {first_line(e)}") from e
    used = pipe.scheduler.config.get("prediction_type", "epsilon")
    if arch in ("sd2", "sd2-inpaint"):
        want = prediction if prediction in ("epsilon", "v_prediction") else detect_v_prediction(pipe.unet)
        if want != used:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=want)
            if want == "v_prediction" and arch == "sd2":
                pipe.unet.register_to_config(sample_size=96, upcast_attention=True)  # as SD 2.x 768-v ships
                for module in pipe.unet.modules():
                    if hasattr(module, "upcast_attention"):
                        module.upcast_attention = True  # fp16 attention overflows in these models otherwise
            used = want
    elif prediction in ("epsilon", "v_prediction") and prediction != used:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)
        used = prediction
    return pipe, used


_TORCH_DTYPES = ("F16", "BF16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL")


def _read_converted(path: Path, dtype) -> dict | None:
    """The file's tensors read one by one and converted to `dtype`, when most of its weights are of another float
    type (an fp16 file on the CPU's fp32); None when they already are: then diffusers memory-maps the file and
    uses the tensors in place (1.1x the file's size at peak).

    Why: given an fp16 file, diffusers keeps the whole mapped checkpoint while it builds fp32 copies of every
    component (3.2x the file at peak, measured). Reading each tensor with read() and converting it at once leaves
    only the converted weights in memory, plus one tensor in flight.
    """
    import torch

    from ..core.modelfiles import read_header

    header = read_header(path)
    names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
    want = names.get(dtype)
    float_bytes: dict[str, int] = {}
    for k, d in header.dtypes.items():
        if d in ("F16", "BF16", "F32", "F64"):
            a, b = header.offsets[k]
            float_bytes[d] = float_bytes.get(d, 0) + (b - a)
    if want is None or not float_bytes or max(float_bytes, key=float_bytes.get) == want:
        return None
    mapping = {n: getattr(torch, t) for n, t in zip(_TORCH_DTYPES, ("float16", "bfloat16", "float32", "float64",
               "int64", "int32", "int16", "int8", "uint8", "bool"), strict=True)}  # fmt: skip
    out: dict = {}
    # One scratch buffer for the file's bytes, reused: only the converted tensors are new memory.
    scratch = torch.empty(max(b - a for a, b in header.offsets.values()) or 1, dtype=torch.uint8)
    with open(path, "rb", buffering=0) as f:
        for k in sorted(header.offsets, key=lambda key: header.offsets[key][0]):  # file order: sequential reads
            a, b = header.offsets[k]
            src = mapping.get(header.dtypes[k])
            if src is None:
                return None  # an exotic dtype (F8...): leave it to diffusers
            if b == a:
                out[k] = torch.empty(header.shapes[k], dtype=src)
                continue
            f.seek(header.data_offset + a)
            view = scratch[: b - a]
            f.readinto(memoryview(view.numpy()))
            t = view.view(src).reshape(header.shapes[k])
            # copy=True: a tensor already of `dtype` must not stay a view of the reused scratch buffer
            out[k] = t.to(dtype, copy=True) if t.is_floating_point() else t.clone()
    return out


@contextlib.contextmanager
def _checkpoint_is(checkpoint: dict | None):
    """from_single_file reading `checkpoint` instead of the file (it takes a path only, never a dict)."""
    if checkpoint is None:
        yield
        return
    import diffusers.loaders.single_file as single_file

    real = single_file.load_single_file_checkpoint
    single_file.load_single_file_checkpoint = lambda *_a, **_k: checkpoint
    try:
        yield
    finally:
        single_file.load_single_file_checkpoint = real


def detect_v_prediction(unet) -> str:
    """A1111's test: run the U-Net once on 0.5 everywhere at t = 999; an output below the input by more than 1
    on average is a v-prediction model (it predicts about -x0 there), an epsilon model gives about the noise."""
    import torch

    p = next(unet.parameters())
    width = int(unet.config.cross_attention_dim)
    with torch.no_grad():
        x = torch.full((1, int(unet.config.in_channels), 8, 8), 0.5, dtype=p.dtype, device=p.device)
        cond = torch.full((1, 2, width), 0.5, dtype=p.dtype, device=p.device)
        out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=cond).sample
        score = float((out.float() - x[:, : out.shape[1]].float()).mean())
    log.info("v-prediction test: %.3f (< -1 means v-prediction)", score)
    return "v_prediction" if score < -1 else "epsilon"
