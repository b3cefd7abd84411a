"""The canvas changes size and the stack follows: Extend canvas grows every layer, an upscale of the whole canvas
scales every layer and lands as a layer, a gallery image opens as a layer. Exact pixels, one undo step each."""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage

from studio.backends.fake import FakeBackend
from studio.core.inpaint import outpaint_canvas
from studio.qimage import array_to_qimage, qimage_to_array
from studio.session.document import Document
from studio.session.layers import composite


def noise(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def rgb(img: QImage) -> np.ndarray:
    return qimage_to_array(img)


def look(doc: Document) -> tuple:
    return rgb(doc.image).tobytes(), tuple((la.name, la.pixels.tobytes()) for la in doc.layers), doc.active, \
        None if doc.mask is None else doc.mask.tobytes()  # fmt: skip


def layered(session_or_doc, w=40, h=30) -> Document:
    """An image, a paint layer with a half-transparent stroke, a mask."""
    doc = getattr(session_or_doc, "document", session_or_doc)
    doc.set_image(array_to_qimage(noise(w, h, 1)), record="Open image")
    doc.add_layer("Sketch")
    assert doc.begin_paint((250, 20, 120), 9, 0.4)
    doc.paint_to((4, 4))
    doc.paint_to((w - 6, h - 5))
    doc.end_paint()
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 8:20] = 255
    doc.set_mask(mask, "Load mask")
    return doc


def test_extend_canvas_grows_every_layer_transparent_and_the_fill_is_a_layer_below(make_window):
    window = make_window(FakeBackend())
    s = window.session
    doc = layered(s)
    old = look(doc)
    old_layers = [la.pixels.copy() for la in doc.layers]
    flat = rgb(doc.image)
    assert s.extend_canvas(8, 4, 0, 6)
    want_image, want_mask = outpaint_canvas(flat, 8, 4, 0, 6, overlap=16)
    assert doc.size() == (48, 40) and [la.name for la in doc.layers] == ["Outpaint fill", "Image", "Sketch"]
    for la, before in zip(doc.layers[1:], old_layers, strict=True):
        px = la.pixels
        assert np.array_equal(px[4:34, 8:48], before)  # the old pixels, where they were
        outside = np.ones((40, 48), bool)
        outside[4:34, 8:48] = False
        assert not px[..., 3][outside].any()  # the new area is transparent on every old layer
    fill = doc.layers[0].pixels
    assert not fill[4:34, 8:48, 3].any() and (fill[..., 3][~(fill[..., 3] == 0)] == 255).all()
    assert np.array_equal(rgb(doc.image), want_image)  # the stack flattens to the outpaint canvas exactly
    assert np.array_equal(doc.mask, want_mask) and doc.active == 2  # still on the sketch
    assert doc.undo() == "Extend canvas" and look(doc) == old
    assert doc.redo() == "Extend canvas" and np.array_equal(rgb(doc.image), want_image)


def test_extend_canvas_of_one_plain_image_stays_one_layer(make_window):
    window = make_window(FakeBackend())
    s, doc = window.session, window.session.document
    doc.set_image(array_to_qimage(noise(20, 16, 2)), record="Open image")
    assert s.extend_canvas(0, 0, 10, 0)
    assert len(doc.layers) == 1 and doc.single_layer()
    assert np.array_equal(rgb(doc.image), outpaint_canvas(noise(20, 16, 2), 0, 0, 10, 0, overlap=16)[0])


def test_an_upscale_of_the_whole_canvas_scales_every_layer_and_lands_on_top(qtbot, make_window):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc = window.session, window.session.document
    layered(s)
    old = look(doc)
    image_px, sketch_px, mask = doc.layers[0].pixels.copy(), doc.layers[1].pixels.copy(), doc.mask.copy()
    s.set_mode("upscale")
    s.update_params(upscale_mode="resize", scale=2.0)
    with qtbot.waitSignal(s.result_image):
        s.generate()
    r = fake.requests[-1]
    assert r.mode == "upscale" and r.init_image.shape == (30, 40, 3)
    result = rgb(doc.layers[-1].source)
    assert doc.size() == (80, 60) and len(doc.layers) == 3 and doc.active == 2
    assert doc.layers[-1].opaque_source and np.array_equal(rgb(doc.image), result)  # the result, on top
    lanczos = Image.Resampling.LANCZOS
    assert np.array_equal(doc.layers[0].pixels[..., :3], np.asarray(Image.fromarray(image_px[..., :3]).resize((80, 60), lanczos)))
    assert np.array_equal(doc.layers[1].pixels, np.asarray(Image.fromarray(sketch_px, "RGBA").resize((80, 60), lanczos)))
    assert np.array_equal(doc.mask, np.asarray(Image.fromarray(mask).resize((80, 60), Image.Resampling.BILINEAR)))
    # hiding the result shows the scaled stack under it
    doc.set_layer_visible(2, False)
    assert np.array_equal(rgb(doc.image), composite(doc.layers[:2], (80, 60)))
    doc.undo()
    assert s.document.undo() and look(doc) == old  # one step for the whole upscale


def test_an_upscale_of_a_region_does_not_scale_the_stack(qtbot, make_window):
    fake = FakeBackend(auto=True)
    window = make_window(fake)
    s, doc = window.session, window.session.document
    layered(s, 40, 40)
    doc.set_selection((0, 0, 20, 20))  # a square region of a square canvas: same aspect, not the whole canvas
    s.set_mode("upscale")
    s.update_params(upscale_mode="resize", scale=2.0)
    with qtbot.waitSignal(s.result_image):
        s.generate()
    assert fake.requests[-1].init_image.shape == (20, 20, 3)
    assert all(la.size() != (80, 80) for la in doc.layers[:2])


def test_a_gallery_image_opens_as_a_layer_and_browsing_is_one_step(make_window, tmp_path):
    window = make_window(FakeBackend())
    s, doc = window.session, window.session.document
    layered(s)
    old = look(doc)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    array_to_qimage(noise(40, 30, 5)).save(str(a))
    array_to_qimage(noise(20, 10, 6)).save(str(b))
    s.show_gallery_image(QImage(str(a)), a)
    assert [la.name for la in doc.layers] == ["Image", "Sketch", "a.png"] and doc.active == 2
    assert np.array_equal(rgb(doc.image), noise(40, 30, 5)) and doc.mask is not None  # the mask stays
    s.show_gallery_image(QImage(str(b)), b)  # browsing on: the gallery layer shows the next image
    assert [la.name for la in doc.layers] == ["Image", "Sketch", "b.png"] and doc.size() == (40, 30)
    px = doc.layers[2].pixels
    assert np.array_equal(px[10:20, 10:30, :3], noise(20, 10, 6)) and not px[:10, ..., 3].any()  # centred
    assert doc.undo() == "Show gallery image" and look(doc) == old  # one step for the browsing
