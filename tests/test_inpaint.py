"""Inpainting and outpainting: the geometry of the "only masked" crop in numbers, feather, masked content,
the outpaint canvas, the exact composite, and the engine on tiny 9- and 4-channel models (pixel asserts)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from studio.core import GenerateRequest, RequestError
from studio.core.inpaint import blend_mask, composite, crop_box, feather, fill_masked, outpaint_canvas


def rect_mask(w: int, h: int, x: int, y: int, mw: int, mh: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y : y + mh, x : x + mw] = 255
    return m


def noise_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_module_imports_no_torch_or_qt():
    code = (
        "import sys, studio.core.inpaint; "
        "print([m for m in ('torch', 'diffusers', 'PySide6') if m in sys.modules])"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# ---------------------------------------------------------------- crop_box: the numbers


def test_crop_box_is_the_mask_box_grown_by_the_padding():
    m = rect_mask(256, 192, 100, 80, 20, 20)  # x 100..120, y 80..100
    assert crop_box(m, 0, 0, multiple=1) == (100, 80, 120, 100)
    assert crop_box(m, 0, 16, multiple=1) == (84, 64, 136, 116)
    assert crop_box(m, 0, 16, image_size=(256, 192), multiple=1) == (84, 64, 136, 116)


def test_crop_box_is_clamped_at_the_image_edges():
    m = rect_mask(100, 80, 0, 0, 10, 10)
    assert crop_box(m, 0, 16, multiple=1) == (0, 0, 26, 26)
    m = rect_mask(100, 80, 95, 70, 5, 10)  # touches the right and bottom edges
    assert crop_box(m, 0, 16, multiple=1) == (79, 54, 100, 80)


def test_crop_box_takes_the_blurred_mask():
    m = rect_mask(256, 192, 100, 80, 20, 20)
    f = feather(m, 4)
    ys, xs = np.nonzero(f)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    assert box[0] < 100 and box[2] > 120  # the blur reaches past the painted square
    assert crop_box(m, 4, 0, multiple=1) == box
    x0, y0, x1, y1 = box
    assert crop_box(m, 4, 5, multiple=1) == (x0 - 5, y0 - 5, x1 + 5, y1 + 5)


def test_crop_box_is_widened_to_the_working_aspect():
    m = rect_mask(256, 192, 100, 80, 20, 20)
    # 20x20 to 2:1: the width grows to 40, centred
    assert crop_box(m, 0, 0, aspect=(2, 1), multiple=1) == (90, 80, 130, 100)
    # 1:2: the height grows to 40
    assert crop_box(m, 0, 0, aspect=(64, 128), multiple=1) == (100, 70, 120, 110)
    # 52x52 (padding 16) to 4:3: width ceil(52 * 4 / 3) = 70, 9 px more on each side
    assert crop_box(m, 0, 16, aspect=(4, 3), multiple=1) == (75, 64, 145, 116)
    # never shrunk: a box already wider than the aspect grows in height only
    wide = rect_mask(256, 192, 50, 90, 100, 10)
    assert crop_box(wide, 0, 0, aspect=(1, 1), multiple=1) == (50, 45, 150, 145)


def test_crop_box_aspect_is_shifted_inside_the_image_then_clamped():
    m = rect_mask(100, 80, 90, 30, 10, 10)  # at the right edge: the widened box is shifted left
    assert crop_box(m, 0, 0, aspect=(3, 1), multiple=1) == (70, 30, 100, 40)
    # 80x20 to 1:1 needs a height of 80 in a 40 px tall image: the whole height, aspect as close as it gets
    m = rect_mask(100, 40, 10, 10, 80, 20)
    assert crop_box(m, 0, 0, aspect=(1, 1), multiple=1) == (10, 0, 90, 40)


def test_crop_box_is_aligned_to_multiples_of_8_where_the_image_allows():
    m = rect_mask(256, 192, 100, 80, 20, 20)
    assert crop_box(m, 0, 0) == (98, 78, 122, 102)  # 20 -> 24, centred
    assert crop_box(m, 0, 16) == (82, 62, 138, 118)  # 52 -> 56
    x0, y0, x1, y1 = crop_box(m, 0, 16, aspect=(4, 3))  # 70x52 -> 72x56
    assert (x1 - x0, y1 - y0) == (72, 56)
    assert abs((x1 - x0) / (y1 - y0) - 4 / 3) < 8 / 56  # the aspect, to within the alignment
    # a 30x30 image cannot hold 32: the side stays the whole image
    assert crop_box(rect_mask(30, 30, 5, 5, 20, 20), 0, 4) == (0, 0, 30, 30)
    # the UI's case: square working size, the box square and a multiple of 8
    x0, y0, x1, y1 = crop_box(m, 4, 16, image_size=(256, 192), aspect=(1, 1))
    assert x1 - x0 == y1 - y0 and (x1 - x0) % 8 == 0
    assert x0 <= 84 and y0 <= 64 and x1 >= 136 and y1 >= 116


def test_crop_box_of_an_empty_mask_is_none_and_bad_input_raises():
    assert crop_box(np.zeros((32, 32), np.uint8), 4, 8) is None
    m = rect_mask(32, 32, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="32x32"):
        crop_box(m, 0, 0, image_size=(64, 32))
    with pytest.raises(ValueError):
        crop_box(m, 0, -1)
    with pytest.raises(ValueError):
        crop_box(m, 0, 0, aspect=(0, 1))


# ---------------------------------------------------------------- feather, masked content, composite


def test_feather():
    m = rect_mask(64, 64, 16, 16, 32, 32)
    assert np.array_equal(feather(m, 0), m)
    f = feather(m, 3)
    assert f.dtype == np.uint8 and f.shape == m.shape
    assert f[32, 32] == 255 and f[0, 0] == 0 and f[32, 2] == 0  # deep inside / far away: untouched
    assert 0 < f[32, 14] < 128 < f[32, 17] < 255  # a ramp across the painted edge
    fi = f.astype(int)
    assert np.array_equal(f, f[:, ::-1]) and np.abs(fi - fi.T).max() <= 1  # symmetric like the square (rounding)


def test_blend_mask_is_the_feather_doubled():
    m = rect_mask(64, 64, 16, 16, 32, 32)
    f, b = feather(m, 3).astype(int), blend_mask(m, 3).astype(int)
    assert np.array_equal(b == 0, f == 0)  # zero exactly where the feather is: the outside is kept
    assert np.array_equal(b, np.minimum(255, 2 * f))
    assert (b[m == 255][f[m == 255] >= 128] == 255).all()
    assert (b[18:46, 18:46] == 255).all() and (b[16:48, 16:48] > 128).all()  # the painted area: all new but its corners
    assert b[32, 16] == 255 and b[32, 15] == 2 * f[32, 15] < 255  # the blend is outside the painted area
    assert np.array_equal(blend_mask(m, 0), m)


def test_composite_is_exact_where_the_mask_is_0_or_255():
    a, b = noise_image(40, 30, 1), noise_image(40, 30, 2)
    m = np.random.default_rng(3).integers(0, 256, (30, 40)).astype(np.uint8)
    m[:10] = 0
    m[10:20] = 255
    out = composite(a, b, m)
    assert out.dtype == np.uint8
    assert np.array_equal(out[:10], a[:10]) and np.array_equal(out[10:20], b[10:20])
    expect = np.rint(a[20:] * (1 - m[20:, :, None] / 255) + b[20:] * (m[20:, :, None] / 255))
    assert np.abs(out[20:].astype(int) - expect).max() <= 1
    with pytest.raises(ValueError):
        composite(a, b[:, :20], m)


def test_fill_masked_original_fill_noise():
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 40, 40)
    img[:, 32:] = (40, 40, 200)
    m = rect_mask(64, 48, 16, 12, 32, 24)
    assert np.array_equal(fill_masked(img, m, "original"), img)
    f = fill_masked(img, m, "fill")
    assert np.array_equal(f[m == 0], img[m == 0])
    inside = f[m == 255].astype(int)
    assert inside[:, 1].max() <= 41 and inside[:, 1].min() >= 39  # only the surrounding colours: no black
    assert f[24, 18, 0] > f[24, 45, 0] and f[24, 18, 2] < f[24, 45, 2]  # red side stays red, blue side blue
    flat = np.full((32, 32, 3), (10, 120, 230), np.uint8)
    assert np.abs(fill_masked(flat, rect_mask(32, 32, 8, 8, 16, 16), "fill").astype(int) - flat).max() <= 1
    n1, n2 = fill_masked(img, m, "noise", seed=1), fill_masked(img, m, "noise", seed=2)
    assert np.array_equal(n1, fill_masked(img, m, "noise", seed=1)) and not np.array_equal(n1, n2)
    assert np.array_equal(n1[m == 0], img[m == 0])
    assert n1[m == 255].std() > 50  # noise, not a flat colour
    with pytest.raises(RequestError, match="masked content"):
        fill_masked(img, m, "latent nothing")


# ---------------------------------------------------------------- outpaint canvas


def test_outpaint_canvas_sizes_fill_and_mask():
    img = np.full((40, 60, 3), 230, np.uint8)
    img[:, :5] = (200, 30, 30)  # a red left edge
    out, mask = outpaint_canvas(img, left=16, top=8, right=24, bottom=0, overlap=10)
    assert out.shape == (48, 100, 3) and mask.shape == (48, 100)
    assert np.array_equal(out[8:, 16:76], img)  # the old pixels, copied
    new = np.ones((48, 100), bool)
    new[8:, 16:76] = False
    assert (mask[new] == 255).all()
    assert (mask[8 + 10 :, 16 + 10 : 76 - 10] == 0).all()  # the old interior: kept
    row = mask[30, 16 : 16 + 10]  # the left seam ramps down into the old image
    assert row[0] > 200 and row[-1] > 0 and (np.diff(row.astype(int)) < 0).all()
    assert mask[30, 16 + 10] == 0
    assert (mask[8 + 10 :, 16 + 10 : 76 - 10] == 0).all() and (mask[8:, 76 - 10 : 76] > 0).all()
    assert (mask[47, 30:60] == 0).all()  # the bottom was not extended: no seam there
    assert out[30, 2, 0] > 150 and out[30, 2, 1] < 100  # the left side carries the red edge outwards
    assert out[30, 95].min() > 180 and out[2, 40].min() > 180  # the rest: the light edge colours, not black


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(left=-1), "0 or more"),
        (dict(overlap=-4, left=8), "0 or more"),
        (dict(), "Nothing to outpaint"),
        (dict(right=4096 - 59), "4097x40"),
        (dict(top=2048, bottom=2048), "at most 4096"),
    ],
)
def test_outpaint_canvas_refuses_bad_amounts(kw, message):
    with pytest.raises(RequestError, match=message):
        outpaint_canvas(np.zeros((40, 60, 3), np.uint8), **kw)


def test_outpaint_to_exactly_4096_is_fine():
    out, mask = outpaint_canvas(np.zeros((8, 16, 3), np.uint8), right=4096 - 16)
    assert out.shape == (8, 4096, 3) and mask.shape == (8, 4096)


# ---------------------------------------------------------------- the engine


def inpaint_req(model: str, image: np.ndarray, mask: np.ndarray, **kw) -> GenerateRequest:
    base = dict(prompt="a red circle", model=model, mode="inpaint", steps=2, seed=7, cfg=5.0, strength=1.0,
                init_image=image, mask=mask, sampler="Euler")  # fmt: skip
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def assert_outside_kept(out: np.ndarray, image: np.ndarray, mask: np.ndarray, blur: int) -> None:
    assert out.shape == image.shape
    outside = feather(mask, blur) == 0
    assert outside.sum() > 0
    assert np.array_equal(out[outside], image[outside])


@pytest.mark.parametrize("which", ["tiny_inpaint_model", "tiny_model"])
@pytest.mark.parametrize("area", ["whole", "masked"])
def test_pixels_outside_the_feathered_mask_are_the_input_exactly(engine, request, which, area):
    model = request.getfixturevalue(which)
    image = noise_image(64, 48, 5)
    mask = rect_mask(64, 48, 20, 12, 16, 16)
    r = engine.generate(inpaint_req(model, image, mask, inpaint_area=area, inpaint_padding=4, width=32, height=32,
                                    batch=2))  # fmt: skip
    assert len(r.images) == 2
    for out in r.images:
        assert_outside_kept(out, image, mask, 4)
        assert not np.array_equal(out[mask == 255], image[mask == 255])  # the masked area was painted
    assert r.request.width == 32 and r.request.height == 32  # the working size
    if area == "masked":
        assert r.crop == crop_box(mask, 4, 4, image_size=(64, 48), aspect=(32, 32))
    else:
        assert r.crop is None


@pytest.mark.parametrize("which", ["tiny_inpaint_model", "tiny_model"])
def test_three_inpaints_in_a_row_keep_the_rest_exactly(engine, request, which):
    model = request.getfixturevalue(which)
    image = noise_image(48, 48, 6)
    mask = rect_mask(48, 48, 16, 16, 12, 12)
    current = image
    for k, area in enumerate(("whole", "masked", "whole")):
        r = engine.generate(inpaint_req(model, current, mask, inpaint_area=area, seed=k, strength=0.8,
                                        inpaint_padding=8, width=32, height=32))  # fmt: skip
        current = r.images[0]
        assert_outside_kept(current, image, mask, 4)


def test_only_masked_small_mask_on_a_larger_image_works_at_the_working_size(engine, tiny_inpaint_model):
    image = noise_image(128, 96, 7)
    mask = rect_mask(128, 96, 70, 40, 16, 16)
    steps = []
    r = engine.generate(
        inpaint_req(tiny_inpaint_model, image, mask, inpaint_area="masked", inpaint_padding=8, mask_blur=2,
                    width=32, height=32), on_step=steps.append,
    )  # fmt: skip
    out = r.images[0]
    assert out.shape == (96, 128, 3)  # the input's size, not the working size
    x0, y0, x1, y1 = r.crop
    assert r.crop == crop_box(mask, 2, 8, image_size=(128, 96), aspect=(32, 32))
    assert x0 <= 70 - 8 and y0 <= 40 - 8 and x1 >= 86 + 8 and y1 >= 56 + 8
    assert x1 - x0 == y1 - y0 and (x1 - x0) % 8 == 0 and x1 - x0 < 64  # a small square crop, not the image
    assert (r.request.width, r.request.height) == (32, 32)
    assert r.latents.shape[-2:] == (16, 16)  # the tiny VAE: 2x down from the 32x32 working size
    assert steps and steps[-1].preview.shape[:2] == (16, 16)  # live previews: the working area
    assert_outside_kept(out, image, mask, 2)
    assert np.array_equal(out[:y0], image[:y0]) and np.array_equal(out[:, x1:], image[:, x1:])


def test_only_masked_defaults_to_the_models_native_size(engine, tiny_inpaint_model):
    image = noise_image(96, 80, 8)
    mask = rect_mask(96, 80, 40, 30, 10, 10)
    r = engine.generate(inpaint_req(tiny_inpaint_model, image, mask, inpaint_area="masked"))
    native = engine.native_size(tiny_inpaint_model)
    assert (r.request.width, r.request.height) == native
    assert r.images[0].shape == (80, 96, 3)
    assert_outside_kept(r.images[0], image, mask, 4)


def test_whole_picture_of_any_size_comes_back_at_that_size(engine, tiny_model):
    image = noise_image(50, 37, 9)  # not a multiple of 8: worked at 48x40, scaled back
    mask = rect_mask(50, 37, 10, 10, 12, 12)
    r = engine.generate(inpaint_req(tiny_model, image, mask, mask_blur=0))
    assert (r.request.width, r.request.height) == (48, 40)
    assert r.images[0].shape == (37, 50, 3)
    assert_outside_kept(r.images[0], image, mask, 0)


@pytest.mark.parametrize("content", ["fill", "noise"])
def test_masked_content_runs_and_keeps_the_rest(engine, tiny_inpaint_model, content):
    image = noise_image(32, 32, 10)
    mask = rect_mask(32, 32, 8, 8, 16, 16)
    a = engine.generate(inpaint_req(tiny_inpaint_model, image, mask, masked_content=content, strength=0.6))
    b = engine.generate(inpaint_req(tiny_inpaint_model, image, mask, masked_content="original", strength=0.6))
    assert_outside_kept(a.images[0], image, mask, 4)
    assert not np.array_equal(a.images[0], b.images[0])  # the start of the masked area matters below 1


def test_outpaint_through_the_engine(engine, tiny_inpaint_model):
    image = noise_image(32, 24, 11)
    canvas, mask = outpaint_canvas(image, right=16, bottom=8, overlap=8)
    r = engine.generate(inpaint_req(tiny_inpaint_model, canvas, mask, mask_blur=0))
    out = r.images[0]
    assert out.shape == (32, 48, 3)
    assert np.array_equal(out[:24 - 8, :32 - 8], image[:24 - 8, :32 - 8])  # the old image away from the seam
    assert not np.array_equal(out[:, 40:], canvas[:, 40:])  # the new area was painted


def test_bad_inpaint_requests_are_clear_errors(engine, tiny_inpaint_model):
    image = noise_image(32, 32, 12)
    with pytest.raises(RequestError, match="The mask is 16x32 but the image is 32x32"):
        engine.generate(inpaint_req(tiny_inpaint_model, image, np.full((32, 16), 255, np.uint8)))
    with pytest.raises(RequestError, match="The mask is empty"):
        engine.generate(inpaint_req(tiny_inpaint_model, image, np.zeros((32, 32), np.uint8)))
    with pytest.raises(RequestError, match="needs a mask"):
        engine.generate(inpaint_req(tiny_inpaint_model, image, None))
    with pytest.raises(RequestError, match="inpaint area"):
        engine.generate(inpaint_req(tiny_inpaint_model, image, rect_mask(32, 32, 0, 0, 4, 4), inpaint_area="crop"))


# ---------------------------------------------------------------- the evaluator's "remove an object" measure


def test_remove_an_object_cases_and_score_on_true_images():
    pytest.importorskip("scipy")
    from studio.training.data import COLORS
    from studio.training.evaluate import REMOVE_GROW, eval_prompts, remove_cases, score_removal

    items = eval_prompts(12)
    src, masks, prompts = remove_cases(items)
    for img, m, p, it in zip(src, masks, prompts, items, strict=True):
        assert p == f"on a {it['background']} background"
        bg = np.array(COLORS[it["background"]], np.int16)
        drawn = np.abs(img.astype(np.int16) - bg).max(axis=2) > 8
        assert drawn.any() and (m[drawn] == 1).all()  # the hole covers the object
        ys, xs = np.nonzero(m)
        assert ys.max() - ys.min() + 1 <= np.ptp(np.nonzero(drawn)[0]) + 1 + 2 * REMOVE_GROW
    clean = [np.full_like(s, COLORS[it["background"]]) for s, it in zip(src, items, strict=True)]
    r = score_removal(clean, src, masks, items)
    assert r["removed"] == 1.0 and r["hole_background_fraction"] == 1.0
    assert r["outside_mean_abs_change"] == 0.0  # only the object was there: outside, the pictures are the same
    kept = score_removal(src, src, masks, items)  # nothing removed
    assert kept["removed"] == 0.0 and kept["hole_background_fraction"] < 0.9


def test_the_crop_box_feathers_only_around_the_mask_yet_equals_the_whole_mask_feathered():
    from studio.core.inpaint import _box, _feathered_box, feather

    rng = np.random.default_rng(3)
    for trial in range(40):
        h, w = int(rng.integers(16, 300)), int(rng.integers(16, 300))
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            m[y : y + int(rng.integers(1, 40)), x : x + int(rng.integers(1, 40))] = int(rng.integers(1, 256))
        blur = [0, 0.5, 1, 2, 4, 7.5, 16, 40][trial % 8]
        whole = (m > 0) | (feather(m, blur) > 0) if blur > 0 else m > 0
        assert _feathered_box(m, blur) == _box(whole), (trial, blur)
