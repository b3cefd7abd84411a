"""Reading a save back (no torch; works without a QApplication), and declining it.

`pending_restore(folder)` describes what an unclean session left (`RestoreInfo`), `load(folder)` reads it
as `(DocState, entries, cursor)` for `Document.restore`, `discard(folder)` removes it. None of them raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtGui import QImage, QImageReader

from studio.qimage import qimage_to_array, qimage_to_gray

from ..controls import ControlProps
from ..document import DocState
from ..history import ImageEdit, LayerPaint, MaskEdit
from ..layers import Layer, new_id
from .folder import DOC_DIR, remove_save
from .lock import locked_elsewhere
from .manifest import manifests, names_in, pick

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class RestoreInfo:
    """What an unclean session left behind (for the "restore your work?" question)."""

    folder: Path
    saved_at: float  # time.time() of the last save
    size: tuple[int, int]  # the image's width, height
    undo_steps: int
    redo_steps: int
    dropped_steps: int  # older steps of that session that were not kept
    has_mask: bool
    path: Path | None
    caption: str
    bytes_on_disk: int


def discard(folder: Path) -> bool:
    """Remove the save in folder (the artist declined to restore it). False when another running
    studio owns the folder or the removal failed; never raises."""
    try:
        if locked_elsewhere(Path(folder)):
            log.warning("autosave: not discarding %s: another running studio uses it", folder)
            return False
        remove_save(Path(folder))
        return True
    except Exception:  # noqa: BLE001
        log.exception("autosave: could not discard %s", folder)
        return False


def pending_restore(folder: Path) -> RestoreInfo | None:
    """What an unclean (crashed) session left in folder, or None: nothing, a clean shutdown, a
    save that does not load, or a folder that another running studio is using. Never raises."""
    try:
        folder = Path(folder)
        doc_dir = folder / DOC_DIR
        if not doc_dir.is_dir():
            return None
        if locked_elsewhere(folder):
            log.info("autosave: %s belongs to a running studio", folder)
            return None
        found = pick(doc_dir)
        if found is None:
            return None
        _, m = found
        if m.get("clean"):
            return None
        current = m["current"]
        size = current.get("size") or [0, 0]
        names = set(names_in(m))
        nbytes = sum((doc_dir / n).stat().st_size for n in names)
        cursor, n = int(m["cursor"]), len(m["entries"])
        return RestoreInfo(folder=folder, saved_at=float(m.get("saved_at", 0.0)), size=(int(size[0]), int(size[1])),
                           undo_steps=cursor, redo_steps=n - cursor, dropped_steps=int(m.get("dropped", 0)),
                           has_mask=current.get("mask") is not None,
                           path=Path(current["path"]) if current.get("path") else None,
                           caption=str(current.get("caption") or ""), bytes_on_disk=nbytes)  # fmt: skip
    except Exception:  # noqa: BLE001 - the question is only asked when this works
        log.exception("autosave: could not read %s", folder)
        return None


class Reader:
    """Reads one manifest's files, each once (images decoded in parallel). `read(name)` returns a file's bytes
    (from the save folder here, from a project zip in studio.session.project); a mask file is an `.npz` (the
    autosave's) or a greyscale `.png` (a project's). `max_pixels` refuses an image from its PNG header, before
    it is decoded."""

    def __init__(self, read: Callable[[str], bytes], m: dict, max_pixels: int = 0):
        self.read = read
        self.max_pixels = max_pixels
        self.m = m
        self.images: dict[str, QImage | Exception] = {}
        self.masks: dict[str, np.ndarray | Exception] = {}
        self.uids: dict[int, int] = {}  # a saved layer uid -> this process's (uids are per process)
        self.arrays: dict[int, np.ndarray] = {}  # a slot of the save's `arrays` -> its one array (shared by states)
        self.slots: dict[int, str] = {}
        for a in m.get("arrays") or []:
            if isinstance(a, dict) and type(a.get("slot")) is int and isinstance(a.get("image"), str):
                self.slots[a["slot"]] = a["image"]
        names = sorted({n for n in names_in(m) if n.startswith("img-")})
        if len(names) > 1:
            with ThreadPoolExecutor(max_workers=min(4, len(names)), thread_name_prefix="studio-autosave-load") as pool:
                for name, img in zip(names, pool.map(self._decode, names), strict=True):
                    self.images[name] = img
        else:
            for name in names:
                self.images[name] = self._decode(name)

    def _decode(self, name: str) -> QImage | Exception:
        try:
            return decode_png(self.read(name), name, self.max_pixels)
        except Exception as e:  # noqa: BLE001 - reported per state
            return e

    def image(self, name: str | None, fmt: Any, size: Any) -> QImage | None:
        if name is None:
            return None
        img = self.images.get(name)
        if img is None:
            img = self.images[name] = self._decode(name)
        if isinstance(img, Exception):
            raise img
        if isinstance(size, list) and len(size) == 2 and [img.width(), img.height()] != size:
            raise ValueError(f"{name} is {img.width()}x{img.height()}, the manifest says {size[0]}x{size[1]}")
        if isinstance(fmt, int) and fmt != img.format().value:
            with contextlib.suppress(ValueError):
                return img.convertToFormat(QImage.Format(fmt))
        return QImage(img)  # each state its own (copy-on-write) instance: painting one leaves the rest

    def mask(self, name: str | None, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        if name is None:
            return None
        a = self.masks.get(name)
        if a is None:
            try:
                data = self.read(name)
                if name.endswith(".png"):
                    a = qimage_to_gray(decode_png(data, name, self.max_pixels))
                else:
                    with np.load(io.BytesIO(data), allow_pickle=False) as z:
                        a = np.asarray(z["mask"])
                if a.dtype != np.uint8 or a.ndim != 2:
                    raise ValueError(f"{name} is not an HxW uint8 mask")
            except Exception as e:  # noqa: BLE001
                a = e if isinstance(e, ValueError) else ValueError(f"{name}: {e}")
            self.masks[name] = a
        if isinstance(a, Exception):
            raise a
        if shape is not None and a.shape != shape:
            raise ValueError(f"{name} is {a.shape[1]}x{a.shape[0]}, expected {shape[1]}x{shape[0]}")
        return a.copy()  # every user gets its own array: the document paints into masks in place

    def state(self, s: Any) -> DocState:
        if not isinstance(s, dict):
            raise ValueError("a state is not an object")
        img = self.image(s.get("image"), s.get("format"), s.get("size"))
        shape = (img.height(), img.width()) if img is not None else None
        mask = self.mask(s.get("mask"), shape)
        if img is None and mask is not None:
            raise ValueError("a mask without an image")
        path = s.get("path")
        state = DocState(img, mask, Path(path) if isinstance(path, str) and path else None, str(s.get("caption") or ""))
        if s.get("layers") is not None and img is not None:  # (an empty document has no layers)
            layers = self.layers(s["layers"], [img.width(), img.height()])
            active = s.get("active")
            active = active if type(active) is int and 0 <= active < len(layers) else len(layers) - 1
            state = dataclasses.replace(state, layers=layers, active=active)
        return state

    def uid(self, saved: Any) -> int:
        if type(saved) is not int:
            raise ValueError(f"bad layer uid {saved!r}")
        if saved not in self.uids:
            self.uids[saved] = new_id()
        return self.uids[saved]

    def array(self, slot: Any, size: list) -> np.ndarray | None:
        """The one array of a slot: every layer that names it shares it, as the saved document's layers did."""
        if slot is None:
            return None
        if slot not in self.arrays:
            if type(slot) is not int or slot not in self.slots:
                raise ValueError(f"a layer names an unknown pixel array {slot!r}")
            img = self.image(self.slots[slot], None, size)
            assert img is not None
            self.arrays[slot] = qimage_to_array(img, alpha=True)
        return self.arrays[slot]

    def layers(self, descs: Any, size: list) -> tuple[Layer, ...]:
        if not isinstance(descs, list) or not descs or len(descs) > 1000:
            raise ValueError("a state's layers are damaged")
        out: list[Layer] = []
        for d in descs:
            if not isinstance(d, dict):
                raise ValueError("a layer is not an object")
            source = self.image(d.get("image"), None, size)
            if source is not None and source.format() != QImage.Format.Format_RGB888:
                source = source.convertToFormat(QImage.Format.Format_RGB888)
            pixels = self.array(d.get("array"), size)
            if source is None and pixels is None:
                raise ValueError("a layer without pixels")
            opacity = d.get("opacity", 1.0)
            control = ControlProps.from_dict(d["control"]) if isinstance(d.get("control"), dict) else None
            out.append(Layer(str(d.get("name") or f"Layer {len(out) + 1}")[:200], pixels,
                             visible=d.get("visible", True) is not False, source=source, uid=self.uid(d.get("uid")),
                             opacity=float(opacity) if isinstance(opacity, (int, float)) else 1.0,
                             control=control))  # fmt: skip
        return tuple(out)

    def entry(self, e: Any):
        if not isinstance(e, dict) or not isinstance(e.get("label"), str):
            raise ValueError("an entry is not an object with a label")
        if e.get("kind") == "mask":
            rect = e.get("rect")
            if rect is not None:
                if not (isinstance(rect, list) and len(rect) == 4 and all(isinstance(v, int) for v in rect)):
                    raise ValueError(f"bad rect {rect!r}")
                rect = tuple(rect)
                shape = (rect[3], rect[2])
                before, after = self.mask(e.get("before"), shape), self.mask(e.get("after"), shape)
                if before is None or after is None:
                    raise ValueError("a patch without its pixels")
            else:
                before, after = self.mask(e.get("before")), self.mask(e.get("after"))
            return MaskEdit(e["label"], rect, before, after)
        if e.get("kind") == "paint":
            rect = e.get("rect")
            if not (isinstance(rect, list) and len(rect) == 4 and all(type(v) is int and v >= 0 for v in rect)):
                raise ValueError(f"bad rect {rect!r}")
            x, y, w, h = rect
            patches = [self.image(e.get(k), None, [w, h]) for k in ("before", "after")]
            if patches[0] is None or patches[1] is None:
                raise ValueError("a colour stroke without its pixels")
            before, after = (qimage_to_array(p, alpha=True) for p in patches if p is not None)
            return LayerPaint(e["label"], self.uid(e.get("layer")), (x, y, w, h), before, after)
        if e.get("kind") == "image":
            return ImageEdit(e["label"], self.state(e.get("before")), self.state(e.get("after")))
        raise ValueError(f"unknown entry kind {e.get('kind')!r}")


