"""Upscaler models through spandrel: tiny random-weight ESRGAN, Compact and SwinIR files made here, loaded safely,
described, scanned in ComfyUI and A1111 layouts, and run in tiles blended without a seam."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

# spandrel is installed by packaging/install.sh (--no-deps: see there); no skip, a missing one fails here.
from studio.engine import upscalers as up
from studio.engine.upscalers import (
    UpscaleCancelled,
    UpscalerError,
    describe_upscaler,
    load_upscaler,
    scan_upscalers,
)

# SwinIR builds its attention masks with torch.meshgrid and no indexing= (harmless, spandrel's code).
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

REPO = Path(__file__).resolve().parents[1]


def _arch(name: str):
    up.import_spandrel()
    import spandrel.architectures.Compact as compact
    import spandrel.architectures.ESRGAN as esrgan
    import spandrel.architectures.SwinIR as swinir

    return {"ESRGAN": esrgan.ESRGAN, "Compact": compact.Compact, "SwinIR": swinir.SwinIR}[name]


def _state_dict(kind: str, scale: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    if kind == "ESRGAN":  # RRDBNet, old-arch keys; ~0.9 MB at x4
        net = _arch("ESRGAN")(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    elif kind == "Compact":  # SRVGGNetCompact; ~10 KB
        net = _arch("Compact")(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    else:  # SwinIR, one stage of one block, window 4; ~25 KB
        net = _arch("SwinIR")(
            img_size=16, patch_size=1, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
            mlp_ratio=2.0, upscale=scale, img_range=1.0, upsampler="pixelshuffledirect", resi_connection="1conv",
        )  # fmt: skip
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("upscalers")
    out = {
        "compact_x2": d / "compact_x2.safetensors",
        "compact_x4": d / "compact_x4.pth",
        "esrgan_x4": d / "esrgan_x4.pth",
        "esrgan_x4_st": d / "esrgan_x4.safetensors",
        "swinir_x2": d / "swinir_x2.safetensors",
    }
    save_file(_state_dict("Compact", 2), str(out["compact_x2"]))
    torch.save(_state_dict("Compact", 4, seed=1), out["compact_x4"])
    torch.save({"params_ema": _state_dict("ESRGAN", 4)}, out["esrgan_x4"])  # BasicSR's wrapper
    save_file({f"module.{k}": v for k, v in _state_dict("ESRGAN", 4).items()}, str(out["esrgan_x4_st"]))
    save_file(_state_dict("SwinIR", 2), str(out["swinir_x2"]))
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with some detail: gradients plus low-frequency noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([60 + 120 * xx / max(w, 1), 50 + 150 * yy / max(h, 1), 128 + 60 * np.sin(xx / 5 + yy / 7)], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "key,arch,scale,tiling",
    [
        ("compact_x2", "Compact", 2, "supported"),
        ("compact_x4", "Compact", 4, "supported"),
        ("esrgan_x4", "ESRGAN", 4, "supported"),
        ("esrgan_x4_st", "ESRGAN", 4, "supported"),
        ("swinir_x2", "SwinIR", 2, "discouraged"),
    ],
)
def test_describe(files, key, arch, scale, tiling):
    info = describe_upscaler(files[key])
    assert (info.architecture, info.scale, info.tiling) == (arch, scale, tiling)
    assert info.name == files[key].stem and info.path == str(files[key].resolve())
    assert info.size_bytes == files[key].stat().st_size
    assert info.label == f"{info.name} ({arch} x{scale})"
    assert info.supports_half == (arch != "SwinIR")
    assert files[key].stat().st_size < 1_500_000


def test_describe_is_cached_by_path_size_and_mtime(files, tmp_path, monkeypatch):
    p = tmp_path / "c.safetensors"
    p.write_bytes(files["compact_x2"].read_bytes())
    calls = []
    real = up._describe
    monkeypatch.setattr(up, "_describe", lambda path, size: calls.append(path) or real(path, size))
    a = describe_upscaler(p)
    assert describe_upscaler(str(p)) == a and len(calls) == 1
    save_file(_state_dict("Compact", 4), str(p))  # another file at the same path
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert describe_upscaler(p).scale == 4 and len(calls) == 2
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    for _ in range(2):  # refusals are cached too, and raised again each time
        with pytest.raises(UpscalerError, match="does not know"):
            describe_upscaler(bad)
    assert len(calls) == 3


@pytest.mark.parametrize("key", ["compact_x2", "compact_x4", "esrgan_x4", "swinir_x2"])
@pytest.mark.parametrize("tile", [0, 16])
def test_upscale_output_size(files, key, tile):
    model = load_upscaler(files[key])
    assert model.dtype == torch.float32  # CPU: fp32 always
    s = model.scale
    img = _image(23, 37)
    seen = []
    out = model.upscale(img, tile=tile, overlap=4, on_tile=lambda i, n, r, px: seen.append((i, n, r, px.shape)))
    assert out.shape == (23 * s, 37 * s, 3) and out.dtype == np.uint8
    n = len(seen)
    assert [i for i, *_ in seen] == list(range(1, n + 1)) and all(k == n for _, k, *_ in seen)
    assert (n == 1) == (tile == 0)  # automatic: one tile for a small picture (SwinIR too: it is run whole)
    covered = np.zeros(out.shape[:2], bool)
    for _, _, (x, y, w, h), shape in seen:
        assert shape == (h, w, 3) and x % s == 0 and y % s == 0
        covered[y : y + h, x : x + w] = True
    assert covered.all()


def test_half_precision_only_on_cuda(files):
    assert up.use_half("cuda", True) and not up.use_half("cuda", False)  # SwinIR: supports_half is False
    assert not up.use_half("cpu", True) and not up.use_half("mps", True)
    assert load_upscaler(files["esrgan_x4"], device="cpu").dtype == torch.float32


def test_whole_run_equals_spandrel_call(files):
    """One tile: exactly what spandrel's own call gives (its padding and ours agree), to the uint8 rounding."""
    for key in ("swinir_x2", "esrgan_x4"):
        model = load_upscaler(files[key])
        img = _image(10, 7, seed=3)  # smaller than SwinIR's 16 px minimum: padded, then cropped back
        out = model.upscale(img)
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        ref = (model.descriptor(t)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert out.shape == ref.shape == (10 * model.scale, 7 * model.scale, 3)
        assert np.abs(out.astype(int) - ref).max() <= 1


def test_size_requirements_pad_and_crop(files):
    model = load_upscaler(files["swinir_x2"])
    assert model.size_requirements.minimum == 16
    tile, overlap, rects = model.plan(40, 40, tile=8, overlap=2)
    assert tile == 16 and overlap == 2  # a tile is never below the model's minimum
    assert all(w == 16 and h == 16 for *_, w, h in rects)
    assert model.upscale(_image(5, 1), tile=8).shape == (10, 2, 3)  # 1 px wide: replicate past reflect's reach


def test_plan_follows_spandrels_tiling_advice(files):
    swin = load_upscaler(files["swinir_x2"])  # DISCOURAGED: whole up to WHOLE_MAX_PIXELS
    assert swin.plan(800, 600)[2] == [(0, 0, 800, 600)]
    tile, overlap, rects = swin.plan(1900, 1500)
    assert (tile, overlap) == (up.WHOLE_MAX_SIDE, 2 * up.DEFAULT_OVERLAP) and len(rects) == 4
    compact = load_upscaler(files["compact_x2"])  # SUPPORTED: the default tile
    tile, overlap, rects = compact.plan(800, 600)
    assert (tile, overlap) == (up.DEFAULT_TILE, up.DEFAULT_OVERLAP) and len(rects) == 4


def test_tiled_equals_untiled_away_from_tile_edges(files):
    """Compact is fully convolutional with a receptive radius of 4 input px (4 3x3 convs): a tile's own zero padding
    changes its output only within 4 px of its edge. Every output pixel farther than (4 + 1) * scale px from any
    inner tile edge comes from unaffected tiles, so there tiled == untiled to the rounding (<= 1 level); near the
    edges the affected tile has a small ramp weight, which bounds the error (measured: at most 2 levels, a mean of
    0.18 over the pixels taking the worst channel; asserted: at most 4, mean < 0.25)."""
    model = load_upscaler(files["compact_x2"])
    s = model.scale
    img = _image(80, 96, seed=5)
    whole = model.upscale(img, tile=4096).astype(int)
    rects = []
    tiled = model.upscale(img, tile=32, overlap=12, on_tile=lambda i, n, r, px: rects.append(r)).astype(int)
    assert len(rects) == 12
    diff = np.abs(tiled - whole).max(axis=2)
    near = np.zeros(diff.shape, bool)
    margin = (4 + 1) * s
    H, W = diff.shape
    for x, y, w, h in rects:
        for edge in (x, x + w):
            if 0 < edge < W:
                near[:, max(0, edge - margin) : edge + margin] = True
        for edge in (y, y + h):
            if 0 < edge < H:
                near[max(0, edge - margin) : edge + margin, :] = True
    assert (~near).sum() > 0.2 * diff.size
    assert diff[~near].max() <= 1
    assert diff.mean() < 0.25 and diff.max() <= 4


def test_cancel_between_tiles(files):
    model = load_upscaler(files["compact_x2"])
    cancel = threading.Event()
    seen = []

    def on_tile(i, n, rect, px):
        seen.append(i)
        if i == 2:
            cancel.set()

    with pytest.raises(UpscaleCancelled):
        model.upscale(_image(64, 64), tile=32, overlap=8, on_tile=on_tile, cancel=cancel)
    assert seen == [1, 2]
    with pytest.raises(UpscaleCancelled):  # set before the start: no tile runs
        model.upscale(_image(64, 64), tile=32, on_tile=on_tile, cancel=cancel)
    assert seen == [1, 2]


def test_input_forms(files):
    model = load_upscaler(files["compact_x2"])
    gray = _image(9, 11)[:, :, 0]
    out = model.upscale(gray)
    assert out.shape == (18, 22, 3)
    rgba = np.dstack([_image(9, 11), np.full((9, 11), 255, np.uint8)])
    assert np.array_equal(model.upscale(rgba), model.upscale(_image(9, 11)))
    with pytest.raises(ValueError):
        model.upscale(np.zeros((9, 11, 3), np.float32))


def test_unknown_layout_is_named(tmp_path):
    p = tmp_path / "not_an_upscaler.safetensors"
    save_file({"foo.weight": torch.randn(4, 4), "bar.bias": torch.randn(4)}, str(p))
    for fn in (describe_upscaler, load_upscaler):
        with pytest.raises(UpscalerError, match=r"not_an_upscaler\.safetensors: spandrel does not know"):
            fn(p)
    q = tmp_path / "random.pth"
    torch.save({"state_dict": {"a": torch.zeros(3)}}, q)
    with pytest.raises(UpscalerError, match=r"random\.pth: spandrel does not know"):
        describe_upscaler(q)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_torchscript_is_refused(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Conv2d(3, 3, 3)).save(str(p))
    with pytest.raises(UpscalerError, match=r"scripted\.pt: a TorchScript file, which is not supported"):
        describe_upscaler(p)


def test_restoration_model_is_not_an_upscaler(tmp_path):
    p = tmp_path / "denoise_1x.safetensors"
    save_file(_state_dict("Compact", 1), str(p))
    with pytest.raises(UpscalerError, match="1x Compact restoration model.*not an upscaler"):
        describe_upscaler(p)


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    p = tmp_path / "4x_evil.pth"
    torch.save({"params_ema": {"conv.weight": torch.zeros(1)}, "payload": _Hostile(marker)}, p)
    assert not marker.exists()
    legacy = tmp_path / "4x_evil_legacy.pth"  # the pre-zip format (no mmap) goes the same way
    torch.save({"payload": _Hostile(marker)}, legacy, _use_new_zipfile_serialization=False)
    refused = r"^4x_evil\.pth holds program code, not only weights \(exec\): .*was not opened"
    for fn in (describe_upscaler, load_upscaler, up.read_state_dict):
        with pytest.raises(UpscalerError, match=refused):
            fn(p)
        with pytest.raises(UpscalerError, match=r"^4x_evil_legacy\.pth holds program code, not only weights"):
            fn(legacy)
    assert not marker.exists()
    garbage = tmp_path / "broken.ckpt"
    garbage.write_bytes(b"\x80\x02not a pickle at all" * 10)
    with pytest.raises(UpscalerError, match=r"^broken\.ckpt is damaged or incomplete \(not a readable PyTorch file\)"):
        describe_upscaler(garbage)


def test_scan_finds_comfyui_and_a1111_layouts(files, tmp_path):
    comfy = tmp_path / "ComfyUI" / "models"
    a1111 = tmp_path / "webui" / "models"
    (comfy / "upscale_models").mkdir(parents=True)
    (a1111 / "ESRGAN").mkdir(parents=True)
    (a1111 / "Stable-diffusion").mkdir()
    (comfy / "upscale_models" / "4x_compact.pth").write_bytes(files["compact_x4"].read_bytes())
    (a1111 / "ESRGAN" / "4x_esrgan.pth").write_bytes(files["esrgan_x4"].read_bytes())
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "2x_swinir.safetensors").write_bytes(files["swinir_x2"].read_bytes())
    # Skipped silently: a random dict of tensors, a hostile pickle, garbage, a non-model file, a 1x model.
    save_file({"w": torch.randn(8, 8)}, str(comfy / "upscale_models" / "random.safetensors"))
    marker = tmp_path / "pwned.txt"
    torch.save({"x": _Hostile(marker)}, a1111 / "ESRGAN" / "evil.pth")
    (a1111 / "ESRGAN" / "broken.pth").write_bytes(b"garbage")
    (a1111 / "ESRGAN" / "readme.txt").write_text("hi")
    save_file(_state_dict("Compact", 1), str(a1111 / "ESRGAN" / "1x_denoise.safetensors"))
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(a1111 / "Stable-diffusion" / "sd.safetensors"))

    found = scan_upscalers([comfy, a1111, tmp_path / "loose", tmp_path / "missing", comfy])
    assert [(u.name, u.architecture, u.scale) for u in found] == [
        ("2x_swinir", "SwinIR", 2),
        ("4x_compact", "Compact", 4),
        ("4x_esrgan", "ESRGAN", 4),
    ]
    assert not marker.exists()
    # The folder of a whole install finds its models/ subfolders too.
    assert [u.name for u in scan_upscalers([tmp_path / "ComfyUI"])] == ["4x_compact"]
    assert scan_upscalers([]) == []


