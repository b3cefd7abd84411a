"""Snapshots, taken on the UI thread: a document state and its history entries, detached from the live
document (QImages are shallow copy-on-write copies, masks are copied with numpy), and which entries to keep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtGui import QImage

from studio.qimage import array_to_qimage

from ..history import ImageEdit, LayerPaint, MaskEdit


@dataclass
class State:
    """A document state, detached from the live document: a COW image copy and a mask copy."""

    image: QImage | None
    mask: np.ndarray | None
    path: str | None
    caption: str
    layers: list[dict] | None = None  # the stack (layer_desc), None: a state from before layers (its image)
    active: int = 0


def layer_desc(layer: Any) -> dict:
    """A layer as a save holds it: its metadata, its source image (a COW copy) and `array`, the identity of its
    pixel array (id(), a slot in the save's `arrays`: layers of several states that share one array, as the
    history's states do while strokes paint it in place, share it again when read back). Either may be None."""
    arr = layer.built
    control = getattr(layer, "control", None)  # a control layer's settings (studio.session.controls)
    return {"uid": layer.uid, "name": layer.name, "visible": layer.visible, "opacity": layer.opacity,
            "source": shallow(layer.source), "array": id(arr) if arr is not None else None,
            "control": control.to_dict() if control is not None else None}  # fmt: skip


def layers_of(state: Any) -> list[dict] | None:
    layers = getattr(state, "layers", None)
    return None if layers is None else [layer_desc(la) for la in layers]


def arrays_of(live: Any, entries: list) -> dict[int, np.ndarray]:
    """The pixel arrays that the `live` layers and the states of `entries` hold, by identity (what a save writes as
    its `arrays`)."""
    out: dict[int, np.ndarray] = {}
    stacks = [live, *(getattr(s, "layers", None) for e in entries if isinstance(e, ImageEdit) for s in (e.before, e.after))]
    for stack in stacks:
        for la in stack or ():
            if la.built is not None:
                out[id(la.built)] = la.built
    return out



def shallow(img: Any) -> QImage | None:
    if not isinstance(img, QImage) or img.isNull():
        return None
    return QImage(img)  # shares the pixels until either side is painted on (then it detaches)


def copy_mask(a: Any) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=np.uint8, copy=True)


def state_of(state: Any, mask_copies: dict[int, np.ndarray] | None = None) -> State:
    mask = getattr(state, "mask", None)
    copied = None
    if mask is not None:
        if mask_copies is not None and id(mask) in mask_copies:
            copied = mask_copies[id(mask)]
        else:
            copied = copy_mask(mask)
            if mask_copies is not None and copied is not None:
                mask_copies[id(mask)] = copied
    path = getattr(state, "path", None)
    return State(shallow(getattr(state, "image", None)), copied, str(path) if path else None,
                 str(getattr(state, "caption", "") or ""), layers_of(state), int(getattr(state, "active", 0)))  # fmt: skip


def known(entry: Any) -> bool:
    return isinstance(entry, (MaskEdit, ImageEdit, LayerPaint))


def capture(entry: Any) -> tuple:
    """A private copy of a history entry's data, taken on the UI thread."""
    if isinstance(entry, MaskEdit):
        return ("mask", entry.label, entry.rect, copy_mask(entry.before), copy_mask(entry.after))
    if isinstance(entry, LayerPaint):  # the patches as RGBA images (copies), and the layer's uid
        return ("paint", entry.label, entry.rect, array_to_qimage(entry.before), array_to_qimage(entry.after),
                entry.layer)  # fmt: skip
    shared: dict[int, np.ndarray] = {}  # before and after often hold the same mask object
    return ("image", entry.label, None, state_of(entry.before, shared), state_of(entry.after, shared))


def entry_sizes(entry: Any) -> list[tuple[Any, int]]:
    """(identity, bytes) of what an entry would write; images are identified by their cacheKey."""
    if isinstance(entry, (MaskEdit, LayerPaint)):
        return [(("a", id(a)), a.nbytes) for a in (entry.before, entry.after) if a is not None]
    out = []
    for s in (entry.before, entry.after):
        img, mask = getattr(s, "image", None), getattr(s, "mask", None)
        if isinstance(img, QImage) and not img.isNull():
            out.append((("i", img.cacheKey()), img.sizeInBytes()))
        if mask is not None:
            out.append((("a", id(mask)), mask.nbytes))
        for la in getattr(s, "layers", None) or ():
            out.extend(la.parts())
    return out


def window(entries: list, cursor: int, keep: int, budget: int) -> tuple[int, int]:
    """The contiguous run of entries to keep: it holds the cursor, at most `keep` entries and
    `budget` bytes, and no entry of an unknown kind."""
    n = len(entries)
    cursor = max(0, min(cursor, n))
    keep = max(0, keep)
    start = max(0, cursor - keep)  # as many undo steps as fit, then redo steps
    end = min(n, start + keep)
    for i in range(start, end):
        if not known(entries[i]):
            if i < cursor:
                start = i + 1
            else:
                end = i
                break
    sizes = [entry_sizes(e) for e in entries]

    def total(a: int, b: int) -> int:
        seen: dict[Any, int] = {}
        for i in range(a, b):
            seen.update(sizes[i])
        return sum(seen.values())

    while start < end and total(start, end) > budget:
        if end > cursor:
            end -= 1
        else:
            start += 1
    return start, max(start, end)


@dataclass(eq=False)
class Rec:
    """One history entry as the autosave knows it. `payload` is its captured data until written;
    `files` is its manifest entry once its files are on disk. Guarded by the writer's condition."""

    entry: Any  # kept alive, so id(entry) stays unique while the record exists
    payload: tuple | None
    files: dict | None = None


def kept_records(records: dict[int, Rec], entries: list, start: int, end: int) -> list[Rec]:
    """The records of entries[start:end], captured where needed; records of entries no longer in the
    history are dropped, those outside the run forget their data. The caller holds the records' lock."""
    live = {id(e) for e in entries}
    for key in [k for k in records if k not in live]:  # a record holds its entry, so a
        del records[key]  # live id in `live` is that very entry
    kept = []
    for i, e in enumerate(entries):
        rec = records.get(id(e))
        if not start <= i < end:
            if rec is not None:  # out of the kept run: captured again if it comes back
                rec.files, rec.payload = None, None
            continue
        if rec is None:
            rec = records[id(e)] = Rec(e, capture(e))
        elif rec.files is None and rec.payload is None:
            rec.payload = capture(e)
        kept.append(rec)
    return kept


@dataclass(eq=False)
class Job:
    clear: bool = False
    clean: bool = False
    current: State | None = None
    records: list[Rec] = field(default_factory=list)
    cursor: int = 0
    dropped: int = 0
    total: int = 0
    saved_at: float = 0.0
    layers: list | None = None  # [(name, visible, opacity, QImage)] bottom to top; None: the image is the one layer
    active: int = 0
    staged: list = field(default_factory=list)  # [(QImage, label, seed)]: results waiting over the canvas
    staged_index: int = 0
    arrays: dict[int, QImage] = field(default_factory=dict)  # the layers' pixel arrays (RGBA) by identity
    done: bool = False
    result: str = ""  # "ok", "cleared", "retry" (a file vanished: snapshot again), "superseded", "error: ..."


POSTPONE = object()  # a snapshot cannot be taken yet (a stroke whose starting mask is unknown)
