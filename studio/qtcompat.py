"""Work-arounds for PySide6 bugs; the one place Qt's signals are emitted from Python.

PySide6 6.12.0's `SignalInstance.emit()` returns its bool result without a new reference, so
every Python-side emit takes one reference from `True`; after a few thousand emits `True` is
"deallocated" and the interpreter aborts (bool_dealloc). 6.11.x is fine and the dependency
pin excludes 6.12 until a fixed release is verified, but an environment may still hold the
broken one. Every emit in the studio goes through `emit()`, which gives the reference back
when the installed PySide6 needs it (a test fails on any direct `.emit(` call).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

_PROBE_EMITS = 64


def emit_steals_bool_ref(make_signal: Callable[[], Any] | None = None, n: int = _PROBE_EMITS) -> bool:
    """Emit a probe signal n times; True when that took (about) n references from True.

    What the probe took is given back, so probing never leaves True short.
    """
    if make_signal is None:

        class _Probe(QObject):
            sig = Signal()

        holder = _Probe()
        signal = holder.sig
    else:
        signal = make_signal()
    before = sys.getrefcount(True)
    for _ in range(n):
        signal.emit()
    lost = before - sys.getrefcount(True)
    for _ in range(max(0, lost)):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return lost >= n - 4


def make_emit(steals_bool_ref: bool) -> Callable[..., None]:
    """An emit helper for a PySide6 whose emit() does (or does not) leak a reference to its result."""

    def safe_emit(signal, *args) -> None:
        result = signal.emit(*args)
        if steals_bool_ref and isinstance(result, bool):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))

    return safe_emit


EMIT_STEALS_BOOL_REF = emit_steals_bool_ref()
emit = make_emit(EMIT_STEALS_BOOL_REF)
emit.__doc__ = "signal.emit(*args), safe on PySide6 versions whose emit() leaks a reference to True."

__all__ = ["EMIT_STEALS_BOOL_REF", "emit", "emit_steals_bool_ref", "make_emit"]
