"""Upscaler models (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT... whatever spandrel knows), run in tiles.

No Qt; torch and spandrel are imported inside the functions, so importing this module is cheap.

Public API:
    scan_upscalers(folders) -> list[UpscalerInfo]      the upscaler files in model folders (ComfyUI, A1111 layouts)
    describe_upscaler(path) -> UpscalerInfo             what a file is (cached by path, size and mtime)
    load_upscaler(path, device="cpu") -> LoadedUpscaler  .upscale(image, tile, overlap, on_tile, cancel)
    read_state_dict(path) -> dict[str, Tensor]          the safe loader (safetensors, or torch.load weights_only)
    import_spandrel() -> module                         spandrel, importable without torchvision
    UpscalerError (a ModelError: the message is for the artist), UpscaleCancelled

Loading is safe: files are read by ``studio.engine.weights``, ``.pth`` / ``.ckpt`` / ``.pt`` only through
``torch.load(weights_only=True)`` (a pickle that needs more than tensors is refused unread; spandrel's own file loader,
a restricted unpickler, is never used). The state dict is unwrapped (``params_ema``, ``params``, ``state_dict``...,
spandrel's ``canonicalize_state_dict``) and handed to spandrel's detection.

What counts as an upscaler: an image-to-image model of spandrel (``ImageModelDescriptor``) with purpose "SR", a scale
of 2 or more, and RGB in and out. Refused with a message (and skipped by the scan): 1x restoration models (denoise,
deblur, JPEG: "not an upscaler"), face models (FaceSR: they expect an aligned face), inpainting models, grayscale or
RGBA models, and LaMa / RestoreFormer when torchvision is missing.

torchvision: spandrel imports ``torchvision.transforms.functional`` (``InterpolationMode``, ``rotate``, ``normalize``)
for two architectures only, LaMa and RestoreFormer. PyPI's torchvision is built for CUDA torch and does not load
beside the CPU torch, so ``packaging/install.sh`` installs spandrel with ``--no-deps``. When ``import torchvision``
fails, :func:`import_spandrel` puts a stand-in ``torchvision.transforms.functional`` in ``sys.modules`` for the time of
``import spandrel`` only (whose names raise "<arch> needs torchvision, which is not installed" when used), then takes
it out again and puts back whatever was there: nothing else ever sees the stand-in. A working torchvision is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelError, first_line
from ..core.tiling import Rect, TileBlender, tile_grid
from .weights import file_key, open_safetensors, read_tensors

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "UPSCALER_EXTENSIONS",
    "UPSCALER_SUBFOLDERS",
    "LoadedUpscaler",
    "UpscaleCancelled",
    "UpscalerError",
    "UpscalerInfo",
    "clear_upscaler_cache",
    "describe_upscaler",
    "import_spandrel",
    "load_upscaler",
    "read_state_dict",
    "scan_upscalers",
    "torchvision_available",
    "use_half",
]

UPSCALER_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt")
# Where ComfyUI (models/upscale_models) and A1111 (models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT) keep them.
UPSCALER_SUBFOLDERS = ("upscale_models", "ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
DEFAULT_TILE = 512  # input px; peers use 192-512
DEFAULT_OVERLAP = 32  # input px; peers use 8-32
# A model whose tiling spandrel calls DISCOURAGED (SwinIR: it uses context across the image) or INTERNAL (it tiles
# itself) runs on the whole image when the tile size is automatic and the input has at most this many pixels; a
# larger input is cut in tiles of WHOLE_MAX_SIDE px (as much context as a whole run would get) with twice the overlap.
WHOLE_MAX_PIXELS = 1024 * 1024
WHOLE_MAX_SIDE = 1024
# A file at the top of a scanned folder (not in an upscaler subfolder) larger than this is a diffusion checkpoint,
# never opened by the scan. Files in the upscaler subfolders are always looked at.
SCAN_TOP_LEVEL_MAX_BYTES = 1 << 30
# The architectures that need torchvision when they run, and what of it.
TORCHVISION_ARCHS = {"LaMa": ("InterpolationMode", "rotate"), "RestoreFormer": ("normalize",)}

OnTile = Callable[[int, int, Rect, np.ndarray], None]


class UpscalerError(ModelError):
    """The file is not an upscaler the studio can run (unknown layout, unsafe pickle, not SR...): one line."""


class UpscaleCancelled(Exception):
    """Raised by ``LoadedUpscaler.upscale`` when its ``cancel`` event is set: checked before every tile."""


@dataclass(frozen=True)
class UpscalerInfo:
    name: str  # the file name without extension
    path: str  # absolute
    architecture: str  # spandrel's architecture id: "ESRGAN", "Compact", "SwinIR", "HAT"...
    scale: int  # 2, 3, 4, 8...
    size_bytes: int
    tiling: str = "supported"  # spandrel's advice: "supported", "discouraged" or "internal"
    supports_half: bool = True  # fp16 works (used on CUDA only)
    tags: tuple[str, ...] = ()  # spandrel's tags: "64nf", "23nb"...

    @property
    def label(self) -> str:
        return f"{self.name} ({self.architecture} x{self.scale})"


# ---- spandrel, with or without torchvision ----

_import_lock = threading.Lock()
_spandrel: Any = None
_real_torchvision = False


class _StandIn(types.ModuleType):
    """A module of the torchvision stand-in (told apart from a real torchvision by this class)."""


def _is_real_torchvision(module: object) -> bool:
    return (
        isinstance(module, types.ModuleType)
        and not isinstance(module, _StandIn)
        and getattr(module, "__file__", None) is not None
    )


def _needs_torchvision(arch: str, what: str) -> Any:
    message = f"{arch} needs torchvision, which is not installed (torchvision.transforms.functional.{what})"

    if what == "InterpolationMode":

        class _Meta(type):
            def __getattr__(cls, name):
                raise UpscalerError(message)

        return _Meta("InterpolationMode", (), {"__doc__": message})

    def missing(*_args, **_kwargs):
        raise UpscalerError(message)

    missing.__name__ = what
    missing.__doc__ = message
    return missing


def _stand_in_modules() -> dict[str, types.ModuleType]:
    tv = _StandIn("torchvision", "A stand-in: torchvision is not installed (see studio.engine.upscalers).")
    tr = _StandIn("torchvision.transforms")
    fn = _StandIn("torchvision.transforms.functional")
    for arch, names in TORCHVISION_ARCHS.items():
        for name in names:
            setattr(fn, name, _needs_torchvision(arch, name))
    tv.transforms = tr  # type: ignore[attr-defined]
    tr.functional = fn  # type: ignore[attr-defined]
    return {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}


def _torchvision_modules() -> list[str]:
    return [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]


def import_spandrel():
    """spandrel, imported once; with a stand-in torchvision for the time of the import when none works.

    Raises UpscalerError when spandrel is not installed.
    """
    global _spandrel, _real_torchvision
    with _import_lock:
        if _spandrel is not None:
            return _spandrel
        if "spandrel" in sys.modules:  # imported already (e.g. by the training code): take it as it is
            _real_torchvision = _is_real_torchvision(sys.modules.get("torchvision"))
            _spandrel = sys.modules["spandrel"]
            return _spandrel
        try:
            import torchvision  # noqa: F401

            real = _is_real_torchvision(sys.modules.get("torchvision"))
        except Exception as e:  # noqa: BLE001 - missing, or a CUDA build: "operator torchvision::nms does not exist"
            log.debug("torchvision does not import (%s): spandrel gets a stand-in", first_line(e))
            real = False
        try:
            if real:
                import spandrel
            else:
                spandrel = _import_with_stand_in()
        except ImportError as e:
            raise UpscalerError(
                f"Upscaler models need spandrel, which is not installed ({first_line(e)}): "
                "run bash packaging/install.sh"
            ) from e
        _spandrel, _real_torchvision = spandrel, real
        # spandrel's SwinIR calls torch.meshgrid without indexing= (the result is the same): torch's warning about
        # a future change would reach the artist's terminal on every run that describes the built-in upscaler.
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
        return spandrel


def _import_with_stand_in():
    saved = {k: sys.modules.pop(k) for k in _torchvision_modules()}  # a broken torchvision's leftovers, if any
    for k in [k for k in sys.modules if k == "spandrel" or k.startswith("spandrel.")]:
        del sys.modules[k]  # a half-done import that failed on torchvision
    stand_in = _stand_in_modules()
    sys.modules.update(stand_in)
    try:
        import spandrel
    finally:
        for k, mod in stand_in.items():
            if sys.modules.get(k) is mod:
                del sys.modules[k]
        for k in _torchvision_modules():  # anything of torchvision's the import added besides
            if isinstance(sys.modules[k], _StandIn):
                del sys.modules[k]
        sys.modules.update(saved)
    return spandrel


def torchvision_available() -> bool:
    """Whether spandrel got a working torchvision (after :func:`import_spandrel`)."""
    import_spandrel()
    return _real_torchvision


# ---- safe loading ----


class _LazySafetensors(Mapping):
    """The tensors of an open safetensors file, read when asked for: spandrel's detection reads a few keys and
    shapes, so telling a 4 GB diffusion checkpoint from an upscaler costs a header read. A prefix common to all
    keys ("module.", "netG.") is dropped, as spandrel's canonicalize_state_dict does."""

    def __init__(self, handle):
        self._f = handle
        keys = list(handle.keys())
        self._names = {k: k for k in keys}
        for prefix in ("module.", "netG."):
            if self._names and all(k.startswith(prefix) for k in self._names):
                self._names = {k[len(prefix) :]: v for k, v in self._names.items()}
        self._cache: dict[str, Any] = {}

    def __getitem__(self, key):
        if key not in self._cache:
            self._cache[key] = self._f.get_tensor(self._names[key])  # KeyError when absent
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key) -> bool:
        return key in self._names


