"""Project files (`.lsproj`): a document the artist saves and opens again (File > Save / Open project).

A project is one zip file (any zip tool opens it) holding::

    img-<hash>.png    an image: the canvas, or one that an undo step brings back (stored: PNG is compressed already)
    mask-<hash>.png   a mask, or a brush stroke's patch of one: 8-bit greyscale PNG, 255 = repaint
    project.json      the manifest (below), written last

Data files are named as the autosave names them (`studio.session.autosave.content`: 24 hex digits of BLAKE2b over
the pixels), so a picture that many undo steps hold is stored once, and the manifest's document state and history
entries are the autosave's (written by the same `state_files`/`entry_files`, read back by the same `Reader`): one
serialization of the document, two places it goes. project.json, version 1::

    {"format": "latent-studio-project", "version": 1, "app": "Latent Studio 0.1.0", "saved_at": <time.time()>,
     "size": [w, h],                                   the canvas size in pixels
     "params": {"prompt": "...", "steps": 20, ...},    the prompt panel (studio.session.params.Params.to_dict())
     "selection": [x, y, w, h] | null,                 the selected region, in image pixels
     "layers": [{"name": "Image", "visible": true, "opacity": 1.0, "image": "img-....png"}],
                                                       a control layer adds "control": {"module", "model", "weight",
                                                       "start", "end", "mode"} (version 2: written only then)
     "active": 0,                                      the layer colour strokes paint (an index into layers)
     "mask": "mask-....png" | null,
     "current": STATE,                                 the document as saved (the autosave's STATE)
     "cursor": 3, "dropped": 0,                        entries[:cursor] can be undone; older steps not kept
     "entries": [ENTRY, ...],                          the undo history (the autosave's entries)
     "staged": [{"image": "img-....png", "label": "Result", "seed": 7 | null, "name": "00012-7"}, ...],
     "staged_index": 0}                                results waiting over the canvas (studio.session.staging); a
                                                       reader before them ignores both keys
    STATE = {"image": "img-....png", "format": <QImage.Format value>, "size": [w, h], "mask": "mask-....png" | null,
             "path": null, "caption": "..."}
    ENTRY = {"kind": "mask", "label": "Brush stroke", "rect": [x, y, w, h] | null, "before": ..., "after": ...}
          | {"kind": "image", "label": "Result", "before": STATE, "after": STATE}

Layers: `layers` (top level) lists the stack bottom to top for a reader that knows one list (each image an RGBA PNG,
straight alpha; an opaque image layer an RGB one); `current.image` stays the flattened picture. The undo history
keeps every layer operation and colour stroke (version 2 when it holds strokes, else 1)::

    STATE += {"layers": [LAYER, ...], "active": 1}      the stack of that state, bottom to top
    LAYER = {"uid": 7, "name": "Paint 1", "visible": true, "opacity": 0.6,
             "image": "img-....png" | null,            an image layer's own (opaque) picture
             "array": 140234 | null}                   its pixel array: a slot of "arrays"
    "arrays": [{"slot": 140234, "image": "img-....png"}, ...]   each pixel array once, RGBA, as it is now
    ENTRY |= {"kind": "paint", "label": "Paint", "layer": <uid>, "rect": [x, y, w, h],
              "before": "img-....png", "after": "img-....png"}   a colour stroke's RGBA patch

Strokes paint a layer's array in place, and the states of the history share arrays, so a slot is an array's identity
(not its content): read back, every layer naming a slot shares one array, uids are renumbered consistently, and undo
and redo replay the patches exactly as before the save. `version` goes up only for a change an older reader would
misread; a reader refuses a newer version with one line. Paths of the artist's disk are not written (a project may
be shared): `path` is null and `caption` keeps the file name.

Writing goes through `studio.core.atomic` (a temporary file beside the target, renamed over it): a crash never leaves
half a project. Reading is defensive, for a file from anywhere: a zip that is truncated, corrupt, over the size
limits below, or whose manifest names a member that is missing or not a plain `img-`/`mask-` file name, raises
`ProjectError` with one line and loads nothing. Member names are only ever looked up, never extracted, so a name
like `../x` cannot reach the disk. Images are refused from their PNG header beyond MAX_PIXELS.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtGui import QImage

from studio import APP_NAME, __version__
from studio.core.atomic import atomic_write
from studio.core.requests import MAX_UPSCALE_PIXELS
from studio.qimage import array_to_qimage

from .autosave.content import image_name, mask_name, png_bytes
from .autosave.manifest import names_in
from .autosave.restore import build, decode_png
from .autosave.snapshot import State, arrays_of, capture, copy_mask, known, layer_desc, shallow, window
from .autosave.writer import array_files, entry_files, layer_files, state_files
from .document import DocState, Document
from .history import ImageEdit
from .staging import Candidate

FORMAT = "latent-studio-project"
VERSION = 2  # the newest this reader knows; 2: control layers or colour strokes in the history (only then written)
SUFFIX = ".lsproj"
MANIFEST = "project.json"
RECENT_COUNT = 8  # File > Open recent

# What a reader takes at most (a project from anywhere): well past any real one.
MAX_MEMBERS = 4096
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MEMBER_BYTES = 512 * 1024 * 1024  # uncompressed, as the zip declares it (reading stops there)
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
MAX_PIXELS = MAX_UPSCALE_PIXELS  # the largest image the studio makes
MAX_ENTRIES = 1000  # undo steps written (the in-memory history is bounded by its bytes)
MAX_HISTORY_BYTES = 1024 * 1024 * 1024

_NAME = re.compile(r"^(img|mask)-[0-9a-f]{24}\.png$")


class ProjectError(Exception):
    """A project that cannot be read or written; str() is one line for the artist."""


@dataclass
class Project:
    """A project read back, whole, before any of it touches the document."""

    state: DocState
    entries: list
    cursor: int
    params: dict[str, Any]
    selection: tuple[int, int, int, int] | None
    staged: list[Candidate] = dataclasses.field(default_factory=list)  # results waiting over the canvas
    staged_index: int = 0


# -- writing -------------------------------------------------------------------------------------------------


def _anonymous(s: State) -> State:
    """A state without the artist's path (the caption keeps the file name)."""
    return dataclasses.replace(s, path=None, caption=s.caption or (Path(s.path).name if s.path else ""))