def decode_png(data: bytes, name: str, max_pixels: int = 0) -> QImage:
    """A PNG's image; ValueError when it is unreadable or (max_pixels > 0) larger, said from its header."""
    buf = QBuffer()
    buf.setData(QByteArray(data))
    buf.open(QIODevice.OpenModeFlag.ReadOnly)
    reader = QImageReader(buf, QByteArray(b"png"))
    size = reader.size()
    if not size.isValid():
        raise ValueError(f"{name} is not a readable PNG")
    if max_pixels and size.width() * size.height() > max_pixels:
        raise ValueError(f"{name} is too large ({size.width()}x{size.height()})")
    img = reader.read()
    if img.isNull():
        raise ValueError(f"{name} is not a readable PNG")
    return img


def read_layers(reader: Reader, m: dict, state: DocState) -> DocState:
    """The state with the manifest's layer stack (`layers`, `active`), when it holds more than the image itself
    (a file written before layers, or of one plain layer, opens as that image)."""
    layers = m.get("layers")
    current = m["current"].get("image")
    if not isinstance(layers, list) or not layers or len(layers) == 1 and layers[0].get("image") == current:
        return state
    assert state.image is not None
    size = [state.image.width(), state.image.height()]
    stack: list[Layer] = []
    for la in layers:
        if not isinstance(la, dict):
            raise ValueError("a layer is not an object")
        img = reader.image(la.get("image"), None, size)
        if img is None:
            raise ValueError("a layer without its image")
        opacity = la.get("opacity", 1.0)
        visible = la.get("visible", True) is not False
        opacity = float(opacity) if isinstance(opacity, (int, float)) else 1.0
        name = str(la.get("name") or f"Layer {len(stack) + 1}")[:200]
        if "control" in la:  # a control layer (studio.session.controls): its pixels, never part of the picture
            stack.append(Layer(name, qimage_to_array(img, alpha=True), visible=visible, opacity=opacity,
                               control=ControlProps.from_dict(la["control"])))  # fmt: skip
        elif img.hasAlphaChannel():
            stack.append(Layer(name, qimage_to_array(img, alpha=True), visible=visible, opacity=opacity))
        else:
            source = img.convertToFormat(QImage.Format.Format_RGB888)
            stack.append(Layer(name, source=source, visible=visible, opacity=opacity))
    active = m.get("active")
    active = active if isinstance(active, int) and 0 <= active < len(stack) else len(stack) - 1
    return dataclasses.replace(state, layers=tuple(stack), active=active)


