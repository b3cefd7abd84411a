"""Preprocessors (studio.core.preprocess): canny on a drawn square against a reference, soft edges and line art
where the picture has edges and lines, and nothing where it has none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.core import preprocess
from studio.core.preprocess import PreprocessError


def square(size: int = 64, lo: int = 16, hi: int = 48, ink=(200, 40, 40)) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    img[lo:hi, lo:hi] = ink
    return img


def ring(size: int, lo: int, hi: int, width: int) -> np.ndarray:
    """Pixels within `width` of the square's boundary (the lines between lo-1|lo and hi-1|hi)."""
    yy, xx = np.mgrid[:size, :size]
    inside_outer = (xx >= lo - width) & (xx < hi + width) & (yy >= lo - width) & (yy < hi + width)
    inside_inner = (xx >= lo + width) & (xx < hi - width) & (yy >= lo + width) & (yy < hi - width)
    return inside_outer & ~inside_inner


def test_canny_draws_the_squares_outline_and_nothing_else():
    out = preprocess.canny(square())
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    edge = out[..., 0]
    assert set(np.unique(edge)) == {0, 255}  # white lines on black, as the ControlNets were trained
    # Reference: every edge pixel lies on the square's outline (one pixel either side of it) ...
    assert not (edge[~ring(64, 16, 48, 1)] > 0).any()
    # ... none inside or outside it, and each side is traced along (nearly) its whole length.
    on = edge > 0
    for side in (on[15:17, 16:48].any(axis=0), on[47:49, 16:48].any(axis=0),
                 on[16:48, 15:17].any(axis=1), on[16:48, 47:49].any(axis=1)):  # fmt: skip
        assert side.mean() >= 0.9
    assert on.sum() <= 4 * 34 * 1  # one-pixel lines, not bands


def test_canny_thresholds_drop_weak_edges_and_bad_input_is_one_line():
    faint = square(ink=(245, 245, 245))  # 10 levels of contrast: below the default thresholds
    assert not preprocess.canny(faint).any()
    assert preprocess.canny(faint, 5, 10).any()
    with pytest.raises(PreprocessError, match="low <= high"):
        preprocess.canny(square(), 200, 100)
    with pytest.raises(PreprocessError, match="HxWx3 uint8"):
        preprocess.canny(np.zeros((8, 8), np.float32))


def test_softedge_is_bright_on_the_outline_dark_inside_and_outside():
    out = preprocess.softedge(square())[..., 0].astype(int)
    border = ring(64, 16, 48, 1)
    far = ~ring(64, 16, 48, 5)
    assert out[border].mean() > 150
    assert out[far].max() < 10
    assert not preprocess.softedge(np.full((32, 32, 3), 90, np.uint8)).any()  # a flat picture has no edges


def test_lineart_turns_dark_ink_lines_into_white_lines_on_black():
    img = np.full((64, 64, 3), 235, np.uint8)
    img[30:33, 8:56] = 20  # a 3-px ink line
    img[40:, :] = 180  # a soft, lighter-to-darker area: shading, not a line
    out = preprocess.lineart(img)[..., 0]
    assert out[31, 10:54].min() == 255
    assert out[:26].max() == 0 and out[50:].max() == 0  # flat paper and flat shading: black
    scrib = preprocess.scribble(img)[..., 0]
    assert set(np.unique(scrib)) == {0, 255} and scrib[31, 10:54].min() == 255


def test_run_and_missing_models():
    img = square()
    assert np.array_equal(preprocess.run("canny", img), preprocess.canny(img))
    assert np.array_equal(preprocess.run("tile", img), img)
    assert preprocess.missing("canny", []) is None
    why = preprocess.missing("depth", [])
    assert why is not None and "models/annotators" in why and "none found" in why
    with pytest.raises(PreprocessError, match="Pose needs"):
        preprocess.run("pose", img)


TINY_DEPTH = Path(__file__).parent / "data" / "tiny_depth.onnx"  # "depth" = the mean of the normalized channels


def depth_folder(tmp_path: Path, name: str = "midas_v21_small_256.onnx", data: bytes | None = None) -> Path:
    (tmp_path / "annotators").mkdir(parents=True, exist_ok=True)
    (tmp_path / "annotators" / name).write_bytes(TINY_DEPTH.read_bytes() if data is None else data)
    return tmp_path


def test_depth_runs_an_onnx_depth_model_when_one_is_there(tmp_path):
    img = np.full((48, 64, 3), 20, np.uint8)
    img[12:36, 16:48] = 230  # bright = "near" for the stand-in model
    assert preprocess.missing("depth", [tmp_path]) is not None
    folder = depth_folder(tmp_path)
    assert preprocess.missing("depth", [folder]) is None
    out = preprocess.run("depth", img, [folder])
    assert out.shape == (48, 64, 3) and np.array_equal(out[..., 0], out[..., 2])
    d = out[..., 0].astype(int)
    assert d[18:30, 22:42].min() >= 245 and d[:6].max() <= 10 and d[:, :8].max() <= 10  # near white, far black
    assert d.max() == 255 and d.min() == 0  # normalized over the picture, as A1111's depth maps are


def test_depth_and_pose_say_what_is_missing_or_wrong(tmp_path):
    torch_only = depth_folder(tmp_path / "a", "dpt_hybrid-midas-501f0c75.pt", b"x")
    assert "torch file" in preprocess.missing("depth", [torch_only])
    broken = depth_folder(tmp_path / "b", data=b"not onnx")
    with pytest.raises(PreprocessError, match="does not load as an ONNX model"):
        preprocess.run("depth", square(), [broken])
    pose = depth_folder(tmp_path / "c", "dw-ll_ucoco_384.onnx", b"x")
    assert "dw-ll_ucoco_384.onnx is there, but running it is not built yet" in preprocess.missing("pose", [pose])
