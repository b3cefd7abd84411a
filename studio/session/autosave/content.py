"""Content-addressed data files: names from a hash of the pixels, and the bytes they hold.

`<hash>` is 24 hex digits of BLAKE2b over the pixels and their shape/format, so a file never changes
once written and any number of states can share one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtGui import QImage

PNG_QUALITY = 80  # Qt maps it to zlib level 1: lossless, about 3x faster than the default level


def image_rows(img: QImage) -> np.ndarray:
    """The image's pixel bytes without the scanline padding, (h, row bytes), contiguous."""
    h, bpl = img.height(), img.bytesPerLine()
    row = (img.width() * img.depth() + 7) // 8
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)[:, :row]
    return np.ascontiguousarray(buf)


def image_name(img: QImage) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"qimage:{img.format().value}:{img.width()}x{img.height()}:".encode())
    digest.update(image_rows(img).data)
    return f"img-{digest.hexdigest()}.png"


def mask_name(a: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"mask:{a.dtype.str}:{a.shape}:".encode())
    digest.update(np.ascontiguousarray(a).data)
    return f"mask-{digest.hexdigest()}.npz"


def image_file_is(path: Path, name: str, like: QImage) -> bool:
    """True when the PNG at path decodes to the pixels that name hashes (in like's format)."""
    img = QImage()
    if not img.loadFromData(path.read_bytes(), "PNG") or img.isNull():
        return False
    if img.format() != like.format():
        img = img.convertToFormat(like.format())
    return image_name(img) == name


def mask_file_is(path: Path, name: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return mask_name(np.asarray(z["mask"])) == name
    except Exception:  # noqa: BLE001 - any unreadable file is simply rewritten
        return False


def png_bytes(img: QImage) -> bytes:
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    ok = img.save(buf, "PNG", PNG_QUALITY)  # type: ignore[call-overload]  # the stubs say bytes; PySide6 takes str
    buf.close()
    if not ok:
        raise OSError(f"could not encode a {img.width()}x{img.height()} image as PNG")
    return bytes(data.data())


def npz_bytes(a: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, mask=a)
    return out.getvalue()