def build(read: Callable[[str], bytes], m: dict, strict: bool, max_pixels: int = 0) -> tuple[DocState, list, int]:
    """The document a (checked) manifest describes, its files read through `read`. strict: any history entry
    that does not load is an error; otherwise the run of good entries around the cursor is kept."""
    reader = Reader(read, m, max_pixels)
    try:
        state = reader.state(m["current"])
    except Exception as err:  # noqa: BLE001
        if strict or not isinstance(m["current"].get("layers"), list):
            raise
        log.warning("autosave: the layers do not load (the flattened image does): %s", err)
        state = reader.state({**m["current"], "layers": None})
    if state.image is None:
        raise ValueError("no current image")
    try:
        if state.layers is None:  # a save without the stack in its states: the manifest's own list
            state = read_layers(reader, m, state)
    except Exception as err:  # noqa: BLE001
        if strict:
            raise ValueError(f"layers: {err}") from err
        log.warning("autosave: the layers do not load (the flattened image does): %s", err)
    entries, bad = [], []
    for i, e in enumerate(m["entries"]):
        try:
            entries.append(reader.entry(e))
        except Exception as err:  # noqa: BLE001
            if strict:
                raise ValueError(f"history entry {i}: {err}") from err
            log.warning("autosave: history entry %d does not load: %s", i, err)
            entries.append(None)
            bad.append(i)
    cursor = m["cursor"]
    if bad:  # keep the run of good entries around the cursor
        start = max([i + 1 for i in bad if i < cursor], default=0)
        end = min([i for i in bad if i >= cursor], default=len(entries))
        entries, cursor = entries[start:end], cursor - start
    return state, entries, cursor


