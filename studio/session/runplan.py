"""What the session knows of a generation before it runs: its mode, and for an inpaint the area it
works on, so the canvas can show that area before the run and the masked region forming during it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QImage, QPainter

from studio.core.requests import GenerateRequest
from studio.qimage import array_to_qimage

Rect = tuple[int, int, int, int]  # x, y, w, h in image pixels
MODE_LABELS = {"txt2img": "Generate", "img2img": "Image to image", "inpaint": "Inpaint", "upscale": "Upscale"}
CROP_FIELDS = frozenset({"mode", "inpaint_area", "inpaint_padding", "mask_blur", "width", "height"})


def crop_rect(mask: np.ndarray, blur: int, padding: int, image_size: tuple[int, int],
              aspect: tuple[int, int]) -> Rect | None:  # fmt: skip
    """The engine's own "only masked" box (studio.core.inpaint.crop_box) as (x, y, w, h)."""
    from studio.core.inpaint import crop_box

    try:
        box = crop_box(mask, blur, padding, image_size=image_size, aspect=aspect)
    except ValueError:
        return None
    if box is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0, y0, x1 - x0, y1 - y0)


@dataclass
class RunPlan:
    mode: str
    rect: Rect | None = None  # the image area an inpaint works on (the whole image for "whole")
    mask: np.ndarray | None = field(default=None, repr=False)  # the mask inside rect
    blur: int = 0
    _alpha: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    source: np.ndarray | None = field(default=None, repr=False)  # an upscale's input
    canvas: QImage | None = field(default=None, repr=False)  # an upscale forming at its output size

    @classmethod
    def for_request(cls, r: GenerateRequest) -> RunPlan:
        if r.mode == "upscale" and r.init_image is not None:
            return cls(r.mode, source=r.init_image)
        if r.mode != "inpaint" or r.mask is None or r.init_image is None:
            return cls(r.mode)
        h, w = r.mask.shape
        rect: Rect = (0, 0, w, h)
        if r.inpaint.area == "masked":
            rect = crop_rect(r.mask, r.inpaint.mask_blur, r.inpaint.padding, (w, h), (r.width or 1, r.height or 1)) or rect
        x, y, cw, ch = rect
        return cls(r.mode, rect, np.array(r.mask[y : y + ch, x : x + cw]), int(r.inpaint.mask_blur))

    @classmethod
    def for_region(cls, mode: str, box: Rect, feather: int) -> RunPlan:
        """An img2img of a selection: its previews over the selection through the paste's own feathered edge."""
        from .region import feather_alpha

        return cls(mode, box, feather_alpha(box[2], box[3], feather), 0)

    def overlay(self, preview: np.ndarray) -> QImage | None:
        """The live preview as an ARGB image whose alpha is the feathered mask, at the preview's size."""
        if self.mask is None or preview.ndim != 3:
            return None
        ph, pw = preview.shape[:2]
        alpha = self._alpha.get((pw, ph))
        if alpha is None:
            alpha = self._alpha[(pw, ph)] = self._small_alpha(pw, ph)
        rgba = np.empty((ph, pw, 4), np.uint8)
        rgba[..., :3] = preview[..., :3]
        rgba[..., 3] = alpha
        return array_to_qimage(rgba)

    def _small_alpha(self, pw: int, ph: int) -> np.ndarray:
        # Feathered at the preview's scale: cheap, and the preview is that coarse anyway.
        from PIL import Image, ImageFilter

        assert self.mask is not None  # overlay() asks only for an inpaint's plan
        small = Image.fromarray(self.mask, "L").resize((pw, ph), Image.Resampling.BILINEAR)
        radius = self.blur * pw / max(1, self.mask.shape[1])
        if radius >= 0.5:
            small = small.filter(ImageFilter.GaussianBlur(radius))
        return np.asarray(small, np.uint8)

    # -- an upscale forming ---------------------------------------------------------------------

    def start_canvas(self, width: int, height: int) -> None:
        if self.source is None or width <= 0 or height <= 0:
            return
        base = array_to_qimage(self.source)
        self.canvas = base.scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio,
                                  Qt.TransformationMode.SmoothTransformation).convertToFormat(
                                      QImage.Format.Format_RGB888)  # fmt: skip

    def paint(self, preview: np.ndarray, region: Rect | None) -> None:
        """A tile's preview into its place on the forming output (the whole output when region is None)."""
        if self.canvas is None:
            return
        x, y, w, h = region if region is not None else (0, 0, self.canvas.width(), self.canvas.height())
        painter = QPainter(self.canvas)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        painter.drawImage(QRect(int(x), int(y), int(w), int(h)), array_to_qimage(np.ascontiguousarray(preview)))
        painter.end()