def _payload(entry: Any) -> tuple:
    payload = capture(entry)
    if payload[0] == "image":
        kind, label, rect, before, after = payload
        return kind, label, rect, _anonymous(before), _anonymous(after)
    return payload


@dataclass
class Snapshot:
    """A document detached for a save (studio.session.autosave.snapshot: COW images, copied masks and patches), taken
    on the UI thread; `write` encodes it anywhere (a worker thread), while the artist goes on painting."""

    current: State
    payloads: list
    arrays: dict[int, QImage]
    layers: list | None  # [(name, visible, opacity, QImage)]; None: one plain image layer
    active: int
    selection: tuple[int, int, int, int] | None
    params: dict[str, Any]
    cursor: int
    dropped: int
    mark: object | None  # history_mark(document) when taken: the state the file holds
    staged: list = dataclasses.field(default_factory=list)  # [Candidate]: results waiting over the canvas
    staged_index: int = 0


def snapshot(document: Document, params: dict[str, Any], staged: list[Candidate] | None = None,
             staged_index: int = 0) -> Snapshot:  # fmt: skip
    """What `write` needs, detached from the live document (UI thread). ProjectError when there is no image."""
    if not document.has_image():
        raise ProjectError("there is no image to save yet")
    if document.in_paint():  # a colour stroke in progress goes into the history first
        document.end_paint()
    in_stroke, before = document.stroke_base()
    mask = before if in_stroke else document.mask  # mid-stroke: the mask the history knows
    current = _anonymous(State(shallow(document.image), copy_mask(mask),
                               str(document.path) if document.path else None, document.caption,
                               [layer_desc(la) for la in document.layers], document.active))  # fmt: skip
    history = document.history
    entries = list(history.entries)
    cursor = max(0, min(history.cursor, len(entries)))
    start, end = window(entries, cursor, MAX_ENTRIES, MAX_HISTORY_BYTES)
    layers = None if document.single_layer() else [(n, v, o, shallow(img), *c) for n, v, o, img, *c in
                                                    document.layer_images()]  # fmt: skip
    return Snapshot(current, [_payload(e) for e in entries[start:end] if known(e)],
                    document.array_images(arrays_of(document.layers, entries[start:end])), layers, document.active,
                    document.selection, dict(params), cursor - start, start, history_mark(document),
                    list(staged or ()), staged_index)  # fmt: skip


