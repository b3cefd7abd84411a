"""Inpainting and outpainting geometry and pixels: mask feather, the "only masked" crop, masked content,
the outpaint canvas and the pixel-space composite.

numpy and Pillow only: no torch, no Qt. The UI imports this module to draw the crop rectangle and to
extend the canvas before a run; the engine uses the same functions during the run, so what the canvas
shows is what the engine does.

Conventions: images are HxWx3 uint8 RGB, masks HxW uint8 with 255 = repaint; sizes are (width, height);
boxes are (x0, y0, x1, y1) in image pixels, x1/y1 exclusive (so the box is x1 - x0 pixels wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .errors import RequestError
from .requests import MASKED_CONTENTS, GenerateRequest

Box = tuple[int, int, int, int]
MAX_SIDE = 4096  # the largest image side the engine takes (GenerateRequest's width/height limit)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"A mask must be a HxW array, got shape {m.shape}")
    return m.astype(np.uint8, copy=False)


def feather(mask: np.ndarray, blur_px: int | float) -> np.ndarray:
    """A1111's mask blur: the mask blurred by a Gaussian of standard deviation `blur_px` pixels.

    Pillow's GaussianBlur (radius = the standard deviation; edges extended), on the uint8 mask.
    `blur_px` <= 0 returns a copy of the mask itself. The result is HxW uint8: 0 far from the painted
    area, 255 deep inside it, about 128 on the painted edge.
    """
    m = _check_mask(mask)
    if blur_px <= 0:
        return m.copy()
    out = Image.fromarray(np.ascontiguousarray(m), "L").filter(ImageFilter.GaussianBlur(float(blur_px)))
    return np.asarray(out, dtype=np.uint8).copy()


def _box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    cols = np.flatnonzero(region.any(axis=0))
    if not cols.size:
        return None
    rows = np.flatnonzero(region.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _feathered_box(m: np.ndarray, blur_px: int | float) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of where the mask or its feather is above 0. The feather is computed only around
    the mask's own box, with a margin past the blur's reach (Pillow's Gaussian is three box passes of
    about the radius each): the same box as feathering the whole mask, without blurring a 2048x2048 mask
    (44 ms) each time the crop rectangle is redrawn after a stroke."""
    box = _box(m > 0)
    if box is None or blur_px <= 0:
        return box
    pad = int(np.ceil(4 * float(blur_px))) + 8
    h, w = m.shape
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    x1, y1 = min(w, box[2] + pad), min(h, box[3] + pad)
    sub = _box(feather(m[y0:y1, x0:x1], blur_px) > 0)
    if sub is None:
        return box
    return (min(box[0], x0 + sub[0]), min(box[1], y0 + sub[1]), max(box[2], x0 + sub[2]), max(box[3], y0 + sub[3]))


def blend_mask(mask: np.ndarray, blur_px: int | float) -> np.ndarray:
    """The mask the engine composites through: the feather doubled and clipped, min(255, 2 * feather).

    This is A1111's whole-picture overlay mask. The painted area (where the feather is at least half) is
    all generated, so nothing of what was under the painted edge shows through; the blend happens over
    the blur's reach outside it. It is 0 exactly where `feather` is 0: pixels outside the feathered mask
    stay the original's. With blur 0 it is the mask with every painted value doubled (255 stays 255).
    """
    f = feather(mask, blur_px).astype(np.uint16)
    return np.minimum(255, f * 2).astype(np.uint8)


