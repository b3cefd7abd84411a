"""The turbo path's one failure the caller handles: it then runs in a non-turbo mode and says why in one line."""

from __future__ import annotations


class TurboUnavailable(Exception):
    """OpenVINO is missing or broken, or it failed to convert or compile the U-Net; str(e) is one line."""


def one_line(prefix: str, e: BaseException) -> TurboUnavailable:
    text = str(e).strip().splitlines()
    detail = text[0].strip() if text else type(e).__name__
    return TurboUnavailable(f"{prefix}: {detail}"[:300])


def import_openvino():
    """`import openvino` only here, on first use of turbo (0.4 s; the UI and CLI start must not pay it)."""
    try:
        import openvino as ov
    except ImportError:
        raise TurboUnavailable("OpenVINO is not installed") from None
    except Exception as e:  # noqa: BLE001 - a broken install raises anything (OSError for a missing library...)
        raise one_line("OpenVINO cannot be loaded", e) from e
    return ov
