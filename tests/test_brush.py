"""The mask brush (studio.session.brush): exact dabs, soft falloff, eraser, clipping, segments."""

import math

import numpy as np
import pytest

from studio.session.brush import Stroke, dab_alpha, paint_segment, segment_alpha, spacing


def distances(shape, cx, cy):
    """Distance of every pixel centre from (cx, cy)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(xs + 0.5 - cx, ys + 0.5 - cy)


def test_a_hard_9px_dab_sets_exactly_the_pixels_within_its_radius():
    mask = np.zeros((24, 24), np.uint8)
    rect = paint_segment(mask, (10.5, 10.5), (10.5, 10.5), 9, 1.0)  # the centre of pixel (10, 10)
    d = distances(mask.shape, 10.5, 10.5)
    assert np.all(mask[d <= 4.0] == 255)  # within r - 0.5 (r = 4.5): fully painted
    assert np.all(mask[d >= 5.0] == 0)  # from r + 0.5: untouched
    edge = (d > 4.0) & (d < 5.0)  # the one-pixel antialiased edge: alpha = r + 0.5 - d
    assert np.array_equal(mask[edge], np.rint((5.0 - d[edge]) * 255).astype(np.uint8))
    assert mask[10, 14] == 255 and mask[10, 15] == 0 and mask[14, 14] == 0  # d = 4, 5, 5.66
    assert mask[11, 14] == 224 and mask[12, 14] == 135  # d = sqrt(17), sqrt(20)
    assert rect == (6, 6, 9, 9)  # exactly the touched pixels: columns and rows 6..14
    assert int((mask == 255).sum()) == 49  # the pixel centres within 4 px (a^2 + b^2 <= 16)
    assert int((mask > 0).sum()) == 69  # and the 20 with 16 < a^2 + b^2 < 25 on the edge
    assert abs(mask.sum() / 255 - math.pi * 4.5**2) < 2.0  # the dab's area is a circle of radius 4.5


def test_a_soft_dab_falls_smoothly_with_distance():
    mask = np.zeros((64, 64), np.uint8)
    paint_segment(mask, (32.5, 32.5), (32.5, 32.5), 40, 0.25)  # r = 20, fully painted inside r*h = 5
    row = mask[32, 32:56].astype(int)  # from the centre outwards
    assert np.all(row[:6] == 255)  # d = 0..5
    assert np.all(np.diff(row) <= 0)  # never rises
    assert np.all(row[20:] == 0)  # d >= 20
    middle = row[6:20]
    assert np.all((middle > 0) & (middle < 255))  # the falloff: intermediate values
    t = (20.0 - 12.0) / 15.0  # d = 12: t through the falloff from r = 20 to r*h = 5, smoothstep
    assert row[12] == round(255 * t * t * (3 - 2 * t)) == 140
    # a softer brush paints less at the same distance
    other = np.zeros((64, 64), np.uint8)
    paint_segment(other, (32.5, 32.5), (32.5, 32.5), 40, 0.75)
    assert other[32, 32 + 12] > mask[32, 32 + 12]


def test_the_eraser_multiplies_by_one_minus_the_dab():
    mask = np.full((32, 32), 200, np.uint8)
    paint_segment(mask, (16.5, 16.5), (16.5, 16.5), 9, 1.0, erase=True)
    assert mask[16, 16] == 0 and mask[16, 20] == 0  # d = 0, 4: erased
    assert mask[16, 21] == 200 and mask[0, 0] == 200  # outside: kept
    a = round((5.0 - math.sqrt(17)) * 255)  # the edge pixel at d = sqrt(17): alpha 224/255
    assert mask[17, 20] == (200 * (255 - a) + 127) // 255 == 24
    soft = np.full((64, 64), 255, np.uint8)
    paint_segment(soft, (32.5, 32.5), (32.5, 32.5), 40, 0.25, erase=True)
    brushed = np.zeros((64, 64), np.uint8)
    paint_segment(brushed, (32.5, 32.5), (32.5, 32.5), 40, 0.25)
    assert np.array_equal(soft.astype(int), 255 - brushed.astype(int))  # on 255: exactly the complement


def test_a_dab_is_clipped_at_the_border_and_outside_touches_nothing():
    mask = np.zeros((20, 30), np.uint8)
    rect = paint_segment(mask, (0.5, 0.5), (0.5, 0.5), 9, 1.0)  # a quarter of it is inside
    assert rect == (0, 0, 5, 5)
    assert mask[0, 0] == 255 and mask[0, 4] == 255 and mask[4, 4] == 0  # d = 4 / 5.66
    before = mask.copy()
    assert paint_segment(mask, (-20, -20), (-10, -30), 9, 1.0) is None  # wholly outside
    assert paint_segment(mask, (35.0, 10.0), (50.0, 10.0), 9, 1.0) is None
    assert np.array_equal(mask, before)
    rect = paint_segment(mask, (29.5, 19.5), (29.5, 19.5), 9, 1.0)  # the bottom right corner
    assert rect == (25, 15, 5, 5) and mask[19, 29] == 255


def test_a_segment_covers_its_line_without_gaps():
    mask = np.zeros((64, 128), np.uint8)
    rect = paint_segment(mask, (10.5, 20.5), (110.5, 40.5), 6, 1.0)  # spacing max(1, r/4) = 1 px
    assert spacing(6) == 1.0 and spacing(64) == 8.0
    for t in np.linspace(0, 1, 400):  # every pixel on the line is fully painted
        x, y = 10.5 + 100 * t, 20.5 + 20 * t
        assert mask[int(y), int(x)] == 255
    x, y, w, h = rect
    assert (x, y, x + w, y + h) == (7, 17, 114, 44)  # the line plus the brush's reach (r + 0.5)
    assert mask[20, 7] == 128 and not mask[:, :7].any() and not mask[45:].any()  # pixel 7: d = 3
    wide = np.zeros((64, 320), np.uint8)
    paint_segment(wide, (40.5, 32.5), (230.5, 32.5), 64, 1.0)  # r = 32: a dab every 8 px
    assert np.all(wide[1:63, 40:231] == 255)  # the band is solid up to 31 px from the line: no scallops
    assert wide[32, 8] == 128 and not wide[:, :8].any() and wide[32, 262] == 128 and not wide[:, 263:].any()


def test_a_stroke_paints_its_path_and_the_soft_eraser_does_not_depend_on_pointer_speed():
    base = np.full((40, 80), 255, np.uint8)
    fast, slow = base.copy(), base.copy()
    s = Stroke(fast, 16, 0.3, erase=True)
    s.to((10.5, 20.5))
    s.to((70.5, 20.5))  # one long segment
    s2 = Stroke(slow, 16, 0.3, erase=True)
    for x in np.arange(10.5, 70.6, 0.5):  # 121 short ones
        s2.to((x, 20.5))
    # the same but for the dabs' spacing (every 2 px against every 0.5 px): no build-up
    assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 8
    assert fast[20, 40] == 0 and fast[0, 40] == 255 and 100 < fast[14, 40] < 200  # the soft edge stays soft
    naive = base.copy()  # erasing segment by segment would build up: the edge goes almost to 0
    for x in np.arange(10.5, 70.6, 0.5):
        paint_segment(naive, (x - 0.5, 20.5), (x, 20.5), 16, 0.3, erase=True)
    assert naive[14, 40] < fast[14, 40] // 4
    mask = np.zeros((40, 80), np.uint8)
    b = Stroke(mask, 9, 1.0)
    assert b.to((10.5, 10.5)) == (6, 6, 9, 9)  # the first call is one dab
    assert b.to((30.5, 10.5)) == (7, 6, 28, 9)  # then a segment (its first dab 1.1 px on, x 7..34)
    assert np.all(mask[10, 10:31] == 255)


def test_alpha_profile_endpoints():
    zero = np.zeros(1, np.float32)
    assert dab_alpha(zero, zero, 9, 1.0)[0] == 1.0
    assert dab_alpha(np.array([5.0], np.float32), zero, 9, 1.0)[0] == 0.0
    assert dab_alpha(np.array([9.9], np.float32), zero, 20, 0.0)[0] > 0
    assert dab_alpha(np.array([10.0], np.float32), zero, 20, 0.0)[0] == 0.0
    assert segment_alpha((10, 10), (50, 50), (60, 60), 9, 1.0) is None


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_brushes_paint_at_least_the_pixel_under_them(size):
    mask = np.zeros((8, 8), np.uint8)
    paint_segment(mask, (4.5, 4.5), (4.5, 4.5), size, 1.0)
    assert mask[4, 4] == 255
    if size == 1:
        assert int((mask > 0).sum()) == 1


def test_the_eraser_rounds_exactly_for_every_mask_and_alpha_value():
    from studio.session.brush import apply_alpha

    mask = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    alpha = mask.T.copy()
    out = mask.copy()
    apply_alpha(out, alpha, erase=True)
    exact = np.rint(mask.astype(np.float64) * (255 - alpha.astype(np.float64)) / 255).astype(np.uint8)
    assert np.array_equal(out, exact)
    brushed = mask.copy()
    apply_alpha(brushed, alpha, erase=False)
    assert np.array_equal(brushed, np.maximum(mask, alpha))