def _grow(lo: int, hi: int, target: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to `target` pixels, centred, shifted to stay within [0, limit); never shrinks it.
    A target wider than the image gives the whole [0, limit)."""
    extra = target - (hi - lo)
    if extra <= 0:
        return lo, hi
    if target >= limit:
        return 0, limit
    lo -= extra // 2
    hi += extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, hi


def crop_box(
    mask: np.ndarray,
    blur_px: int | float,
    padding: int,
    image_size: tuple[int, int] | None = None,
    aspect: tuple[int, int] | None = None,
    multiple: int = 8,
) -> Box | None:
    """The area an "only masked" inpaint works on: (x0, y0, x1, y1) in image pixels (x1, y1 exclusive),
    or None for an empty mask.

    Exactly, in this order:
    1. The bounding box of the pixels where the mask or its feather (`feather(mask, blur_px)`) is above 0.
    2. Grown by `padding` pixels on every side, then clamped to the image (0..width, 0..height).
    3. Widened (never shrunk) to the working aspect ratio `aspect` = (width, height): the side that is
       too short grows to ceil(other side * ratio), centred on the box; where it would leave the image
       it is shifted back inside; where it cannot fit at all it becomes the whole image side (the
       aspect is then as close as the image allows). `aspect` None keeps the box's own shape.
    4. Aligned: each side widened (centred, shifted inside as in 3) to the next multiple of `multiple`,
       where the image side allows; otherwise that side is the whole image side.

    The box always holds every pixel the feathered mask touches, so a composite through the feathered
    mask never needs a pixel outside it. Step 4 can move the ratio away from `aspect` by less than
    `multiple` pixels on a side; the crop is resized to the working size anyway.
    `image_size` = (width, height) must be the mask's size when given (a check for callers holding both).
    """
    m = _check_mask(mask)
    h, w = m.shape
    if image_size is not None and (int(image_size[0]), int(image_size[1])) != (w, h):
        raise ValueError(f"The mask is {w}x{h} but the image is {image_size[0]}x{image_size[1]}")
    if padding < 0:
        raise ValueError(f"Padding must be 0 or more pixels, got {padding}")
    region = _feathered_box(m, blur_px)
    if region is None:
        return None
    x0, y0, x1, y1 = region

    x0, y0 = max(0, x0 - padding), max(0, y0 - padding)
    x1, y1 = min(w, x1 + padding), min(h, y1 + padding)

    if aspect is not None:
        aw, ah = int(aspect[0]), int(aspect[1])
        if aw <= 0 or ah <= 0:
            raise ValueError(f"The aspect must be two positive numbers, got {aspect}")
        bw, bh = x1 - x0, y1 - y0
        if bw * ah > bh * aw:  # too wide for the aspect: grow the height
            y0, y1 = _grow(y0, y1, -(-bw * ah // aw), h)
        elif bw * ah < bh * aw:  # too tall: grow the width
            x0, x1 = _grow(x0, x1, -(-bh * aw // ah), w)

    if multiple > 1:
        x0, x1 = _grow(x0, x1, -(-(x1 - x0) // multiple) * multiple, w)
        y0, y1 = _grow(y0, y1, -(-(y1 - y0) // multiple) * multiple, h)
    return x0, y0, x1, y1


# -- masked content ----------------------------------------------------------------------------------

def _resize_f(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Resize a float32 HxW array with Pillow (mode F)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), "F").resize(size, resample))


def _push_pull(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Colours for every pixel from the known ones (weight `known` in [0, 1]), by push-pull: the known
    colours and their weights are averaged down a pyramid to 1x1, then each level, going back up, keeps
    what it knows and takes the rest from the smoothly upsampled coarser level. A smooth fill from the
    surrounding colours; float32 HxWx3."""
    h, w = known.shape
    levels = []
    c = [rgb[..., i] * known for i in range(3)]
    k = known
    while True:
        levels.append((c, k))
        lh, lw = k.shape
        if lh == 1 and lw == 1:
            break
        size = (max(1, (lw + 1) // 2), max(1, (lh + 1) // 2))
        c = [_resize_f(ch, size, Image.Resampling.BOX) for ch in c]
        k = _resize_f(k, size, Image.Resampling.BOX)
    c, k = levels[-1]
    kk = float(k[0, 0])
    est = [np.full((1, 1), (float(ch[0, 0]) / kk) if kk > 1e-6 else 127.5, np.float32) for ch in c]
    for c, k in reversed(levels[:-1]):
        lh, lw = k.shape
        kc = np.clip(k, 0.0, 1.0)
        est = [ch + (1.0 - kc) * _resize_f(e, (lw, lh), Image.Resampling.BILINEAR) for ch, e in zip(c, est, strict=True)]
    return np.stack(est, axis=-1)


def fill_masked(image: np.ndarray, mask: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """What the masked area starts from (A1111's "Masked content"); returns a new HxWx3 uint8 image.

    - "original": the image unchanged (a copy).
    - "fill": the masked area filled from the surrounding colours: a smooth push-pull interpolation of
      the unmasked pixels (our own code, in the spirit of A1111's repeated blur-and-restore "fill").
    - "noise": the masked area replaced by uniform random colours drawn from `seed`. This is pixel-space
      noise standing in for A1111's "latent noise" (which writes noise into the latent): the VAE encodes
      it into the init latent, which has the same purpose, making the model ignore what was there.

    The mask is used as alpha (255 = replaced, 0 = untouched, blended between), so pixels where the mask
    is 0 are the image's own, exactly. An all-masked image fills with mid grey for "fill".
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"An image must be HxWx3, got shape {img.shape}")
    m = _check_mask(mask)
    if m.shape != img.shape[:2]:
        raise ValueError(f"The mask is {m.shape[1]}x{m.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}")
    if mode not in MASKED_CONTENTS:
        raise RequestError(f"Unknown masked content {mode!r}; use original, fill or noise")
    out = np.array(img, dtype=np.uint8, copy=True)
    if mode == "original" or not m.any():
        return out
    if mode == "fill":
        known = 1.0 - m.astype(np.float32) / 255.0
        new = _push_pull(img.astype(np.float32), known)
    else:
        new = np.random.default_rng(int(seed)).integers(0, 256, img.shape, dtype=np.uint8).astype(np.float32)
    return composite(out, np.clip(np.rint(new), 0, 255).astype(np.uint8), m)


# -- outpainting -------------------------------------------------------------------------------------


def outpaint_canvas(
    image: np.ndarray, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0, overlap: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """The image extended by `left`/`top`/`right`/`bottom` pixels, and the mask to inpaint it with.

    The new area is filled with the image's edge colours carried outwards and blurred (not black), so an
    inpaint at a strength below 1 starts from plausible colours. The mask is 255 over the new area and
    ramps down into the old image over `overlap` pixels along each extended side (254/255 .. 1/255 of
    the way: v = 255 * (overlap - d) / (overlap + 1) at d pixels inside), so the seam is repainted and
    blended; 0 elsewhere. The old pixels are copied unchanged into the new image.

    Raises RequestError for a negative amount or overlap, nothing to extend, or a result wider or taller
    than 4096 pixels.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise RequestError(f"Outpainting needs an RGB image (HxWx3 uint8), got shape {img.shape}")
    amounts = {"left": left, "top": top, "right": right, "bottom": bottom}
    for name, v in (*amounts.items(), ("overlap", overlap)):
        if int(v) != v or v < 0:
            raise RequestError(f"Outpaint {name} must be 0 or more pixels, got {v}")
    left, top, right, bottom, overlap = int(left), int(top), int(right), int(bottom), int(overlap)
    if not (left or top or right or bottom):
        raise RequestError("Nothing to outpaint: give at least one side a number of pixels")
    h, w = img.shape[:2]
    nw, nh = w + left + right, h + top + bottom
    if nw > MAX_SIDE or nh > MAX_SIDE:
        raise RequestError(f"Outpainting {w}x{h} by that much gives {nw}x{nh}: at most {MAX_SIDE} pixels a side")

    padded = np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="edge")
    radius = max(2.0, min(64.0, max(left, top, right, bottom) / 4.0))
    blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius)))
    out = blurred.copy()
    out[top : top + h, left : left + w] = img

    mask = np.full((nh, nw), 255, np.uint8)
    inner = np.zeros((h, w), np.float32)
    for side, amount in amounts.items():
        n = min(overlap, w if side in ("left", "right") else h)
        if not amount or n <= 0:
            continue
        ramp = (255.0 * (n - np.arange(n, dtype=np.float32)) / (n + 1)).astype(np.float32)
        if side == "left":
            inner[:, :n] = np.maximum(inner[:, :n], ramp[None, :])
        elif side == "right":
            inner[:, w - n :] = np.maximum(inner[:, w - n :], ramp[::-1][None, :])
        elif side == "top":
            inner[:n, :] = np.maximum(inner[:n, :], ramp[:, None])
        else:
            inner[h - n :, :] = np.maximum(inner[h - n :, :], ramp[::-1][:, None])
    mask[top : top + h, left : left + w] = np.rint(inner).astype(np.uint8)
    return out, mask


