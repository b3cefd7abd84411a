"""Errors the engine raises; their messages are written for the artist, one line each.

No Qt and no torch here: the UI, the CLI and the worker all import this module.
"""

from __future__ import annotations

# The one out-of-memory message of the project (UI, CLI and engine all show this text).
OUT_OF_MEMORY = "Out of memory: try a smaller size or batch"


class EngineError(Exception):
    """Base class: anything the UI or CLI shows as a plain message."""


class RequestError(EngineError, ValueError):
    """The request itself is invalid (size, sampler, strength, missing image...)."""


class ModelError(EngineError):
    """The model is missing, unreadable or of an unknown layout."""


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of `str(exc)`, stripped; for an exception with no text, its type name."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, torch's OutOfMemoryError (matched by class name, so torch is not imported), or a RuntimeError
    torch raises: its CPU allocator's ("DefaultCPUAllocator: can't allocate memory"), cuBLAS / cuDNN's ("CUDA error:
    out of memory") or Apple's ("MPS backend out of memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("can't allocate memory", "out of memory"))


def describe_error(exc: BaseException) -> str:
    """One line an artist can read: an EngineError's own first line, the out-of-memory
    message, or "Unexpected error (Type): first line" for anything else."""
    if isinstance(exc, EngineError):
        return first_line(exc)
    if is_out_of_memory(exc):
        return OUT_OF_MEMORY
    text = str(exc).strip()
    detail = first_line(text) if text else "no details"
    return f"Unexpected error ({type(exc).__name__}): {detail}"