def test_scan_survives_any_error(files, tmp_path, monkeypatch):
    (tmp_path / "upscale_models").mkdir()
    (tmp_path / "upscale_models" / "a.safetensors").write_bytes(files["compact_x2"].read_bytes())
    (tmp_path / "upscale_models" / "b.safetensors").write_bytes(files["compact_x2"].read_bytes())
    real = up.describe_upscaler

    def flaky(path):
        if Path(path).name == "a.safetensors":
            raise RuntimeError("boom")
        return real(path)

    monkeypatch.setattr(up, "describe_upscaler", flaky)
    assert [u.name for u in scan_upscalers([tmp_path])] == ["b"]


def test_torchvision_archs_refused_without_torchvision(monkeypatch):
    monkeypatch.setattr(up, "_real_torchvision", False)
    with pytest.raises(UpscalerError, match="x.pth: LaMa needs torchvision, which is not installed"):
        up._check_torchvision("LaMa", Path("x.pth"))
    up._check_torchvision("ESRGAN", Path("x.pth"))


# ---- torchvision: missing, broken (a CUDA build beside CPU torch), working ----

_PROBE = textwrap.dedent(
    """
    import importlib.util, sys
    import studio.engine.upscalers as up
    assert "torch" not in sys.modules, "importing upscalers must not import torch"
    up.import_spandrel()
    from spandrel.architectures.LaMa.__arch import LaMa as lama
    import spandrel.architectures.RestoreFormer as rf
    print("real", up.torchvision_available())
    print("in_modules", type(sys.modules.get("torchvision")).__name__)
    print("spec", importlib.util.find_spec("torchvision") is not None)
    for fn in (lambda: lama.rotate(None, 0), lambda: lama.InterpolationMode.BILINEAR, lambda: rf.tv_normalize(0)):
        try:
            print("call", fn())
        except Exception as e:
            print("call", type(e).__name__, e)
    """
)