@contextlib.contextmanager
def _as_upscaler_error() -> Iterator[None]:
    """The shared reader's ModelError (one wording for every reader) as an UpscalerError, which the scan skips."""
    try:
        yield
    except UpscalerError:
        raise
    except ModelError as e:
        raise UpscalerError(str(e)) from e


def _check_ext(path: Path) -> None:
    if path.suffix.lower() not in UPSCALER_EXTENSIONS:
        raise UpscalerError(f"{path.name}: not a model file (expected {', '.join(UPSCALER_EXTENSIONS)})")


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """All the tensors of a model file, loaded safely, unwrapped to the state dict spandrel expects."""
    path = Path(path)
    _check_ext(path)
    with _as_upscaler_error():
        raw, _meta = read_tensors(path, "upscaler", mmap=True)
    return _canonical(raw, path)


def _canonical(raw: Any, path: Path) -> dict[str, Any]:
    import torch

    if not isinstance(raw, Mapping):
        raise UpscalerError(f"{path.name}: holds no state dict (a {type(raw).__name__})")
    spandrel = import_spandrel()
    sd = spandrel.canonicalize_state_dict(raw) if isinstance(raw, dict) else raw
    if isinstance(sd, dict):
        sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not len(sd):
        raise UpscalerError(f"{path.name}: holds no weights")
    return sd


