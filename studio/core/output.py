"""Saving images with their generation metadata: atomic writes and A1111-like file names.

PNG gets a `parameters` text chunk (tEXt, or iTXt when the text is not Latin-1, exactly what
A1111's `PngInfo.add_text` does); JPEG and WebP get the same text as EXIF UserComment
(b"UNICODE\\0" + UTF-16BE, as A1111 writes it through piexif). No Qt and no torch here.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import TMP_SUFFIX, atomic_write
from .errors import EngineError, RequestError, first_line
from .metadata import encode_user_comment, parameters_for
from .requests import GenerateResult

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
JPEG_QUALITY = 95
WEBP_QUALITY = 95
_MAX_JPEG_EXIF = 65533  # one APP1 segment: 64 KiB less the length field


def exif_with_user_comment(text: str) -> bytes:
    """A minimal big-endian EXIF block ("Exif\\0\\0" + TIFF) holding only UserComment, type UNDEFINED.

    Built by hand: Pillow's Exif writer would store the tag as BYTE, which piexif-based readers
    (A1111's own) do not decode as a UserComment.
    """
    comment = encode_user_comment(text)
    exif_ifd_offset = 8 + 2 + 12 + 4  # header, IFD0 with one entry, next-IFD pointer
    data_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, exif_ifd_offset) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), data_offset) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff + comment


def _to_pil(image: np.ndarray):
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise RequestError(f"Cannot save an image of type {a.dtype}: expected uint8")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a), "L")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")
    raise RequestError(f"Cannot save an image of shape {a.shape}: expected HxWx3")


def save_image(image: np.ndarray, path: str | os.PathLike, parameters: str, *, overwrite: bool = True) -> Path:
    """Write `image` (HxWx3 uint8; HxWx4 and HxW also accepted) with its `parameters` text, atomically.

    The file is written to a hidden temporary file in the same folder, flushed and fsynced, then
    renamed over `path`: a reader never sees a half-written image, and a failed save leaves neither
    a partial file nor the temporary one. The format comes from the suffix: .png, .jpg/.jpeg, .webp.
    With overwrite=False an existing `path` raises FileExistsError (the check and the rename are one
    step where the file system supports hard links). Other failures raise EngineError.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RequestError(f"Cannot save {path.name}: use .png, .jpg or .webp")
    im = _to_pil(image)
    kwargs: dict[str, object] = {}
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("parameters", parameters)  # tEXt when Latin-1, else iTXt (Pillow decides)
        kwargs["pnginfo"] = info
    else:
        exif = exif_with_user_comment(parameters)
        if fmt == "JPEG":
            if len(exif) > _MAX_JPEG_EXIF:
                raise RequestError(f"Cannot save {path.name}: the prompt is too long for JPEG metadata; save as PNG")
            if im.mode == "RGBA":
                im = im.convert("RGB")
            kwargs.update(quality=JPEG_QUALITY)
        else:
            kwargs.update(quality=WEBP_QUALITY)
        kwargs["exif"] = exif

    try:
        with atomic_write(path, overwrite=overwrite) as f:
            im.save(f, format=fmt, **kwargs)
    except BaseException as e:
        if isinstance(e, FileExistsError) or not isinstance(e, (OSError, ValueError)) or isinstance(e, EngineError):
            raise
        # an OSError's strerror ("No space left on device") reads better than its "[Errno 28] ..." str
        raise EngineError(f"Cannot save image {path}: {first_line(getattr(e, 'strerror', None) or e)}") from e
    return path


_RE_COUNTER = re.compile(r"^(\d+)(?:[-.]|$)")
_INVALID = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


def _sanitize(hint: str, limit: int = 64) -> str:
    s = _INVALID.sub("_", hint)
    s = re.sub(r"\s+", " ", s).strip(" ._-")
    return s[:limit].rstrip(" ._-")


def next_paths(out_dir: str | os.PathLike, n: int, seed: int | None, stem_hint: str = "", *, ext: str = ".png"
               ) -> list[Path]:  # fmt: skip
    """`n` new file names in `out_dir`, A1111-style: "00012-1234.png" (image i gets seed + i); "00012.png" for
    seed None (a run that drew no noise: a resize).

    The 5-digit counter continues past the highest counter of any file in the folder (as A1111
    does: a name starting with digits then "-" or "."), so names never repeat an existing file.
    `stem_hint` (e.g. the start of the prompt) is appended after the seed, made safe for file
    names. The folder is created if missing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = ext if ext.startswith(".") else f".{ext}"
    names = os.listdir(out)
    taken = {name.lower() for name in names}
    counter = 0
    for name in names:
        m = _RE_COUNTER.match(name)
        if m:
            counter = max(counter, int(m.group(1)) + 1)
    hint = _sanitize(stem_hint)
    suffix = f"-{hint}" if hint else ""
    paths: list[Path] = []
    for i in range(n):
        while True:
            name = f"{counter:05d}{'' if seed is None else f'-{seed + i}'}{suffix}{ext}"
            counter += 1
            if name.lower() not in taken and not (out / name).exists():
                break
        taken.add(name.lower())
        paths.append(out / name)
    return paths


class SaveError(EngineError):
    """Some images of a run were not saved: `paths` are those that were (images 1..len(paths)), the rest were not."""

    def __init__(self, message: str, paths: list[Path]):
        super().__init__(message)
        self.paths = paths


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """`out_dir`, proven before a run to take a file: a temporary one is written and removed in it, or in its
    nearest existing folder when it is still to be made (the first save makes it: a refused run leaves nothing).

    RequestError naming the folder when it is a file, below a file, read-only or otherwise unwritable.
    """
    out = Path(out_dir).expanduser().absolute()
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        if not probe.is_dir():
            reason = "it is a file, not a folder" if probe == out else "a part of its path is a file"
            raise NotADirectoryError(errno.ENOTDIR, reason)
        fd, name = tempfile.mkstemp(prefix=".studio-write-test-", suffix=TMP_SUFFIX, dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise RequestError(f"Cannot write to the output folder {out_dir}: {e.strerror or first_line(e)}") from e
    return out


def save_result(
    result: GenerateResult,
    out_dir: str | os.PathLike,
    version: str,
    *,
    ext: str = ".png",
    on_saved: Callable[[Path], bool | None] | None = None,
) -> list[Path]:
    """Save every image of a run into `out_dir` with its own `parameters` text; returns the paths.

    Image i is written with result.seeds[i]; when the request has no width/height, Size comes from
    the image. A file that appears under a chosen name meanwhile is never overwritten: the next name
    is taken instead. `on_saved(path)` is called as each file is written; returning False stops there
    (the paths so far are returned). A failed save raises SaveError: its `paths` are the images saved
    before it, its message names the images that were not.
    """
    paths: list[Path] = []
    n = len(result.images)
    for i, img in enumerate(result.images):
        try:
            path = _save_one(result, i, img, out_dir, version, ext)
        except (EngineError, OSError) as e:
            if isinstance(e, RequestError):
                raise
            missing = list(range(i + 1, n + 1))
            names = " and ".join([", ".join(map(str, missing[:-1])), str(missing[-1])] if len(missing) > 1 else
                                 [str(missing[0])])  # fmt: skip
            reason = first_line(getattr(e, "strerror", None) or e) if isinstance(e, OSError) else first_line(e)
            if n > 1:
                reason += f" (image{'s' if len(missing) > 1 else ''} {names} of {n} not saved)"
            raise SaveError(reason, paths) from e
        paths.append(path)
        if on_saved is not None and on_saved(path) is False:
            break
    return paths


def _save_one(result: GenerateResult, i: int, img, out_dir: str | os.PathLike, version: str, ext: str) -> Path:
    req = result.request
    if not (req.width and req.height):
        h, w = np.asarray(img).shape[:2]
        req = req.replace(width=int(w), height=int(h))
    seed = result.seeds[i] if i < len(result.seeds) else (result.seeds[0] if result.seeds else 0) + i
    text = parameters_for(req, seed, result.model_name, result.model_hash, version, result.extra_params, index=i)
    for _attempt in range(100):
        target = next_paths(out_dir, 1, seed if result.seeds else None, ext=ext)[0]
        try:
            return save_image(img, target, text, overwrite=False)
        except FileExistsError:
            continue
    raise EngineError(f"Cannot save image in {out_dir}: no free file name")


def save_control_images(result: GenerateResult, paths: list[Path]) -> list[Path]:
    """Each control image of the run beside each saved image, as ``<name>.control<i>.png`` (the metadata names the
    ControlNet, not its image); atomically. Returns the files written."""
    from PIL import Image

    written = []
    for path in paths:
        for i, c in enumerate(result.request.controls):
            if c.image is None:
                continue
            dest = Path(path).with_name(f"{Path(path).stem}.control{i}.png")
            with atomic_write(dest) as f:
                Image.fromarray(np.ascontiguousarray(c.image)).save(f, format="PNG")
            written.append(dest)
    return written
