"""Refine a region in place: the crop for a run and the feathered paste back (studio.session.region, numpy only)."""

import numpy as np
import pytest

from studio.session.layers import Layer, composite
from studio.session.region import crop_for_run, feather_alpha, paste_back, working_size


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def outside(a, box):
    x, y, w, h = box
    keep = np.ones(a.shape[:2], bool)
    keep[y : y + h, x : x + w] = False
    return a[keep]


def test_working_size_scales_a_small_selection_up_to_the_native_side_and_never_down():
    assert working_size(120, 80, 512) == (512, 384)  # longer side to 512, sides up to 64s
    assert working_size(80, 120, 512) == (384, 512)
    assert working_size(1000, 600, 512) == (1024, 640)  # already larger: its own size (up to 64s), never smaller
    assert working_size(80, 50, 64) == (128, 64)
    assert working_size(10, 3, 64) == (64, 64)  # at least one multiple
    assert working_size(120, 80, 0) == (512, 384)  # unknown native side: 512


def test_crop_for_run_is_the_selection_at_its_working_size():
    image = noise(100, 200)
    crop = crop_for_run(image, (10, 20, 64, 32), 128)
    assert crop.shape == (64, 128, 3) and crop.dtype == np.uint8
    same = crop_for_run(image, (0, 0, 128, 64), 128)  # already the working size: the pixels themselves
    assert np.array_equal(same, image[:64, :128])
    with pytest.raises(ValueError, match="not inside"):
        crop_for_run(image, (190, 0, 20, 20), 128)


def test_feather_ramp_rises_monotonically_from_the_edge_and_is_full_inside():
    a = feather_alpha(60, 40, 8)
    assert a.shape == (40, 60) and a.dtype == np.uint8
    assert a[20, 30] == 255 and a[8:-8, 8:-8].min() == 255  # past the ramp: all result
    assert 0 < a[20, 0] < 32  # the outermost column takes only a little of the result
    row = a[20, :30].astype(int)  # edge -> middle
    assert (np.diff(row) >= 0).all() and row[0] < row[4] < row[7] <= 255
    col = a[:20, 30].astype(int)
    assert (np.diff(col) >= 0).all()
    assert np.array_equal(a, a[::-1, ::-1])  # symmetric
    assert (feather_alpha(10, 10, 0) == 255).all()  # no feather: a hard edge


def test_paste_back_keeps_every_pixel_outside_exactly_and_changes_the_inside():
    doc = noise(100, 200, 1)
    box = (30, 20, 80, 50)
    result = np.full((320, 512, 3), (250, 10, 10), np.uint8)  # rendered at a working size: scaled into the box
    out = paste_back(doc, result, box, 12)
    assert out.shape == doc.shape and out is not doc
    assert np.array_equal(outside(out, box), outside(doc, box))
    x, y, w, h = box
    assert (out[y + h // 2, x + w // 2] == (250, 10, 10)).all()  # the middle is the result
    inner = out[y : y + h, x : x + w].astype(int)
    assert (np.abs(inner - doc[y : y + h, x : x + w]) > 0).any(axis=2).mean() > 0.95
    edge = out[y + h // 2, x]  # the outermost column: mostly the document still
    assert np.abs(edge.astype(int) - doc[y + h // 2, x]).max() < np.abs(edge.astype(int) - (250, 10, 10)).max()


def test_paste_back_blends_as_a_layer_over_the_document_would():
    """The blend is the layer stack's formula: the result as a layer whose alpha is the feather gives the same."""
    doc = noise(64, 96, 2)
    box = (10, 8, 40, 30)
    result = noise(30, 40, 3)
    out = paste_back(doc, result, box, 6)
    rgba = np.zeros((64, 96, 4), np.uint8)
    x, y, w, h = box
    rgba[y : y + h, x : x + w, :3] = result
    rgba[y : y + h, x : x + w, 3] = feather_alpha(w, h, 6)
    flat = composite([Layer("doc", np.dstack([doc, np.full((64, 96), 255, np.uint8)])), Layer("region", rgba)],
                     (96, 64))  # fmt: skip
    assert np.array_equal(out, flat)


def test_paste_back_of_a_same_image_changes_nothing():
    doc = noise(50, 50, 4)
    box = (5, 5, 30, 30)
    assert np.array_equal(paste_back(doc, doc[5:35, 5:35], box, 10), doc)