# ---- what a file is ----


def _detect(sd: Mapping, path: Path):
    """spandrel's ArchSupport for the state dict, or UpscalerError naming the file."""
    spandrel = import_spandrel()
    for support in spandrel.MAIN_REGISTRY.architectures("detection"):
        try:
            if support.detect(sd):
                return support
        except Exception:  # noqa: BLE001 - a detector tripping on an odd key is no detection
            continue
    raise UpscalerError(f"{path.name}: spandrel does not know this model's layout (not a supported upscaler)")


def _check_torchvision(arch: str, path: Path) -> None:
    if arch in TORCHVISION_ARCHS and not torchvision_available():
        raise UpscalerError(f"{path.name}: {arch} needs torchvision, which is not installed")


def _build(support, sd: Mapping, path: Path):
    """Load the detected architecture and check it is an RGB upscaler: -> spandrel's ImageModelDescriptor."""
    spandrel = import_spandrel()
    arch = str(support.architecture.id)
    _check_torchvision(arch, path)
    try:
        desc = support.architecture.load(sd)
    except Exception as e:  # noqa: BLE001 - keys that looked right, shapes that don't fit
        raise UpscalerError(f"{path.name}: spandrel could not load it as {arch} ({first_line(e)})") from e
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"{path.name}: a {arch} {desc.purpose.lower()} model, not an upscaler")
    if desc.purpose == "FaceSR":
        raise UpscalerError(f"{path.name}: a {arch} face restoration model, not an upscaler")
    if desc.scale < 2 or desc.purpose != "SR":
        raise UpscalerError(
            f"{path.name}: a {desc.scale}x {arch} restoration model (denoise, deblur...), not an upscaler"
        )
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise UpscalerError(
            f"{path.name}: a {arch} model of {desc.input_channels} to {desc.output_channels} channels; only RGB upscalers run"
        )
    return desc


def _info(path: Path, desc, size: int) -> UpscalerInfo:
    return UpscalerInfo(
        name=path.stem,
        path=str(path),
        architecture=str(desc.architecture.id),
        scale=int(desc.scale),
        size_bytes=size,
        tiling=desc.tiling.name.lower(),
        supports_half=bool(desc.supports_half),
        tags=tuple(str(t) for t in desc.tags),
    )


