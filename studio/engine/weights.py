"""The one safe reader of weight files: a ``.safetensors`` file, or a pickle state dict (``.pt``, ``.pth``, ``.ckpt``,
``.bin``) read only with ``torch.load(weights_only=True)``.

A pickle that needs more than tensors and plain containers would run code when loaded: it is refused, unread, with
one wording (``pickle_with_code``) wherever the studio meets one (add-ons, upscalers, single-file checkpoints).
Every failure is a ModelError of one line naming the file. torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ModelError
from ..core.modelfiles import PICKLE_SUFFIXES

SAFETENSORS = ".safetensors"


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


def pickle_with_code(name: str, found: Iterable[str] = ()) -> ModelError:
    """THE refusal of a pickle that holds program code (``found``: what it imports beyond weights, when known)."""
    shown = sorted(set(found))[:3]
    what = f" ({', '.join(shown)})" if shown else ""
    return ModelError(
        f"{name} holds program code, not only weights{what}: a pickle like this runs code when loaded, so it was "
        "not opened; use a .safetensors version of it"
    )


# Opcodes that import or build objects: torch's weights_only unpickler implements none of them (GLOBAL it checks),
# so "Unsupported operand" naming one is a pickle that wants code (a STACK_GLOBAL from the memo fools a scan).
_CODE_OPCODES = {ord("i"), ord("o"), 0x82, 0x83, 0x84, 0x92, 0x93}  # INST OBJ EXT1 EXT2 EXT4 NEWOBJ_EX STACK_GLOBAL
_CODE_REFUSALS = re.compile(r"call reduce for unrecognized function|Can only (create new object|build) ")


def refused_globals(error: BaseException) -> list[str] | None:
    """What torch's weights_only unpickler refused to import ([] when it names nothing), or None when ``error`` is no
    such refusal ("Unsupported operand" of a plain opcode: not a pickle at all)."""
    text = str(error)
    found = re.findall(r"GLOBAL ([\w.]+)", text)
    if found or "global" in text.lower() or _CODE_REFUSALS.search(text):
        return found
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand and int(operand.group(1)) in _CODE_OPCODES:
        return []
    return None


def code_refusal(error: BaseException, name: str) -> ModelError | None:
    """``pickle_with_code`` when torch's weights_only unpickler refused the file as code, whatever the studio's own
    pre-scan said; found in ``error`` or what it was raised from or while handling (diffusers raises its own OSError
    while handling torch's). None when it is no such refusal."""
    import pickle

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, pickle.UnpicklingError):
            found = refused_globals(e)
            if found is not None:
                return pickle_with_code(name, found)
        e = e.__cause__ or e.__context__
    return None


def damaged(name: str, kind: str = "PyTorch") -> ModelError:
    return ModelError(f"{name} is damaged or incomplete (not a readable {kind} file): copy it again")


def file_key(path: str | Path, what: str = "file") -> tuple[str, int, int]:
    """(resolved path, size, mtime in ns): a file version; ModelError when it cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise ModelError(f"{_capital(what)} not found: {p.name}") from e
    except OSError as e:
        raise ModelError(f"Cannot read {p.name}: {e.strerror or e}") from e
    return str(p.resolve()), st.st_size, st.st_mtime_ns


def torch_load(path: str | Path, allow: Sequence[type] = (), mmap: bool = False) -> Any:
    """What a pickle holds, read with ``weights_only=True`` (plus the container classes in ``allow``, e.g.
    ``torch.nn.ParameterDict``): no code of the file runs. ``mmap``: a large zip-format file is not read into memory
    before its keys are looked at (a legacy, non-zip file is read whole).

    ModelError for a pickle that would run code (``pickle_with_code``), a TorchScript file, and a damaged one.
    """
    import torch

    p = Path(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            if mmap:
                try:
                    return torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - EOFError, a zip that is not one, ...: the same thing to the artist
        refusal = code_refusal(e, p.name)
        if refusal is not None:
            raise refusal from e
        if isinstance(e, RuntimeError) and "TorchScript" in str(e):
            raise ModelError(f"{p.name}: a TorchScript file, which is not supported; use .safetensors") from e
        raise damaged(p.name) from e


def read_tensors(
    path: str | Path, what: str = "file", allow: Sequence[type] = (), mmap: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, safetensors metadata) of a ``.safetensors`` file, or of a pickle read by ``torch_load``.

    ModelError (one line naming the file) for a missing, empty, truncated or corrupt file, for an unknown format,
    for a pickle that holds no named weights and for a pickle that would run code.
    """
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise ModelError(f"{_capital(what)} not found: {name}")
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
            raise damaged(name, "safetensors") from e
        return tensors, meta
    if suffix in PICKLE_SUFFIXES:
        data = torch_load(p, allow, mmap)
        if not isinstance(data, Mapping):
            raise ModelError(f"{name} is not {_article(what)}: it holds a {type(data).__name__}, not named weights")
        return dict(data), {}
    raise ModelError(f"{name}: unsupported file type {p.suffix or '(none)'}; use .safetensors (or .pt)")


def open_safetensors(path: str | Path):
    """A safetensors file opened for reading tensors one by one (``safe_open``); ModelError when it is damaged."""
    from safetensors import safe_open

    p = Path(path)
    try:
        return safe_open(str(p), framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001 - a bad header, a truncated file
        raise damaged(p.name, "safetensors") from e
