"""The PySide6 6.12.0 emit() work-around: detected, repaired, and used everywhere."""

import ctypes
import re
import sys
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from studio.qtcompat import EMIT_STEALS_BOOL_REF, emit, emit_steals_bool_ref, make_emit

STUDIO = Path(__file__).resolve().parents[2] / "studio"


class StealingSignal:
    """Stands in for 6.12.0's SignalInstance: emit() returns True without the reference it owes."""

    def __init__(self):
        self.calls = 0

    def emit(self, *args):
        self.calls += 1
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(True))
        return True


def test_the_probe_tells_a_stealing_emit_from_a_sound_one():
    assert emit_steals_bool_ref(StealingSignal) is True

    class Sound:
        def emit(self, *args):
            return True

    assert emit_steals_bool_ref(Sound) is False
    assert EMIT_STEALS_BOOL_REF is False  # the pinned PySide6 (<6.12) is sound


def test_the_probe_gives_back_what_it_took():
    before = sys.getrefcount(True)
    emit_steals_bool_ref(StealingSignal, n=200)
    assert abs(sys.getrefcount(True) - before) <= 2


def test_safe_emit_repairs_a_stealing_emit():
    signal, n = StealingSignal(), 5000
    before = sys.getrefcount(True)
    safe = make_emit(steals_bool_ref=True)
    for i in range(n):
        safe(signal, i)
    assert signal.calls == n
    assert abs(sys.getrefcount(True) - before) <= 2


def test_without_the_repair_the_stand_in_really_takes_references():
    signal, n = StealingSignal(), 300
    before = sys.getrefcount(True)
    plain = make_emit(steals_bool_ref=False)
    for _ in range(n):
        plain(signal)
    lost = before - sys.getrefcount(True)
    for _ in range(lost):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))  # give them back before asserting
    assert lost >= n - 2


def test_emit_keeps_the_reference_count_of_true(qtbot):
    class Source(QObject):
        ping = Signal(int)

    src, got = Source(), []
    src.ping.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(5000):
        emit(src.ping, i)
    assert len(got) == 5000
    assert abs(sys.getrefcount(True) - before) < 100


def test_no_module_emits_a_signal_directly():
    direct = re.compile(r"\.emit\(")
    offenders = []
    for path in sorted(STUDIO.rglob("*.py")):
        if path.name == "qtcompat.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if direct.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(STUDIO.parent)}:{n}: {line.strip()}")
    assert offenders == [], "use studio.qtcompat.emit(signal, ...):\n" + "\n".join(offenders)