_cache_lock = threading.Lock()
_describe_cache: dict[tuple[str, int, int], UpscalerInfo | UpscalerError] = {}


def clear_upscaler_cache() -> None:
    with _cache_lock:
        _describe_cache.clear()


def describe_upscaler(path: str | os.PathLike) -> UpscalerInfo:
    """What the file is, asked of spandrel; raises UpscalerError (cached too) when it is not an upscaler."""
    path = Path(path).resolve()
    with _as_upscaler_error():
        key = file_key(path, "upscaler")
    _check_ext(path)
    with _cache_lock:
        hit = _describe_cache.get(key)
    if hit is None:
        try:
            hit = _describe(path, key[1])
        except UpscalerError as e:
            hit = e
        with _cache_lock:
            _describe_cache[key] = hit
    if isinstance(hit, UpscalerError):
        raise UpscalerError(str(hit))
    return hit


def _describe(path: Path, size: int) -> UpscalerInfo:
    if path.suffix.lower() == ".safetensors":
        with _as_upscaler_error():
            handle = open_safetensors(path)
        with handle as f:
            lazy = _LazySafetensors(f)
            support = _detect(lazy, path)  # reads a few tensors at most
            sd = _canonical(dict(lazy.items()), path)
    else:
        sd = read_state_dict(path)
        support = _detect(sd, path)
    return _info(path, _build(support, sd, path), size)


def _candidates(folder: Path) -> Iterator[tuple[Path, bool]]:
    """(file, in an upscaler subfolder) for the model files of a folder and of its upscaler subfolders,
    also under a ``models/`` child (the folder of a whole ComfyUI or A1111 install)."""
    roots = [(folder, False)]
    for base in (folder, folder / "models"):
        roots += [(base / sub, True) for sub in UPSCALER_SUBFOLDERS]
    for root, dedicated in roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.suffix.lower() in UPSCALER_EXTENSIONS and p.is_file():
                yield p, dedicated


def scan_upscalers(folders: Iterable[str | os.PathLike]) -> list[UpscalerInfo]:
    """The upscaler models in the folders (and their upscale_models/, ESRGAN/, RealESRGAN/, SwinIR/, DAT/, HAT/
    subfolders), sorted by name. Files that are not upscalers, or not readable, are skipped silently; the scan
    itself never raises (no spandrel: an empty list)."""
    found: dict[str, UpscalerInfo] = {}
    try:
        import_spandrel()
    except Exception as e:  # noqa: BLE001
        log.warning("no upscaler models: %s", first_line(e))
        return []
    for folder in folders:
        for p, dedicated in _candidates(Path(folder)):
            try:
                real = p.resolve()
                if str(real) in found:
                    continue
                if not dedicated and real.stat().st_size > SCAN_TOP_LEVEL_MAX_BYTES:
                    continue
                found[str(real)] = describe_upscaler(real)
            except UpscalerError as e:
                log.debug("not an upscaler: %s", e)
            except Exception:  # noqa: BLE001 - one odd file is no reason to lose the others
                log.debug("scanning %s", p, exc_info=True)
    return sorted(found.values(), key=lambda u: (u.name.lower(), u.path))


# ---- running one ----


def use_half(device_type: str, supports_half: bool) -> bool:
    """fp16 on CUDA for a model that supports it; fp32 on the CPU (and MPS, and any other device) always."""
    return device_type == "cuda" and supports_half


def load_upscaler(path: str | os.PathLike, device: str = "cpu") -> LoadedUpscaler:
    """Load an upscaler file onto ``device`` ("cpu", "cuda", "cuda:1", "mps"): fp16 on CUDA when the model
    supports it, fp32 everywhere else. Raises UpscalerError."""
    import torch

    path = Path(path).resolve()
    sd = read_state_dict(path)
    desc = _build(_detect(sd, path), sd, path)
    info = _info(path, desc, path.stat().st_size)
    dev = torch.device(device)
    dtype = torch.float16 if use_half(dev.type, desc.supports_half) else torch.float32
    desc = desc.to(dev)
    if dtype == torch.float16:
        desc = desc.half()
    desc.eval()
    return LoadedUpscaler(desc, info, dev, dtype)


