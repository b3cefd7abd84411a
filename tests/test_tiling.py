"""The shared tiler: tile grids cover every pixel with the overlap asked for, and the blend shows no seam."""

from __future__ import annotations

import numpy as np
import pytest

from studio.core.tiling import TileBlender, axis_spans, tile_grid, tile_weights

SIZES = [(1, 1), (1, 7), (7, 1), (63, 64), (64, 64), (65, 64), (300, 200), (513, 511), (1000, 300), (1031, 777)]


def _check_grid(width, height, tile, overlap, multiple=1):
    rects = tile_grid(width, height, tile, overlap, multiple)
    count = np.zeros((height, width), np.int32)
    weight = np.zeros((height, width), np.float32)
    for x, y, w, h in rects:
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert 1 <= w <= tile and 1 <= h <= tile
        if width > tile:
            assert w % multiple == 0 and x % multiple == 0 or x + w == width
        if height > tile:
            assert h % multiple == 0 and y % multiple == 0 or y + h == height
        count[y : y + h, x : x + w] += 1
        wt = tile_weights((x, y, w, h), width, height, overlap)
        assert wt.shape == (h, w) and wt.dtype == np.float32
        assert (wt > 0).all() and (wt <= 1).all()
        weight[y : y + h, x : x + w] += wt
    assert (count > 0).all(), "a pixel no tile covers"
    assert (weight > 0).all()
    # Neighbours along each axis overlap by at least `overlap` and never shrink at the far edge.
    for length in (width, height):
        spans = axis_spans(length, tile, overlap, multiple)
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == length
        assert len({s for _, s in spans}) == 1
        for (a, sa), (b, _) in zip(spans, spans[1:], strict=False):
            assert b > a and a + sa - b >= overlap
    return rects


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile,overlap,multiple", [(64, 8, 1), (64, 16, 8), (100, 0, 1), (512, 32, 8), (32, 24, 1)])
def test_grid_covers_every_pixel(width, height, tile, overlap, multiple):
    _check_grid(width, height, tile, overlap, multiple)


def test_image_no_larger_than_a_tile_is_one_tile():
    assert tile_grid(300, 200, 512, 32) == [(0, 0, 300, 200)]
    assert tile_grid(512, 512, 512, 32, multiple=8) == [(0, 0, 512, 512)]
    assert tile_grid(1, 1, 64, 8) == [(0, 0, 1, 1)]
    # An axis no longer than the tile is one span even when its side is not a multiple (the caller pads).
    assert tile_grid(301, 200, 512, 32, multiple=8) == [(0, 0, 301, 200)]
    assert tile_weights((0, 0, 300, 200), 300, 200, 32).min() == 1.0


def test_large_image_grid():
    rects = _check_grid(5000, 3000, 512, 32, multiple=8)
    assert len(rects) == 11 * 7
    assert all(w == 512 and h == 512 for _, _, w, h in rects)


def test_last_tile_is_shifted_back_not_shrunk():
    spans = axis_spans(1003, 512, 32, 8)
    assert spans[-1] == (1003 - 512, 512)
    assert all(s % 8 == 0 for s, _ in spans[:-1])


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError):
        tile_grid(1000, 1000, 64, 64)
    with pytest.raises(ValueError):
        tile_grid(1000, 1000, 4, 0, multiple=8)


def test_crossfade_sums_to_one_at_the_exact_overlap():
    # Two tiles overlapping by exactly the ramp width: a linear cross-fade whose weights sum to 1.
    a = tile_weights((0, 0, 64, 10), 96, 10, 32)
    b = tile_weights((32, 0, 64, 10), 96, 10, 32)
    total = np.zeros((10, 96), np.float32)
    total[:, :64] += a
    total[:, 32:] += b
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("width,height", [(1, 1), (5, 3), (300, 200), (513, 511), (1031, 777)])
@pytest.mark.parametrize("channels", [1, 3])
def test_blending_tiles_of_one_image_gives_it_back(width, height, channels):
    rng = np.random.default_rng(width * height)
    image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    blender = TileBlender(width, height, channels, overlap=24)
    for x, y, w, h in tile_grid(width, height, 128, 24):
        blender.add((x, y, w, h), image[y : y + h, x : x + w])
    out = blender.result()
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image).max() == 0


