"""Control layers (numpy only, no Qt): a raster layer whose pixels are a ControlNet's control image, not picture.

A control layer is a `studio.session.layers.Layer` with `control` set (a `ControlProps`): it never takes part in the
flattened picture (the init image), it is sent as one `ControlSpec` of the request when visible, and it is drawn on the
canvas as a tinted, semi-transparent overlay. Its pixels are RGBA like any layer's; the control image is the layer over
black: `rgb * alpha / 255`. So the artist's strokes (the brush paints a control layer in white whatever the paint
colour) are white lines on black, which is what scribble, line-art, soft-edge and canny ControlNets were trained on,
and the eraser makes black again. A preprocessor's output is stored so that it comes back exactly: alpha = the
brightest channel, colour = the image divided by it (a grey edge map becomes white at alpha = its grey).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from studio.core.control import CONTROL_MODES, CONTROL_MODULES, ControlSpec

DRAWN = ("scribble", "lineart")  # types an artist draws by hand (the default for a new control layer: scribble)


@dataclass(frozen=True)
class ControlProps:
    """What a control layer sends besides its image: A1111's module, model, weight, guidance start / end, mode."""

    module: str = "scribble"
    model: str = ""
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = CONTROL_MODES[0]

    def replace(self, **changes: Any) -> ControlProps:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ControlProps:
        """From a project file: anything missing or out of range becomes the default (a file from anywhere)."""
        d = d if isinstance(d, dict) else {}

        def num(key: str, lo: float, hi: float, default: float) -> float:
            v = d.get(key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
            return float(v) if ok else default

        start, end = num("start", 0.0, 1.0, 0.0), num("end", 0.0, 1.0, 1.0)
        if start >= end:
            start, end = 0.0, 1.0
        module = d.get("module") if d.get("module") in CONTROL_MODULES else "scribble"
        mode = d.get("mode") if d.get("mode") in CONTROL_MODES else CONTROL_MODES[0]
        model = str(d.get("model") or "")[:1000]
        return cls(module, model, num("weight", 0.0, 2.0, 1.0), start, end, mode)

    def spec(self, image: np.ndarray) -> ControlSpec:
        return ControlSpec(self.model, image, self.module, self.weight, self.start, self.end, self.mode)


def control_image(pixels: np.ndarray) -> np.ndarray:
    """A control layer's RGBA pixels over black: the HxWx3 image the ControlNet sees."""
    a = pixels[..., 3:4].astype(np.uint16)
    v = pixels[..., :3].astype(np.uint16) * a
    return ((v + 127) // 255).astype(np.uint8)


def layer_pixels(image: np.ndarray) -> np.ndarray:
    """The RGBA pixels whose control image is exactly `image` (HxWx3 uint8 on black): alpha = the brightest channel,
    colour = the image divided by it (rounded; rounding back with control_image() gives `image` again)."""
    rgb = np.asarray(image, dtype=np.uint8)[..., :3]
    a = rgb.max(axis=2)
    out = np.zeros((*rgb.shape[:2], 4), np.uint8)
    safe = np.maximum(a, 1).astype(np.uint32)[..., None]
    out[..., :3] = np.minimum((rgb.astype(np.uint32) * 255 + safe // 2) // safe, 255)
    out[..., 3] = a
    out[a == 0] = 0
    return out