def _fake_torchvision(root: Path, broken: bool) -> None:
    pkg = root / "torchvision"
    (pkg / "transforms").mkdir(parents=True)
    if broken:
        (pkg / "__init__.py").write_text(
            "from . import transforms\nraise RuntimeError('operator torchvision::nms does not exist')\n"
        )
    else:
        (pkg / "__init__.py").write_text("__version__ = '0.0-test'\nfrom . import transforms\n")
    (pkg / "transforms" / "__init__.py").write_text("from . import functional\n")
    (pkg / "transforms" / "functional.py").write_text(
        "import enum\n"
        "class InterpolationMode(enum.Enum):\n    BILINEAR = 'bilinear'\n"
        "def rotate(*a, **k):\n    return 'real rotate'\n"
        "def normalize(*a, **k):\n    return 'real normalize'\n"
    )


@pytest.mark.parametrize("case", ["missing", "broken", "working"])
def test_torchvision_stand_in(tmp_path, case):
    if case != "missing":
        _fake_torchvision(tmp_path, broken=case == "broken")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    r = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    calls = [line for line in lines if line.startswith("call")]
    if case == "working":
        assert "real True" in lines and "in_modules module" in lines
        assert calls == ["call real rotate", "call InterpolationMode.BILINEAR", "call real normalize"]
    else:
        # The stand-in served the import only: it is not left in sys.modules, and find_spec is not fooled.
        assert "real False" in lines and "in_modules NoneType" in lines
        assert ("spec True" if case == "broken" else "spec False") in lines
        assert calls == [
            "call UpscalerError LaMa needs torchvision, which is not installed (torchvision.transforms.functional.rotate)",
            "call UpscalerError LaMa needs torchvision, which is not installed "
            "(torchvision.transforms.functional.InterpolationMode)",
            "call UpscalerError RestoreFormer needs torchvision, which is not installed "
            "(torchvision.transforms.functional.normalize)",
        ]
