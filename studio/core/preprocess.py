"""Control-image preprocessors: an image in, what a ControlNet sees out (HxWx3 uint8, white lines on black).

Torch-free and Qt-free, on OpenCV (`opencv-python-headless`): its `cv2.Canny` is the function the ControlNet
authors' own annotator calls (lllyasviel's `annotator/canny`: `cv2.Canny(img, low, high)` on the RGB image, 100 / 200
by default), so a canny map made here is the kind the canny ControlNets were trained on; the headless wheel ships no
Qt of its own to clash with PySide6's. Soft edges and line art are made from the image's luminance with OpenCV's
filters (no model): soft edges are the gradient magnitude of the blurred luminance, line art is where a pixel is
darker than its neighbourhood (a difference of Gaussians), as an artist's ink lines are.

Depth and pose need a preprocessor model; none ships with the studio. Depth runs an ONNX depth model (MiDaS v2.1
small, Depth Anything v2 small: the files A1111's and ComfyUI's annotators use, exported to ONNX) through OpenCV's DNN
module, still without torch; the torch `.pt` annotators are not loaded, and pose (DWPose / OpenPose) is not built yet.
`missing()` says what is needed, and the panel keeps an option that cannot run disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

# Which preprocessors run from an image here (the rest of studio.core.control.CONTROL_MODULES need a model file).
BUILT_IN = ("none", "canny", "softedge", "lineart", "scribble", "tile")
# Model files the depth and pose preprocessors would need (the names A1111's and ComfyUI's annotators download).
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "depth": ("depth_anything_v2_vits.onnx", "midas_v21_small_256.onnx", "dpt_hybrid-midas-501f0c75.pt"),
    "pose": ("dw-ll_ucoco_384.onnx", "yolox_l.onnx", "body_pose_model.pth"),
}


# The ONNX depth models that run here: the square side each was trained at (ImageNet-normalized RGB in, relative
# inverse depth out: larger = nearer, shown white as A1111's depth maps are).
DEPTH_SIDE = {"depth_anything_v2_vits.onnx": 518, "midas_v21_small_256.onnx": 256}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_nets: dict[tuple[str, float], object] = {}  # a loaded depth model, by path and mtime


class PreprocessError(ValueError):
    """A preprocessor that cannot run on this input; str() is one line for the artist."""


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise PreprocessError(f"a preprocessor takes an HxWx3 uint8 image, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a[..., :3])


def _grey3(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[:, :, None], 3, axis=2)


def canny(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (the annotator's thresholds by default): white one-pixel lines on black."""
    import cv2

    if not 0 <= low <= high:
        raise PreprocessError(f"canny thresholds must satisfy 0 <= low <= high, got {low}, {high}")
    return _grey3(cv2.Canny(_rgb(image), int(low), int(high)))


def _luminance(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY).astype(np.float32)