class LoadedUpscaler:
    """A loaded upscaler model: ``upscale(image)`` runs it in overlapping tiles blended without a seam."""

    def __init__(self, descriptor, info: UpscalerInfo, device, dtype):
        self.descriptor = descriptor
        self.info = info
        self.device = device
        self.dtype = dtype
        self.scale: int = int(descriptor.scale)
        self.architecture: str = info.architecture
        self.size_requirements = descriptor.size_requirements
        self.tiling: str = info.tiling

    def __repr__(self) -> str:
        return f"LoadedUpscaler({self.info.label}, {self.device}, {str(self.dtype).removeprefix('torch.')})"

    def plan(self, width: int, height: int, tile: int = 0, overlap: int = 0) -> tuple[int, int, list[Rect]]:
        """(tile, overlap, input rectangles) that ``upscale`` would use for a ``width x height`` input.

        ``tile`` and ``overlap`` are input px; 0 is automatic: DEFAULT_TILE / DEFAULT_OVERLAP, except that a model
        spandrel says not to tile (DISCOURAGED, INTERNAL) runs whole up to WHOLE_MAX_PIXELS, and in tiles of
        WHOLE_MAX_SIDE with twice the overlap beyond. A tile is grown to the model's minimum and a multiple of its
        ``multiple_of``; the overlap is at most a quarter of the tile.
        """
        req = self.size_requirements
        m = max(1, int(req.multiple_of))
        auto_overlap = DEFAULT_OVERLAP
        if tile <= 0:
            if self.tiling == "supported":
                tile = DEFAULT_TILE
            elif width * height <= WHOLE_MAX_PIXELS:
                tile = max(width, height)
            else:
                tile, auto_overlap = WHOLE_MAX_SIDE, 2 * DEFAULT_OVERLAP
        tile = max(tile, int(req.minimum), m)
        tile = -(-tile // m) * m
        overlap = overlap if overlap > 0 else auto_overlap
        overlap = min(overlap, tile // 4)
        return tile, overlap, tile_grid(width, height, tile, overlap, multiple=m)

    def upscale(
        self,
        image: np.ndarray,
        tile: int = 0,
        overlap: int = 0,
        on_tile: OnTile | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """``H x W x 3`` uint8 RGB -> ``(H*scale) x (W*scale) x 3`` uint8 (gray or RGBA input: alpha dropped).

        Runs tile by tile (see :meth:`plan`); ``on_tile(i, n, rect_out, pixels)`` after each one, i from 1 to n,
        ``rect_out`` the tile's (x, y, w, h) in output px and ``pixels`` its uint8 output (before the blend).
        ``cancel`` set: raises UpscaleCancelled before the next tile.
        """
        img = _rgb(image)
        h, w = img.shape[:2]
        s = self.scale
        _tile, overlap, rects = self.plan(w, h, tile, overlap)
        n = len(rects)
        blender = TileBlender(w * s, h * s, 3, overlap * s) if n > 1 else None
        whole: np.ndarray | None = None
        for i, (x, y, tw, th) in enumerate(rects, start=1):
            if cancel is not None and cancel.is_set():
                raise UpscaleCancelled(f"upscale cancelled before tile {i}/{n}")
            out = self._run(img[y : y + th, x : x + tw])  # float32 0..255, (th*s, tw*s, 3)
            rect_out = (x * s, y * s, tw * s, th * s)
            pixels = np.clip(np.rint(out), 0, 255).astype(np.uint8)
            if blender is not None:
                blender.add(rect_out, out)
            else:
                whole = pixels
            if on_tile is not None:
                on_tile(i, n, rect_out, pixels)
        if blender is not None:
            return blender.result()
        assert whole is not None
        return whole

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        th, tw = pixels.shape[:2]
        s = self.scale
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
            t = (t.permute(2, 0, 1)[None].float() / 255.0).to(self.dtype)
            t = self._pad(t)
            out = self.descriptor(t)[..., : th * s, : tw * s]  # spandrel clamps to [0, 1]
            return (out[0].permute(1, 2, 0).float() * 255.0).cpu().numpy()

    def _pad(self, t):
        """Pad right and bottom to the model's size requirements: reflect (as far as it reaches), then replicate;
        the output is cropped back by the caller. Tiles inside a large image already fit and are not padded."""
        import torch.nn.functional as F

        h, w = t.shape[-2:]
        pad_w, pad_h = self.size_requirements.get_padding(w, h)
        if not (pad_w or pad_h):
            return t
        rw, rh = min(pad_w, w - 1), min(pad_h, h - 1)
        if rw or rh:
            t = F.pad(t, (0, rw, 0, rh), mode="reflect")
        if pad_w - rw or pad_h - rh:
            t = F.pad(t, (0, pad_w - rw, 0, pad_h - rh), mode="replicate")
        return t


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"An upscaler takes uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"An upscaler takes an H x W x 3 image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, :3]