def _folder_reader(doc_dir: Path) -> Callable[[str], bytes]:
    return lambda name: (doc_dir / name).read_bytes()


def load_staged(folder: Path) -> tuple[list, int]:
    """The staged results of the save `load` reads (studio.session.staging.Candidate, no request), and the index of
    the one shown; what does not load is left out (logged). Never raises."""
    from ..staging import Candidate

    out: list = []
    index = 0
    try:
        doc_dir = Path(folder) / DOC_DIR
        found = pick(doc_dir) if doc_dir.is_dir() else None
        if found is None:
            return [], 0
        _path, m = found
        for c in m.get("staged") or []:
            try:
                image = decode_png((doc_dir / c["image"]).read_bytes(), c["image"])
            except Exception as e:  # noqa: BLE001 - a staged result that does not load is left out
                log.warning("autosave: a staged result does not load: %s", e)
                continue
            label, seed = c.get("label"), c.get("seed")
            out.append(Candidate(image, None, label if isinstance(label, str) and label else "Result",
                                 seed if type(seed) is int else None))  # fmt: skip
        i = m.get("staged_index")
        index = i if type(i) is int and 0 <= i < len(out) else 0
    except Exception:  # noqa: BLE001
        log.exception("autosave: could not read the staged results of %s", folder)
    return out, index


def load(folder: Path) -> tuple[DocState, list, int] | None:
    """The saved document as (state, history entries, cursor) for Document.restore, or None (logged).
    Prefers manifest.json, then manifest.prev.json, then the current image of either with the part
    of its history that loads. Never raises."""
    try:
        doc_dir = Path(folder) / DOC_DIR
        if not doc_dir.is_dir():
            return None
        found = list(manifests(doc_dir))
        for strict in (True, False):
            for path, m in found:
                try:
                    return build(_folder_reader(doc_dir), m, strict)
                except Exception as e:  # noqa: BLE001
                    log.warning("autosave: %s does not load%s: %s", path,
                                "" if strict else " even without its history", e)  # fmt: skip
        if found:
            log.warning("autosave: nothing in %s loads", doc_dir)
        return None
    except Exception:  # noqa: BLE001
        log.exception("autosave: could not load %s", folder)
        return None