def save(path: Path | str, document: Document, params: dict[str, Any], staged: list[Candidate] | None = None,
         staged_index: int = 0) -> Path:  # fmt: skip
    """Write the document (image, mask, selection, undo history), the panel's `params` and the `staged` candidates to
    `path` (`.lsproj` added when missing), atomically. Raises ProjectError (one line) when there is no image or the
    disk refuses."""
    return write(path, snapshot(document, params, staged, staged_index))


def target_path(path: Path | str) -> Path:
    path = Path(path)
    return path if path.suffix.lower() == SUFFIX else path.with_name(path.name + SUFFIX)


def write(path: Path | str, snap: Snapshot) -> Path:
    """Encode and write a snapshot to `path` (`.lsproj` added when missing), atomically; any thread. Raises
    ProjectError (one line) when the disk refuses."""
    path = target_path(path)
    # Version 2 when the history holds colour strokes (a version 1 reader would refuse them one by one).
    # Version 2 also when a layer is a control layer (a version 1 reader would flatten it into the picture).
    controls = any(len(la) > 4 and la[4] for la in snap.layers or ()) or any(
        d.get("control") for d in snap.current.layers or ())
    version = 2 if controls or any(p[0] == "paint" for p in snap.payloads) else 1
    try:
        with atomic_write(path) as f, zipfile.ZipFile(f, "w") as z:
            written: set[str] = set()
            image_names: dict[int, str] = {}

            def put(name: str, encode) -> str:
                if name not in written:
                    info = zipfile.ZipInfo(name, time.localtime()[:6])
                    info.compress_type = zipfile.ZIP_STORED  # PNG is compressed already
                    z.writestr(info, encode())
                    written.add(name)
                return name

            def put_image(img: QImage | None) -> str | None:
                if img is None:
                    return None
                key = img.cacheKey()
                if key not in image_names:
                    image_names[key] = put(image_name(img), lambda: png_bytes(img))
                return image_names[key]

            def put_mask(a: np.ndarray | None) -> str | None:
                if a is None:
                    return None
                return put(mask_name(a).replace(".npz", ".png"), lambda: png_bytes(array_to_qimage(a)))

            state = state_files(snap.current, put_image, put_mask)
            manifest = {
                "format": FORMAT, "version": version, "app": f"{APP_NAME} {__version__}", "saved_at": time.time(),
                "size": state["size"], "params": snap.params,
                "selection": list(snap.selection) if snap.selection else None,
                "layers": [{"name": "Image", "visible": True, "opacity": 1.0, "image": state["image"]}]
                if snap.layers is None else layer_files(snap.layers, put_image),
                "active": snap.active, "mask": state["mask"], "current": state, "cursor": snap.cursor,
                "dropped": snap.dropped, "entries": [entry_files(p, put_image, put_mask) for p in snap.payloads],
                "arrays": array_files(snap.arrays, put_image),
                "staged": [{"image": put_image(c.image), "label": c.label, "seed": c.seed,
                            "name": c.path.stem if c.path is not None else ""} for c in snap.staged],
                "staged_index": snap.staged_index,
            }  # fmt: skip
            z.writestr(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False), zipfile.ZIP_DEFLATED)
    except OSError as e:
        raise ProjectError(f"could not write {path.name}: {e.strerror or e}") from e
    return path


# -- reading -------------------------------------------------------------------------------------------------