def softedge(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Soft edges: the gradient magnitude of the blurred luminance, scaled so the strongest edges are white."""
    import cv2

    lum = cv2.GaussianBlur(_luminance(image), (0, 0), sigma)
    mag = cv2.magnitude(cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3))
    top = float(np.percentile(mag, 99.5))
    if top < 8.0:  # a flat image (or one under a faint gradient): no edges, not amplified noise
        top = max(top, 255.0)
    return _grey3(np.clip(mag * (255.0 / top), 0, 255).round().astype(np.uint8))


def lineart(image: np.ndarray, sigma: float = 2.0, gain: float = 6.0) -> np.ndarray:
    """Line art: how much darker than its neighbourhood each pixel is (dark ink lines on a light picture become
    white lines on black); flat areas and soft shading stay black."""
    import cv2

    lum = _luminance(image)
    darker = cv2.GaussianBlur(lum, (0, 0), sigma) - lum
    lines = np.clip((darker - 4.0) * gain, 0, 255)  # below 4 levels: texture and noise, not a line
    return _grey3(lines.round().astype(np.uint8))


def scribble(image: np.ndarray) -> np.ndarray:
    """A scribble from an image: its line art made bold and binary (white 3-px strokes on black)."""
    import cv2

    lines = lineart(image)[..., 0] >= 128
    bold = cv2.dilate(lines.astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    return _grey3(bold)


def depth(image: np.ndarray, model: Path) -> np.ndarray:
    """A depth map (near = white) of `image` from an ONNX depth model (DEPTH_SIDE), at the image's size."""
    import cv2

    rgb = _rgb(image)
    side = DEPTH_SIDE.get(model.name)
    if side is None:
        raise PreprocessError(f"{model.name} is not a depth model this studio runs ({', '.join(DEPTH_SIDE)})")
    key = (str(model), model.stat().st_mtime)
    net = _nets.get(key)
    if net is None:
        try:
            net = cv2.dnn.readNetFromONNX(str(model))
        except cv2.error as e:
            raise PreprocessError(f"{model.name} does not load as an ONNX model: {str(e).strip().splitlines()[-1]}") from e
        _nets.clear()  # one model kept: a depth model is tens of MB
        _nets[key] = net
    # Linear, not the models' reference cubic: cubic rings at hard edges, and the ringing became the "nearest" point.
    x = cv2.resize(rgb.astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_LINEAR)
    x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
    net.setInput(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))  # type: ignore[attr-defined]
    try:
        d = np.squeeze(np.asarray(net.forward(), np.float32))  # type: ignore[attr-defined]
    except cv2.error as e:
        raise PreprocessError(f"{model.name} failed: {str(e).strip().splitlines()[-1]}") from e
    if d.ndim != 2:
        raise PreprocessError(f"{model.name} gives a {d.shape} output, not a depth map")
    lo, hi = float(d.min()), float(d.max())
    unit = ((d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)).astype(np.float32)
    near = np.asarray(cv2.resize(unit, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR), np.float32)
    return _grey3(np.clip(near * 255.0, 0, 255).round().astype(np.uint8))


def run(module: str, image: np.ndarray, folders: Iterable[Path | str] = ()) -> np.ndarray:
    """The control image `module` makes from `image` (HxWx3 uint8); a model-based one looks for its model file in
    `folders`; PreprocessError (one line) when it cannot run."""
    folders = list(folders)
    if module == "depth" and missing(module, folders) is None:
        found = find_model(module, folders)
        assert found is not None  # missing() found it
        return depth(image, found)
    if module in ("none", "tile"):  # the image itself: a tile ControlNet, or a control image made elsewhere
        return _rgb(image).copy()
    makers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "canny": canny, "softedge": softedge, "lineart": lineart, "scribble": scribble}
    fn = makers.get(module)
    if fn is None:
        raise PreprocessError(missing(module, folders) or f"no preprocessor {module!r}")
    return fn(image)


def find_model(module: str, folders: Iterable[Path | str]) -> Path | None:
    """A model file for a depth or pose preprocessor in the folders (or their `annotators` subfolder), or None."""
    for folder in folders:
        for sub in ("", "annotators", "Annotators"):
            for name in MODEL_FILES.get(module, ()):
                p = Path(folder) / sub / name
                if p.is_file():
                    return p
    return None


def missing(module: str, folders: Iterable[Path | str]) -> str | None:
    """Why `module` cannot run from an image here (one line), or None when it can."""
    if module in BUILT_IN:
        return None
    if module not in MODEL_FILES:
        return f"no preprocessor {module!r}"
    found = find_model(module, folders)
    names = " or ".join(MODEL_FILES[module][:2])
    if found is None:
        return f"{module.capitalize()} needs a preprocessor model ({names} in models/annotators): none found"
    if found.name in DEPTH_SIDE:
        return None
    if module == "depth":
        return f"Depth: {found.name} is a torch file; put {names} (ONNX) in models/annotators to run depth here"
    return (f"{module.capitalize()}: {found.name} is there, but running it is not built yet; make the {module} "
            "image elsewhere and load it as a layer, then run 'none' on it")  # fmt: skip