def test_constant_image_is_exact():
    image = np.full((777, 1031, 3), 201, np.uint8)
    blender = TileBlender(1031, 777, 3, overlap=32)
    for x, y, w, h in tile_grid(1031, 777, 256, 32, multiple=8):
        blender.add((x, y, w, h), image[y : y + h, x : x + w].astype(np.float32))
    assert (blender.result() == 201).all()


def test_uncovered_pixels_are_an_error():
    blender = TileBlender(100, 100, 3, overlap=8)
    blender.add((0, 0, 64, 64), np.zeros((64, 64, 3), np.uint8))
    assert blender.covered().sum() == 64 * 64
    with pytest.raises(ValueError, match="covered by no tile"):
        blender.result()
    with pytest.raises(ValueError):
        blender.add((50, 50, 64, 64), np.zeros((64, 64, 3), np.uint8))  # outside
    with pytest.raises(ValueError):
        blender.add((0, 0, 10, 10), np.zeros((10, 11, 3), np.uint8))  # wrong shape


def _border_vs_inside(out: np.ndarray, edges: set[int], axis: int) -> tuple[float, float]:
    """Mean |difference| across the tile edges, and the largest such mean at a column (row) inside the tiles."""
    d = np.abs(np.diff(out.astype(np.float64), axis=axis))  # d[k] is between k and k+1
    per_line = d.mean(axis=1 - axis)  # one mean per column (axis 1) or per row (axis 0)
    border = [k - 1 for k in edges]  # the step onto the edge pixel k
    inside = [k for k in range(len(per_line)) if all(abs(k - (e - 1)) > 1 for e in edges)]
    return float(per_line[border].max()), float(per_line[inside].max())


def _process_in_tiles(image, tile, overlap, blend: bool):
    h, w = image.shape[:2]
    rng = np.random.default_rng(7)
    rects = tile_grid(w, h, tile, overlap)
    blender = TileBlender(w, h, 1, overlap=overlap if blend else 0)
    pasted = np.zeros_like(image, dtype=np.float32)
    for x, y, tw, th in rects:
        # A per-tile "model": the tile with a small offset of its own, as a network's per-tile bias would be.
        out = image[y : y + th, x : x + tw].astype(np.float32) + rng.uniform(-3, 3)
        blender.add((x, y, tw, th), out)
        pasted[y : y + th, x : x + tw] = out
    result = blender.result() if blend else np.clip(np.rint(pasted), 0, 255).astype(np.uint8)
    xs = {x for x, _, _, _ in rects if x > 0} | {x + tw for x, _, tw, _ in rects if x + tw < w}
    ys = {y for _, y, _, _ in rects if y > 0} | {y + th for _, y, _, th in rects if y + th < h}
    return result[:, :, 0], xs, ys


def test_no_seam_on_a_smooth_gradient():
    h, w = 400, 600
    yy, xx = np.mgrid[0:h, 0:w]
    image = (30 + 0.25 * xx + 0.2 * yy)[:, :, None]
    out, xs, ys = _process_in_tiles(image, 160, 32, blend=True)
    for axis, edges in ((1, xs), (0, ys)):
        border, inside = _border_vs_inside(out, edges, axis)
        assert border <= inside + 1e-9, (axis, border, inside)
    # The measure does see a seam: the same tiles pasted without blending fail it.
    out, xs, ys = _process_in_tiles(image, 160, 32, blend=False)
    border, inside = _border_vs_inside(out, xs, 1)
    assert border > inside + 0.3