def _check(m: Any, members: dict[str, zipfile.ZipInfo]) -> None:
    """ProjectError unless m is a project manifest this reader knows, every file it names is in the zip."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ProjectError("it is not a Latent Studio project")
    version = m.get("version")
    if not isinstance(version, int) or version < 1:
        raise ProjectError(f"unknown project version {version!r}")
    if version > VERSION:
        raise ProjectError(f"it was saved by a newer Latent Studio (project version {version}); update to open it")
    entries, cursor = m.get("entries"), m.get("cursor")
    if not isinstance(entries, list) or not isinstance(cursor, int) or not 0 <= cursor <= len(entries):
        raise ProjectError("its undo history is damaged")
    if len(entries) > MAX_ENTRIES:
        raise ProjectError(f"its undo history is longer than {MAX_ENTRIES} steps")
    current = m.get("current")
    if not isinstance(current, dict) or not isinstance(current.get("image"), str):
        raise ProjectError("it holds no image")
    layers = m.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(la, dict) for la in layers):
        raise ProjectError("its layers are damaged")
    staged = m.get("staged", [])
    if not isinstance(staged, list) or not all(isinstance(c, dict) for c in staged):
        raise ProjectError("its staged results are damaged")
    for name in {*names_in(m), *(la.get("image") for la in layers), *(c.get("image") for c in staged)}:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProjectError(f"it names a file it should not ({str(name)[:40]!r})")
        if name not in members:
            raise ProjectError(f"{name} is missing from it")


def _selection(value: Any, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    if not (isinstance(value, list) and len(value) == 4 and all(type(v) is int for v in value)):
        return None
    x, y, w, h = value
    return (x, y, w, h) if w > 0 and h > 0 and x + w <= size[0] and y + h <= size[1] and x >= 0 and y >= 0 else None


def _no_path(s: Any) -> Any:
    """A state read from a project points at no file (a path in a file from elsewhere would be that disk's)."""
    if not isinstance(s, DocState) or s.path is None:
        return s
    return dataclasses.replace(s, path=None, caption=s.caption or s.path.name)


def load(path: Path | str) -> Project:
    """The project at `path`, read whole; ProjectError (one line) for anything that does not read as one."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ProjectError(f"it holds more than {MAX_MEMBERS} files")
            members = {i.filename: i for i in infos if not i.is_dir()}
            if any(i.file_size > MAX_MEMBER_BYTES for i in infos) or sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
                raise ProjectError("it is larger than a project can be")
            info = members.get(MANIFEST)
            if info is None:
                raise ProjectError("it is not a Latent Studio project (no project.json)")
            if info.file_size > MAX_MANIFEST_BYTES:
                raise ProjectError("its project.json is too large")
            try:
                m = json.loads(z.read(info))
            except ValueError as e:
                raise ProjectError("its project.json is not valid JSON") from e
            _check(m, members)
            state, entries, cursor = build(lambda name: z.read(members[name]), m, strict=True, max_pixels=MAX_PIXELS)
            staged = [_candidate(c, decode_png(z.read(members[c["image"]]), c["image"], MAX_PIXELS))
                      for c in m.get("staged", [])]  # fmt: skip
    except ProjectError:
        raise
    except FileNotFoundError as e:
        raise ProjectError("the file does not exist") from e
    except zipfile.BadZipFile as e:
        raise ProjectError(f"it is not a readable zip file ({e})") from e
    except OSError as e:
        raise ProjectError(f"it could not be read: {e.strerror or e}") from e
    except Exception as e:  # noqa: BLE001 - a hostile file must not crash the window: any failure is one line
        raise ProjectError(f"it is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    if state.image is None:
        raise ProjectError("it holds no image")
    entries = [ImageEdit(e.label, _no_path(e.before), _no_path(e.after)) if isinstance(e, ImageEdit) else e
               for e in entries]  # fmt: skip
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    size = (state.image.width(), state.image.height())
    index = m.get("staged_index")
    return Project(_no_path(state), entries, cursor, params, _selection(m.get("selection"), size), staged,
                   index if type(index) is int and 0 <= index < len(staged) else 0)  # fmt: skip


def _candidate(c: dict, image: QImage) -> Candidate:
    """A staged result read back: no request (Regenerate needs a run of this session), no path on this disk."""
    label, seed = c.get("label"), c.get("seed")
    return Candidate(image, None, label if isinstance(label, str) and label else "Result",
                     seed if type(seed) is int else None)  # fmt: skip


# -- recent projects, and "saved or not" -----------------------------------------------------------------------


def add_recent(recent: list[str], path: Path | str, count: int = RECENT_COUNT) -> list[str]:
    """`recent` with `path` first (once), at most `count` long."""
    p = str(Path(path).resolve())
    return [p, *(r for r in recent if r != p)][:count]


def split_missing(recent: list[str]) -> tuple[list[str], list[str]]:
    """(the recent projects that exist, those that no longer do)."""
    kept: list[str] = []
    missing: list[str] = []
    for r in recent:
        (kept if Path(r).is_file() else missing).append(r)
    return kept, missing


def history_mark(document: Document) -> object | None:
    """What identifies the document's state in its history: the entry before the cursor (an object; None at the
    start). Equal marks at save time and now mean no change since (an undo then a new step gives a new entry)."""
    h = document.history
    return h.entries[h.cursor - 1] if 0 < h.cursor <= len(h.entries) else None
