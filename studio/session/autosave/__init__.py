"""Autosave: the document (image, mask and undo history) survives a crash.

`Autosaver(document, folder)` watches `document.changed`. Each change (re)starts a single-shot
timer (`delay_ms`, 1.5 s; a steady stream of changes still saves every `max_wait_ms`, 5 s). When it
fires, the document is snapshotted on the UI thread (cheap: QImages are shallow, copy-on-write
copies, masks are copied with numpy) and written on one background thread, "studio-autosave". A
save that comes while one is being written waits for it; saves that pile up meanwhile coalesce
into the newest, so there is never more than one writer and the UI thread never waits on the disk
(only `flush()` and `close()` do, on purpose). History entries are copied when they first appear
(on the `changed` that follows their push), so later in-place strokes cannot alter what is saved.

During a stroke the saved mask is the one from before the stroke (the stroke is not in the
history yet), so a kill -9 in the middle of a stroke or a run loses at most that stroke.

On disk (`folder` is `default_folder()` unless told otherwise)::

    folder/lock                  held (flock / msvcrt) by the live Autosaver of that folder
    folder/current/manifest.json the document: see below; written last, atomically
    folder/current/manifest.prev.json   the manifest before it (the fallback)
    folder/current/img-<hash>.png       an image, lossless PNG (any number of states share one)
    folder/current/mask-<hash>.npz      a mask or a stroke's patch: HxW uint8, `np.savez_compressed`
                                        under the key "mask"

Data files are content-addressed (`<hash>` is 24 hex digits of BLAKE2b over the pixels and their
shape/format), so they are immutable: a save writes only the files that do not exist yet, then the
previous manifest as manifest.prev.json, then the new manifest. Every file is written through
`studio.core.atomic` (a hidden temporary file beside it, fsynced, renamed into place), so a crash at
any moment leaves a complete manifest whose files all exist. After the manifest, files referenced by
neither manifest (and stale temp files) are deleted. A restored document therefore re-saves without
rewriting its images.

manifest.json (version 1)::

    {"format": "latent-studio-autosave", "version": 1, "saved_at": <time.time()>, "clean": false,
     "pid": 1234, "cursor": 3, "dropped": 0, "total": 3,
     "staged": [{"image": "img-....png", "label": "Result", "seed": 7}], "staged_index": 0,  (results waiting
                 over the canvas, studio.session.staging; only when there are some: `load_staged` reads them)
     "current": STATE,
     "entries": [{"kind": "mask", "label": "Brush stroke", "rect": [x, y, w, h] | null,
                  "before": "mask-....npz" | null, "after": "mask-....npz" | null},
                 {"kind": "image", "label": "Result", "before": STATE, "after": STATE}, ...]}
    STATE = {"image": "img-....png" | null, "format": <QImage.Format value>, "size": [w, h],
             "mask": "mask-....npz" | null, "path": "/a/b.png" | null, "caption": "...",
             "layers": [LAYER, ...], "active": 0}          (the stack of that state)

Layers (as in a project file, `studio.session.project`): each state lists its layers (uid, name, visibility,
opacity, an image layer's own picture and `array`, the slot of its pixel array); `"arrays": [{"slot", "image"}]`
holds each array once as an RGBA PNG, as it is now; `{"kind": "paint", "label", "layer": <uid>, "rect",
"before": "img-....png", "after": ...}` is a colour stroke's patch. While a colour stroke paints, the save waits
for its end. `"layers"` at the top level (with `"active"`) is the current stack again, for older readers.

`cursor` indexes `entries` (entries[:cursor] can be undone). `dropped` is how many older entries of
the history were not kept, `total` the history's length in memory. What is kept: a contiguous run of
at most `keep_entries` (50) entries around the cursor, as many undo steps as fit and then redo
steps, and at most `keep_bytes` (512 MiB, counted uncompressed, each distinct image once) of them:
over the budget the farthest redo steps go first, then the oldest undo steps. The current image and mask are always saved.

`close()` writes a last save with `"clean": true` (a clean shutdown) and releases the lock; the files
stay until the next session's first save replaces them. An unclean manifest means the session
crashed (or was killed): `pending_restore(folder)` describes it (`RestoreInfo`), `load(folder)`
reads it back as `(DocState, entries, cursor)` for `Document.restore`, `discard(folder)` removes it.
A corrupt manifest or a missing/broken file falls back to manifest.prev.json; failing that, to the
current image with the part of the history that loads; failing that, `load` returns None and logs
why. None of them raises. A document without an image saves nothing and removes an old save, so
call `pending_restore`/`load` before the Autosaver sees a change of an empty document.

The window asks `pending_restore(default_folder())` before it creates its Autosaver. A folder
locked by another running studio is not offered for restore (that studio is alive) and a second
Autosaver on it stays disabled (`enabled` is False) instead of overwriting the other's saves.

The modules, one concern each: `folder` (where the save lives), `lock` (one Autosaver per folder),
`content` (content-addressed names and bytes), `snapshot` (UI-thread copies, what to keep), `writer`
(the background thread), `manifest` (its format and its one reader), `restore` (reading back, or
discarding), `autosaver` (the QObject that schedules saves).
"""

from __future__ import annotations

from .autosaver import Autosaver
from .folder import default_folder
from .restore import RestoreInfo, discard, load, load_staged, pending_restore

__all__ = ["Autosaver", "RestoreInfo", "default_folder", "discard", "load", "load_staged", "pending_restore"]
