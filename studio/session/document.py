"""The document: the image being worked on, its mask, and their undo history.

The canvas shows it and paints into it; it does not own it. The mask is an HxW uint8 array the
size of the image (255 = repaint, as the engine takes it), or None. A new image of another size
drops the mask; one of the same size keeps it, so a mask painted once is reused across runs.

Every change that an artist would want back is recorded: strokes (as the rectangle they touched),
mask fill / clear / invert / load / grow / shrink, rectangle and lasso fills (a patch each), and image
replacements (results, a new canvas, an outpaint).

Layers (studio.session.layers): the document holds a stack of raster layers and one document-wide mask. `image` is
always the flattened stack (what the canvas shows and a request takes), so code that knows one image keeps working.
A structural layer operation (add, delete, rename, reorder, visibility, opacity, merge down, a result landing as a
layer) is an ImageEdit whose states carry the stack; a colour stroke is a LayerPaint (the rectangle it touched on one
layer). While a stroke paints, only its dirty rectangle is flattened (over a cached flatten of the layers below the
active one) and `pixels_changed(rect)` tells the canvas which part of `image` to redraw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from studio.core.control import ControlSpec
from studio.qimage import array_to_qimage, qimage_to_array
from studio.qtcompat import emit

from .controls import ControlProps, control_image, layer_pixels
from .history import History, ImageEdit, LayerPaint, MaskEdit, Rect, clip_rect, patch, union
from .layers import ColourStroke, Layer, blank, composite, grown, merge_pair, scaled, scaled_mask
from .masktools import Region, apply_region, grow, shrink


@dataclass(frozen=True)
class DocState:
    """One whole state of the document (what an image edit keeps before and after)."""

    image: QImage | None = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    path: Path | None = None
    caption: str = ""
    layers: tuple[Layer, ...] | None = field(default=None, repr=False)  # None: one layer, the image
    active: int = 0

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.parts())

    def parts(self) -> list:
        """(identity, bytes) of what the state holds: layers share their arrays with other states."""
        out: list = []
        if self.image is not None:
            out.append((("i", self.image.cacheKey()), self.image.sizeInBytes()))
        if self.mask is not None:
            out.append((("a", id(self.mask)), self.mask.nbytes))
        for la in self.layers or ():
            out.extend(la.parts())
        return out


class Document(QObject):
    image_changed = Signal(QImage)
    mask_changed = Signal(object)  # the Rect (x, y, w, h) that changed, or None: all of it
    history_changed = Signal()
    changed = Signal()  # anything an autosave should write (image, mask or history)
    selection_changed = Signal(object)  # the selected rectangle (x, y, w, h in image px), or None
    layers_changed = Signal()  # the stack, a layer's name / visibility / opacity, or the active layer
    pixels_changed = Signal(object)  # a Rect of `image` repainted in place (a colour stroke, its undo)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.path: Path | None = None  # where the image is on disk, if it is
        self.caption = ""
        self._mask: np.ndarray | None = None
        self.history = History(on_change=lambda: emit(self.history_changed))
        self._stroke: tuple[str, np.ndarray | None, Rect | None] | None = None  # label, mask before, touched
        self.selection: Rect | None = None  # a region to work on (upscale it), not part of the undo history
        self.layers: list[Layer] = []  # bottom to top
        self.active = 0  # the layer a colour stroke paints on
        self._flat: np.ndarray | None = None  # `image` as an HxWx3 array, kept while strokes paint
        self._below: tuple[tuple, np.ndarray] | None = None  # (key, the flatten of the layers under the active one)
        self._paint: tuple[str, ColourStroke, int, Rect | None] | None = None  # label, stroke, layer uid, touched
        self._last_push: object | None = None  # the entry a slider drag folds into (opacity)
        self._pixel_versions: dict[int, int] = {}  # layer uid -> paint count (the autosave's image cache key)
        self._layer_images: dict[int, tuple[tuple, QImage]] = {}
        self._array_versions: dict[int, int] = {}  # id(pixel array) -> paint count (a save's image cache key)
        self._array_images: dict[int, tuple[np.ndarray, int, QImage]] = {}

    # -- image --------------------------------------------------------------------------------

    def state(self) -> DocState:
        """A snapshot: the mask is copied (strokes paint into the live one in place)."""
        mask = self._mask.copy() if self._mask is not None else None
        return DocState(self.image, mask, self.path, self.caption, tuple(self.layers), self.active)

    def set_image(self, image: QImage | None, path: Path | None = None, caption: str = "",
                  record: str | None = None, merge: bool = False) -> None:  # fmt: skip
        """Show a new image. record: an undo label ("Result", "Open image"...), None: not undoable. merge: fold into
        the last entry when it has the same label and nothing changed since (browsing the gallery: one entry)."""
        before = self.state()
        h = self.history
        last = h.entries[-1] if h.entries and h.cursor == len(h.entries) else None
        if merge and isinstance(last, ImageEdit) and last.label == record and last.after.image is self.image:
            before = last.before
            del h.entries[-1]
            h.cursor -= 1
        same_size = image is not None and self.image is not None and image.size() == self.image.size()
        mask = self._mask if same_size else None
        self._apply(DocState(image, mask, path, caption, self._one_layer(image, path, caption)))
        if record:
            self.history.push(ImageEdit(record, before, self.state()))
        emit(self.changed)

    def replace(self, image: QImage, mask: np.ndarray | None, label: str, path: Path | None = None,
                caption: str = "") -> None:  # fmt: skip
        """Image and mask together, undoably (an outpaint's larger canvas and its new mask)."""
        if mask is not None:
            mask = self._checked(mask, image.width(), image.height())
        before = self.state()
        self._apply(DocState(image, mask, path, caption, self._one_layer(image, path, caption)))
        self.history.push(ImageEdit(label, before, self.state()))
        emit(self.changed)

    def set_selection(self, rect: Rect | None) -> None:
        """Select a rectangle of the image (clipped to it; None or an empty one clears the selection)."""
        if rect is not None:
            w, h = self.size()
            x, y, rw, rh = (int(v) for v in rect)
            rect = clip_rect((x, y, rw, rh), w, h)
            if rect is not None and (rect[2] < 2 or rect[3] < 2):
                rect = None
        if rect != self.selection:
            self.selection = rect
            emit(self.selection_changed, rect)

    def _apply(self, state: DocState) -> None:
        if self.image is None or state.image is None or self.image.size() != state.image.size():
            self.set_selection(None)  # a selection belongs to an image of its size
        mask_before = self._mask
        self._end_paint_quietly()
        self.image, self.path, self.caption = state.image, state.path, state.caption
        self._mask = state.mask.copy() if state.mask is not None else None  # never paint into a history entry
        if state.layers is not None:
            self.layers = list(state.layers)
        else:  # a state from before layers (an old save): its image is the one layer
            self.layers = list(self._one_layer(state.image, state.path, state.caption))
        self.active = max(0, min(state.active, len(self.layers) - 1))
        self._flat = None  # (the flatten under the active layer is keyed by what it holds: it may still serve)
        emit(self.image_changed, state.image if state.image is not None else QImage())
        emit(self.layers_changed)
        if mask_before is not state.mask:
            emit(self.mask_changed, None)

    def has_image(self) -> bool:
        return self.image is not None and not self.image.isNull()

    def size(self) -> tuple[int, int]:
        """(width, height), (0, 0) without an image."""
        image = self.image
        return (image.width(), image.height()) if image is not None and not image.isNull() else (0, 0)

    def image_array(self) -> np.ndarray | None:
        """A copy of the image as HxWx3 uint8 RGB (what a request takes)."""
        image = self.image
        if image is None or image.isNull():
            return None
        return qimage_to_array(image.convertToFormat(QImage.Format.Format_RGB888))[..., :3].copy()

    # -- mask ---------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    def has_mask(self) -> bool:
        return self._mask is not None and bool(self._mask.any())

    def _checked(self, mask: np.ndarray, w: int, h: int) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.dtype != np.uint8 or mask.shape != (h, w):
            raise ValueError(f"the mask must be {w}x{h} uint8, got {mask.shape[::-1]} {mask.dtype}")
        return mask.copy()

    def set_mask(self, mask: np.ndarray | None, label: str | None = None) -> None:
        """Replace the mask (copied); label makes it undoable. ValueError when it is not HxW uint8
        of the image's size."""
        if mask is not None:
            mask = self._checked(mask, *self.size())
        before = self._mask
        self._mask = mask
        if label:
            self.history.push(MaskEdit(label, None, before, mask.copy() if mask is not None else None))
        emit(self.mask_changed, None)
        emit(self.changed)

    def clear_mask(self) -> None:
        if self._mask is not None:
            self.set_mask(None, "Clear mask")

    def fill_mask(self) -> None:
        if self.has_image():
            w, h = self.size()
            self.set_mask(np.full((h, w), 255, np.uint8), "Fill mask")

    def invert_mask(self) -> None:
        if self.has_image():
            w, h = self.size()
            current = self._mask if self._mask is not None else np.zeros((h, w), np.uint8)
            self.set_mask(255 - current, "Invert mask")

    def fill_region(self, region: Region | None, erase: bool = False, label: str = "Fill shape") -> bool:
        """Mask (or with erase unmask) a region (studio.session.masktools: a rectangle, a lasso), one
        undo entry; False when it changed nothing (no image, or erasing where nothing is masked)."""
        if region is None or not self.has_image() or (erase and self._mask is None):
            return False
        if self._stroke is not None:
            self.end_stroke()
        w, h = self.size()
        (x, y, rw, rh), inside = region
        if inside.shape != (rh, rw) or clip_rect((x, y, rw, rh), w, h) != (x, y, rw, rh):
            raise ValueError(f"the region {(x, y, rw, rh)} is not inside the {w}x{h} image")
        rect = (x, y, rw, rh)
        if self._mask is None:  # the first shape makes the mask: undo removes it again, as after a stroke
            self._mask = np.zeros((h, w), np.uint8)
            apply_region(self._mask, region, erase)
            self.history.push(MaskEdit(label, None, None, self._mask.copy()))
        else:
            before = self._mask[y : y + rh, x : x + rw].copy()
            apply_region(self._mask, region, erase)
            after = self._mask[y : y + rh, x : x + rw].copy()
            if np.array_equal(before, after):
                return False
            self.history.push(MaskEdit(label, rect, before, after))
        emit(self.mask_changed, rect)
        emit(self.changed)
        return True

    def grow_mask(self, pixels: int) -> bool:
        """Move the mask's edge out by pixels (a round brush), one undo entry; False when nothing changed."""
        return self._morph(grow, pixels, f"Grow mask {int(pixels)} px")

    def shrink_mask(self, pixels: int) -> bool:
        """Move the mask's edge in by pixels, one undo entry; False when nothing changed."""
        return self._morph(shrink, pixels, f"Shrink mask {int(pixels)} px")

    def _morph(self, op, pixels: int, label: str) -> bool:
        if self._mask is None or int(pixels) <= 0:
            return False
        if self._stroke is not None:
            self.end_stroke()
        changed = op(self._mask, int(pixels))
        if np.array_equal(changed, self._mask):
            return False
        self.set_mask(changed, label)
        return True

    def mask_image(self) -> QImage | None:
        """The mask as a Grayscale8 QImage, or None."""
        return array_to_qimage(self._mask) if self._mask is not None else None

    # -- strokes: a tool paints into the working mask in place -------------------------------

    def begin_stroke(self, label: str = "Brush stroke") -> np.ndarray | None:
        """The mask to paint into, in place (created empty if there is none); None without an image.
        Call stroke_updated(rect) after each dab or segment and end_stroke() at the end."""
        if not self.has_image():
            return None
        if self._stroke is not None:
            self.end_stroke()
        before = self._mask.copy() if self._mask is not None else None
        if self._mask is None:
            w, h = self.size()
            self._mask = np.zeros((h, w), np.uint8)
        self._stroke = (label, before, None)
        return self._mask

    def stroke_updated(self, rect: Rect) -> None:
        if self._stroke is None:
            return
        w, h = self.size()
        clipped = clip_rect(rect, w, h)
        if clipped is None:
            return
        label, before, touched = self._stroke
        self._stroke = (label, before, union(touched, clipped))
        emit(self.mask_changed, clipped)

    def end_stroke(self) -> None:
        if self._stroke is None:
            return
        label, before, touched = self._stroke
        self._stroke = None
        if touched is None:  # a click that painted nothing
            if before is None and self._mask is not None and not self._mask.any():
                self._mask = None
            return
        assert self._mask is not None  # the stroke painted: a mask exists
        if before is None:  # the mask was created by this stroke: undo removes it again
            self.history.push(MaskEdit(label, None, None, self._mask.copy()))
        else:
            self.history.push(MaskEdit(label, touched, patch(before, touched), patch(self._mask, touched)))
        emit(self.changed)

    def in_stroke(self) -> bool:
        return self._stroke is not None

    def stroke_base(self) -> tuple[bool, np.ndarray | None]:
        """(in a stroke, the mask as it was before the stroke began): what an autosave keeps mid-stroke."""
        if self._stroke is None:
            return False, None
        return True, self._stroke[1]

    def restore(self, state: DocState, entries: list | None = None, cursor: int | None = None) -> None:
        """Put back a saved document (the autosave after a crash): its state and its undo history."""
        self._stroke = None
        self._paint = None
        self._below, self._last_push = None, None
        self._pixel_versions, self._layer_images, self._array_versions, self._array_images = {}, {}, {}, {}
        self._apply(state)
        entries = list(entries or [])
        at = len(entries) if cursor is None else min(cursor, len(entries))
        while 0 < at and isinstance(entries[at - 1], MaskEdit):
            at -= 1  # mask edits leave the layers as they are
        if state.layers is not None and 0 < at:
            # A save keeps the layers of the document as it is, its history's states flattened: the last step that
            # changed the picture gets them back, so an undo and a redo return to the layers.
            last = entries[at - 1]
            if isinstance(last, ImageEdit) and getattr(last.after, "layers", None) is None and \
                    isinstance(last.after, DocState):  # fmt: skip
                after = dataclasses.replace(last.after, layers=state.layers, active=state.active)
                entries[at - 1] = ImageEdit(last.label, last.before, after)
        self.history.entries = entries
        self.history.cursor = len(self.history.entries) if cursor is None else max(0, min(cursor, len(self.history.entries)))
        emit(self.history_changed)
        emit(self.changed)


    # -- layers ---------------------------------------------------------------------------------

    @staticmethod
    def _one_layer(image: QImage | None, path: Path | None, caption: str) -> tuple[Layer, ...]:
        if image is None or image.isNull():
            return ()
        return (Layer(path.name if path is not None else (caption or "Image"), source=image),)

    def active_layer(self) -> Layer | None:
        return self.layers[self.active] if self.layers else None

    def _flatten(self, layers: list[Layer]) -> tuple[QImage, np.ndarray]:
        """The flattened stack as a QImage and an array; an opaque image layer with nothing visible above it is
        the image itself (its cacheKey stays: a result's parameters are found by it)."""
        size = layers[0].size()
        key = self._below_key(layers)
        if self._below is not None and self._below[0] == key:  # a change above the active layer: reuse below
            below = self._below[1]
        else:
            below = composite(layers[: self.active], size)
            self._below = (key, below)
        flat = composite(layers[self.active :], size, base=below)
        shown = [la for la in layers if la.visible and la.opacity > 0 and la.control is None]
        if shown and shown[-1].opaque_source and shown[-1].opacity >= 1.0:
            return shown[-1].source, flat
        return array_to_qimage(flat), flat

    def _below_key(self, layers: list[Layer]) -> tuple:
        """What the flatten under the active layer depends on: each layer's identity, metadata and pixels (an
        undo that brings the same layers back finds the cache still good)."""
        return tuple((la.uid, la.visible, la.opacity, self._pixel_versions.get(la.uid, 0), la.pixel_key())
                     for la in layers[: self.active])  # fmt: skip

    def _commit(self, layers: list[Layer], active: int, label: str, merge: bool = False,
                path: Path | None = None, caption: str | None = None) -> None:  # fmt: skip
        """Make `layers` the stack (one undo entry; merge: fold into the last entry of the same label, a slider
        drag), flatten it and tell everyone."""
        if self._stroke is not None:
            self.end_stroke()
        if self._paint is not None:
            self.end_paint()
        h = self.history
        last = h.entries[-1] if h.entries and h.cursor == len(h.entries) else None
        before: DocState
        if merge and isinstance(last, ImageEdit) and last is self._last_push and last.label == label:
            before = last.before
            del h.entries[-1]
            h.cursor -= 1
        else:
            before = self.state()
        old_image = self.image
        self.layers, self.active = list(layers), max(0, min(active, len(layers) - 1))
        self.image, self._flat = self._flatten(self.layers)
        if path is not None or self.image is not old_image:
            self.path = path  # the file on disk no longer is the canvas
        if caption is not None:
            self.caption = caption
        after = DocState(self.image, before.mask, self.path, self.caption, tuple(self.layers), self.active)
        entry = ImageEdit(label, before, after)
        self.history.push(entry)
        self._last_push = entry
        emit(self.image_changed, self.image)
        emit(self.layers_changed)
        emit(self.changed)

    def set_active(self, index: int) -> None:
        """The layer that colour strokes paint on (not an undo step: choosing a layer changes no pixel)."""
        index = max(0, min(int(index), len(self.layers) - 1))
        if index != self.active and self.layers:
            if self._paint is not None:
                self.end_paint()
            self.active = index
            emit(self.layers_changed)

    def add_layer(self, name: str | None = None) -> bool:
        """An empty (transparent) paint layer above the active one, made active."""
        if not self.has_image():
            return False
        w, h = self.size()
        layer = blank(name or self._free_name("Paint"), w, h)
        at = self.active + 1
        self._commit([*self.layers[:at], layer, *self.layers[at:]], at, "Add layer")
        return True

    def _free_name(self, base: str) -> str:
        names = {la.name for la in self.layers}
        n = 1
        while f"{base} {n}" in names:
            n += 1
        return f"{base} {n}"

    def add_image_layer(self, image: QImage, path: Path | None = None, name: str = "", label: str = "Add image",
                        top: bool = False) -> bool:  # fmt: skip
        """An image as a new layer (above the active one, or on top), made active. Into an empty document it is
        the first image (it sets the canvas size). Another size is centred, what falls outside is cut off."""
        if image is None or image.isNull():
            return False
        name = name or (path.name if path is not None else self._free_name("Image"))
        if not self.has_image():
            self.set_image(image, path, caption="" if path else name, record=label)
            return True
        w, h = self.size()
        if image.width() == w and image.height() == h and not image.hasAlphaChannel():
            layer = Layer(name, source=image)
        else:
            from studio.qimage import qimage_to_array

            rgba = qimage_to_array(image, alpha=True)
            px = np.zeros((h, w, 4), np.uint8)
            x0, y0 = (w - image.width()) // 2, (h - image.height()) // 2
            sx, sy = max(0, -x0), max(0, -y0)
            dx, dy = max(0, x0), max(0, y0)
            cw, ch = min(w - dx, image.width() - sx), min(h - dy, image.height() - sy)
            px[dy : dy + ch, dx : dx + cw] = rgba[sy : sy + ch, sx : sx + cw]
            layer = Layer(name, px)
        at = len(self.layers) if top else self.active + 1
        self._commit([*self.layers[:at], layer, *self.layers[at:]], at, label,
                     path=path if top or at == len(self.layers) else None,
                     caption="" if top else None)  # a result on top: not "new canvas" any more  # fmt: skip
        return True

    def land_result(self, image: QImage, path: Path | None, label: str, as_layer: bool = True) -> None:
        """A result on the canvas: a new layer on top (as_layer), or in place of the active layer; a result of
        another size (or into an empty document) replaces the document, as it always did. One undo entry."""
        if self.image is None or not self.has_image() or image.size() != self.image.size():
            self.set_image(image, path, record=label)
            return
        if as_layer or self.layers[self.active].control is not None:  # a result never replaces a control layer
            self.add_image_layer(image, path, name=self._free_name(label), label=label, top=True)
            return
        old = self.layers[self.active]
        layer = Layer(old.name, source=image.convertToFormat(QImage.Format.Format_RGB888)
                      if image.hasAlphaChannel() else image, visible=old.visible, opacity=old.opacity)  # fmt: skip
        layers = list(self.layers)
        layers[self.active] = layer
        self._commit(layers, self.active, label, path=path)

    def _resize_stack(self, layers: list[Layer], mask: np.ndarray | None, label: str, active: int | None = None,
                      path: Path | None = None, caption: str = "") -> None:  # fmt: skip
        """A stack of another canvas size (and its mask) in place of the document's: one undo entry."""
        if self._stroke is not None:
            self.end_stroke()
        if self._paint is not None:
            self.end_paint()
        before = self.state()
        active = self.active if active is None else active
        image = array_to_qimage(composite(layers, layers[0].size()))
        top = [la for la in layers if la.visible and la.opacity > 0]
        if top and top[-1].opaque_source and top[-1].opacity >= 1.0:
            image = top[-1].source  # the result itself (its cacheKey finds its parameters)
        self._apply(DocState(image, mask, path, caption, tuple(layers), active))
        entry = ImageEdit(label, before, self.state())
        self.history.push(entry)
        self._last_push = entry
        emit(self.changed)

    def extend_layers(self, left: int, top: int, fill: np.ndarray, mask: np.ndarray | None,
                      label: str = "Extend canvas") -> None:  # fmt: skip
        """Outpainting a stack: every layer grows, transparent in the new area (Krita's Resize Canvas), and a new
        bottom layer "Outpaint fill" holds `fill` (HxWx3, the extended picture) in the new area only, so the stack
        flattens to `fill` exactly and the artist can hide or delete the fill. One undo entry."""
        h, w = fill.shape[:2]
        mask = self._checked(mask, w, h) if mask is not None else None
        ow, oh = self.size()
        base = np.zeros((h, w, 4), np.uint8)
        base[..., :3] = fill
        base[..., 3] = 255
        base[top : top + oh, left : left + ow] = 0
        layers = [Layer("Outpaint fill", base), *(grown(la, left, top, w, h) for la in self.layers)]
        self._resize_stack(layers, mask, label, self.active + 1, caption="extended")

    def land_scaled(self, image: QImage, path: Path | None, label: str, as_layer: bool = True) -> None:
        """An upscaled picture of the whole canvas: every layer (and the mask) is scaled to its size, as Krita's
        Scale Image does, and the result lands as a new layer on top (as_layer) or in place of the active layer,
        as a result of the canvas's size does. One undo entry."""
        w, h = image.width(), image.height()
        layers = [scaled(la, w, h) for la in self.layers]
        rgb = image.convertToFormat(QImage.Format.Format_RGB888) if image.hasAlphaChannel() else image
        if as_layer:
            layers.append(Layer(self._free_name(label), source=rgb))
            active = len(layers) - 1
        else:
            old = layers[self.active]
            layers[self.active] = Layer(old.name, source=rgb, visible=old.visible, opacity=old.opacity)
            active = self.active
        self._resize_stack(layers, scaled_mask(self._mask, w, h), label, active, path=path)

    def scales_to(self, image: QImage) -> bool:
        """`image` is the whole canvas at another size (an upscale, same aspect ratio to a pixel), and the stack
        holds more than one plain image (a single image is simply replaced, as it always was)."""
        w, h = self.size()
        iw, ih = image.width(), image.height()
        if not w or not h or (iw, ih) == (w, h) or self.single_layer():
            return False
        return abs(iw * h / w - ih) <= 1 and abs(ih * w / h - iw) <= 1

    def show_layer_image(self, image: QImage, path: Path | None, label: str) -> None:
        """An image opened on the canvas as a new layer on top (the gallery: as paste and open do). Opening one
        after another with nothing done in between (browsing) replaces the layer the last one added: one entry."""
        h = self.history
        last = h.entries[-1] if h.entries and h.cursor == len(h.entries) else None
        if isinstance(last, ImageEdit) and last.label == label and last.after.image is self.image and \
                self._paint is None and self._stroke is None:  # fmt: skip
            self.undo()
        self.add_image_layer(image, path, label=label, top=True)

    def delete_layer(self, index: int | None = None) -> bool:
        """Remove a layer (the active one by default); the last layer stays (clear the canvas with New canvas)."""
        i = self.active if index is None else int(index)
        if len(self.layers) < 2 or not 0 <= i < len(self.layers):
            return False
        layers = [la for k, la in enumerate(self.layers) if k != i]
        active = self.active - 1 if i < self.active else max(0, i - 1) if i == self.active else self.active
        self._commit(layers, active, "Delete layer")
        return True

    def _change(self, index: int, label: str, merge: bool = False, **changes) -> bool:
        if not 0 <= index < len(self.layers):
            return False
        old = self.layers[index]
        if all(getattr(old, k) == v for k, v in changes.items()):
            return False
        layers = list(self.layers)
        layers[index] = old.with_(**changes)
        self._commit(layers, self.active, label, merge=merge)
        return True

    def rename_layer(self, index: int, name: str) -> bool:
        name = " ".join(str(name).split())
        return bool(name) and self._change(index, "Rename layer", name=name)

    def set_layer_visible(self, index: int, visible: bool) -> bool:
        return self._change(index, "Show layer" if visible else "Hide layer", visible=bool(visible))

    def set_layer_opacity(self, index: int, opacity: float, merge: bool = True) -> bool:
        """Opacity 0..1; successive changes of one layer fold into one undo entry (a slider drag)."""
        return self._change(index, "Layer opacity", merge=merge, opacity=float(min(1.0, max(0.0, opacity))))

    def move_layer(self, index: int, delta: int) -> bool:
        """Up (delta > 0, towards the top) or down the stack; the active layer follows its layer."""
        j = index + delta
        if not (0 <= index < len(self.layers) and 0 <= j < len(self.layers)) or delta == 0:
            return False
        layers = list(self.layers)
        layers.insert(j, layers.pop(index))
        active_uid = self.layers[self.active].uid
        active = next(k for k, la in enumerate(layers) if la.uid == active_uid)
        self._commit(layers, active, "Move layer up" if delta > 0 else "Move layer down")
        return True

    def merge_down(self, index: int | None = None) -> bool:
        """Merge a layer (the active one) into the one below: one layer that flattens as the two did."""
        i = self.active if index is None else int(index)
        if not 1 <= i < len(self.layers) or self.layers[i].control or self.layers[i - 1].control:
            return False  # a control image is not picture: it merges into nothing, nothing merges into it
        upper, lower = self.layers[i], self.layers[i - 1]
        merged = Layer(lower.name, merge_pair(lower, upper))
        layers = [*self.layers[: i - 1], merged, *self.layers[i + 1 :]]
        self._commit(layers, i - 1, "Merge down")
        return True

    def layer_images(self) -> list[tuple[str, bool, float, QImage, dict | None]]:
        """The stack as images for a save (bottom to top): name, visible, opacity, an RGBA image (an image
        layer's own image) and a control layer's settings (ControlProps.to_dict(), else None). Cached per layer until
        it is painted, so an autosave copies only what changed."""
        out: list[tuple[str, bool, float, QImage, dict | None]] = []
        live = set()
        for la in self.layers:
            live.add(la.uid)
            if la.opaque_source:
                out.append((la.name, la.visible, la.opacity, la.source, None))
                continue
            key = (id(la.pixels), self._pixel_versions.get(la.uid, 0))
            cached = self._layer_images.get(la.uid)
            if cached is None or cached[0] != key:
                cached = (key, array_to_qimage(la.pixels))
                self._layer_images[la.uid] = cached
            out.append((la.name, la.visible, la.opacity, cached[1], la.control.to_dict() if la.control else None))
        for uid in [u for u in self._layer_images if u not in live]:
            del self._layer_images[uid]
        return out

    # -- control layers (studio.session.controls) ------------------------------------------------------------

    def add_control_layer(self, props: ControlProps | None = None, image: np.ndarray | None = None) -> bool:
        """A control layer on top of the stack, made active: empty (to draw on) or holding a control image."""
        if not self.has_image():
            return False
        w, h = self.size()
        props = props or ControlProps()
        pixels = layer_pixels(image) if image is not None else np.zeros((h, w, 4), np.uint8)
        if pixels.shape[:2] != (h, w):
            raise ValueError(f"the control image must be {w}x{h}, got {pixels.shape[1]}x{pixels.shape[0]}")
        layer = Layer(self._free_name("Control"), pixels, control=props)
        self._commit([*self.layers, layer], len(self.layers), "Add control layer")
        return True

    def set_control(self, index: int, props: ControlProps, merge: bool = True, label: str = "Control settings") -> bool:
        """A control layer's settings (type, model, weight, start / end, mode): one undo step per run of changes of
        one label (a spin box's clicks)."""
        if not 0 <= index < len(self.layers) or self.layers[index].control is None:
            return False
        return self._change(index, label, merge=merge, control=props)

    def set_control_image(self, index: int, image: np.ndarray, label: str = "Preprocess") -> bool:
        """Replace a control layer's image (a preprocessor's output, HxWx3 of the canvas size), one undo step."""
        if not 0 <= index < len(self.layers) or self.layers[index].control is None:
            return False
        old = self.layers[index]
        pixels = layer_pixels(image)
        if pixels.shape[:2] != old.pixels.shape[:2]:
            raise ValueError(f"the control image must be {old.size()[0]}x{old.size()[1]}")
        layers = list(self.layers)
        layers[index] = Layer(old.name, pixels, visible=old.visible, opacity=old.opacity, uid=old.uid,
                              control=old.control)  # fmt: skip
        self._pixel_versions[old.uid] = self._pixel_versions.get(old.uid, 0) + 1
        self._commit(layers, index, label)
        return True

    def control_specs(self, crop: Rect | None = None) -> tuple[ControlSpec, ...]:
        """The visible control layers, bottom to top, as a request's controls (their images cut to `crop`)."""
        out = []
        for la in self.layers:
            if la.control is None or not la.visible:
                continue
            img = control_image(la.pixels)
            if crop is not None:
                x, y, w, h = crop
                img = img[y : y + h, x : x + w]
            out.append(la.control.spec(img))
        return tuple(out)

    def array_images(self, arrays: dict[int, np.ndarray]) -> dict[int, QImage]:
        """RGBA images of layer pixel arrays (by id: the `arrays` of a save that keeps the history's layers), each
        cached until it is painted again, so an autosave copies only what changed."""
        out: dict[int, QImage] = {}
        for key, arr in arrays.items():
            version = self._array_versions.get(key, 0)
            cached = self._array_images.get(key)
            if cached is None or cached[0] is not arr or cached[1] != version:
                cached = (arr, version, array_to_qimage(arr))
            out[key] = cached[2]
        self._array_images = {k: (arrays[k], self._array_versions.get(k, 0), img) for k, img in out.items()}
        return out

    def _painted(self, arr: np.ndarray) -> None:
        self._array_versions[id(arr)] = self._array_versions.get(id(arr), 0) + 1

    def single_layer(self) -> bool:
        """One plain image layer that is the flattened image: saves write it as before layers existed."""
        return len(self.layers) == 1 and self.layers[0].opaque_source and self.layers[0].visible and \
            self.layers[0].opacity >= 1.0 and self.layers[0].source is self.image

    # -- colour strokes: paint the active layer --------------------------------------------------

    def begin_paint(self, colour: tuple[int, int, int], size: float, hardness: float, erase: bool = False,
                    label: str | None = None) -> bool:  # fmt: skip
        """Start a colour stroke (or an erase to transparent) on the active layer; False when there is no image
        or the active layer is hidden. Then paint_to(point) per pointer move, end_paint() on release."""
        if not self.has_image() or not self.layers:
            return False
        if self._stroke is not None:
            self.end_stroke()
        if self._paint is not None:
            self.end_paint()
        layer = self.layers[self.active]
        if not layer.visible:
            return False
        if layer.control is not None:
            colour = (255, 255, 255)  # a control layer's lines are white (on black: studio.session.controls)
        if layer.opaque_source:  # from here on its pixels are its own (the history keeps the layer with its image)
            layer = self.layers[self.active] = layer.with_(source=None)
        if self._flat is None:
            from studio.qimage import qimage_to_array

            assert self.image is not None  # has_image()
            self._flat = qimage_to_array(self.image)
        key = self._below_key(self.layers)
        if self._below is None or self._below[0] != key:
            self._below = (key, composite(self.layers[: self.active], self.size()))
        stroke = ColourStroke(layer.pixels, colour, size, hardness, erase)
        self._paint = (label or ("Erase paint" if erase else "Paint"), stroke, layer.uid, None)
        return True

    def paint_to(self, point) -> Rect | None:
        """Paint the stroke on to point; the flattened image is redrawn in the touched rectangle only."""
        if self._paint is None:
            return None
        label, stroke, uid, touched = self._paint
        rect = stroke.to(point)
        if rect is None:
            return None
        self._paint = (label, stroke, uid, union(touched, rect))
        self._redraw(rect, self.layers[self.active :], self._below[1] if self._below is not None else None)
        return rect

    def _redraw(self, rect: Rect, layers: list[Layer], base: np.ndarray | None) -> None:
        assert self._flat is not None
        x, y, w, h = rect
        self._flat[y : y + h, x : x + w] = composite(layers, self.size(), rect, base=base)
        emit(self.pixels_changed, rect)

    def flat_window(self, rect: Rect) -> np.ndarray | None:
        """The flattened image's pixels inside rect (HxWx3, a view: copy it) while strokes keep them as an array."""
        if self._flat is None:
            return None
        x, y, w, h = rect
        return self._flat[y : y + h, x : x + w]

    def in_paint(self) -> bool:
        return self._paint is not None

    def end_paint(self) -> None:
        if self._paint is None:
            return
        label, stroke, uid, touched = self._paint
        self._paint = None
        if touched is None:
            return
        x, y, w, h = touched
        before = stroke.source[y : y + h, x : x + w].copy()
        after = stroke.pixels[y : y + h, x : x + w].copy()
        self._pixel_versions[uid] = self._pixel_versions.get(uid, 0) + 1
        self._painted(stroke.pixels)
        self._settle_image()
        self.history.push(LayerPaint(label, uid, touched, before, after))
        emit(self.changed)

    def _end_paint_quietly(self) -> None:
        if self._paint is not None:
            self.end_paint()

    def _settle_image(self) -> None:
        """`image` from the array strokes painted (a new QImage: states in the history keep theirs)."""
        assert self._flat is not None
        self.image = array_to_qimage(self._flat)
        self.path = None

    def _revert_paint(self, entry: LayerPaint, value: np.ndarray) -> None:
        index = next((k for k, la in enumerate(self.layers) if la.uid == entry.layer), None)
        if index is None:  # cannot happen in a linear history; never crash on undo
            return
        layer = self.layers[index]
        if layer.opaque_source:
            layer = self.layers[index] = layer.with_(source=None)
        x, y, w, h = entry.rect
        if layer.pixels[y : y + h, x : x + w].shape != value.shape:  # a damaged file's patch: never crash on undo
            return
        layer.pixels[y : y + h, x : x + w] = value
        self._pixel_versions[layer.uid] = self._pixel_versions.get(layer.uid, 0) + 1
        self._painted(layer.pixels)
        if self._flat is None:
            from studio.qimage import qimage_to_array

            assert self.image is not None  # has_image()
            self._flat = qimage_to_array(self.image)
        self._redraw(entry.rect, self.layers, None)
        self._settle_image()

    # -- undo / redo --------------------------------------------------------------------------

    def undo(self) -> str:
        """Undo the last change; returns its label ("" when there was nothing to undo)."""
        if self._stroke is not None:
            self.end_stroke()
        if self._paint is not None:
            self.end_paint()
        entry = self.history.undo()
        if entry is None:
            return ""
        self._revert(entry, entry_state="before")
        return entry.label

    def redo(self) -> str:
        entry = self.history.redo()
        if entry is None:
            return ""
        self._revert(entry, entry_state="after")
        return entry.label

    def _revert(self, entry, entry_state: str) -> None:
        value = getattr(entry, entry_state)
        if isinstance(entry, ImageEdit):
            self._apply(value)
        elif isinstance(entry, LayerPaint):
            self._revert_paint(entry, value)
        elif entry.rect is None:
            self._mask = value.copy() if value is not None else None
            emit(self.mask_changed, None)
        else:
            x, y, w, h = entry.rect
            if self._mask is None:  # cannot happen after a patch edit, but never crash on undo
                iw, ih = self.size()
                self._mask = np.zeros((ih, iw), np.uint8)
            self._mask[y : y + h, x : x + w] = value
            emit(self.mask_changed, entry.rect)
        emit(self.changed)