# -- compositing -------------------------------------------------------------------------------------


def composite(original: np.ndarray, generated: np.ndarray, feathered_mask: np.ndarray) -> np.ndarray:
    """original * (1 - m) + generated * m, with m = feathered_mask / 255, in integers, rounded.

    Where the mask is 0 the result is the original's pixel, bit for bit (the VAE round trip is lossy,
    so repeated inpaints must never touch the rest of the image); where it is 255, the generated one.
    All three arrays have the same height and width; returns a new HxWx3 uint8 array.
    """
    o = np.asarray(original)
    g = np.asarray(generated)
    m = _check_mask(feathered_mask)
    if o.shape != g.shape or o.shape[:2] != m.shape:
        raise ValueError(f"composite needs equal sizes: original {o.shape}, generated {g.shape}, mask {m.shape}")
    a = m.astype(np.uint32)[..., None]
    out = (o.astype(np.uint32) * (255 - a) + g.astype(np.uint32) * a + 127) // 255
    return out.astype(np.uint8)


__all__ = ["MAX_SIDE", "blend_mask", "composite", "crop_box", "feather", "fill_masked", "outpaint_canvas"]


@dataclass
class InpaintPlan:
    """One inpaint, in pixels: the area it works on, what the model is given, how the result goes back.

    The mask is feathered by mask_blur (`feather`). The model repaints where the mask or its
    feather is at least half (the pipelines binarise at 0.5; taking the larger of the two keeps a thin
    painted stroke that the blur would fade below half). "only masked" works on `crop_box` of
    the mask (the working size's aspect), scaled to the working size; "whole" on the whole image scaled
    to the working size. Masked content (`fill_masked`) is applied to the working image. The
    result is scaled back to the box and composited into the full original in pixel space through
    `blend_mask` (the feather doubled, A1111's whole-picture overlay: the painted area all new,
    the blend over the blur's reach outside it): where the feather is 0 the original's pixels are kept,
    bit for bit.
    """

    original: np.ndarray  # HxWx3, the request's init image
    feathered: np.ndarray  # HxW, the composite's mask (blend_mask)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels
    cropped: bool
    work_image: np.ndarray  # the model's input image at the working size
    work_mask: np.ndarray  # the model's mask at the working size

    @classmethod
    def make(cls, r: GenerateRequest, seed: int) -> InpaintPlan:
        from PIL import Image

        image, mask = r.init_image, r.mask
        if image is None or mask is None:
            raise RequestError("Inpainting needs an image and a mask")
        ih, iw = image.shape[:2]
        if r.width is None or r.height is None:
            raise RequestError("An inpaint plan needs the working size (width and height)")
        size = (int(r.width), int(r.height))
        feathered = feather(mask, r.inpaint.mask_blur)
        paint = np.maximum(mask, feathered)
        blend = blend_mask(mask, r.inpaint.mask_blur)
        box = (0, 0, iw, ih)
        cropped = r.inpaint.area == "masked"
        if cropped:
            found = crop_box(mask, r.inpaint.mask_blur, r.inpaint.padding, image_size=(iw, ih), aspect=size)
            if found is None:
                raise RequestError("The mask is empty: paint the area to repaint")
            box = found
        x0, y0, x1, y1 = box
        crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
        crop_mask = Image.fromarray(np.ascontiguousarray(paint[y0:y1, x0:x1]), "L")
        if crop.size != size:
            crop = crop.resize(size, Image.Resampling.LANCZOS)
            crop_mask = crop_mask.resize(size, Image.Resampling.BILINEAR)
        work_mask = np.asarray(crop_mask, np.uint8)
        work_image = fill_masked(np.asarray(crop, np.uint8), work_mask, r.inpaint.masked_content, seed)
        return cls(image, blend, box, cropped, work_image, work_mask)

    def image_pil(self):
        from PIL import Image

        return Image.fromarray(self.work_image)

    def mask_pil(self):
        from PIL import Image

        return Image.fromarray(self.work_mask, "L")

    def paste(self, generated: np.ndarray) -> np.ndarray:
        """A decoded working-size image -> the full-size result: scaled to the box, composited."""
        from PIL import Image

        x0, y0, x1, y1 = self.box
        size = (x1 - x0, y1 - y0)
        g = generated
        if (g.shape[1], g.shape[0]) != size:
            g = np.asarray(Image.fromarray(g).resize(size, Image.Resampling.LANCZOS), np.uint8)
        full = np.array(self.original, copy=True)
        full[y0:y1, x0:x1] = g
        return composite(self.original, full, self.feathered)
