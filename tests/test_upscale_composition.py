"""The diffusion upscale's "Keep composition" choice: on (default) each tile adds only its sharpening detail; off
each tile is the previous rule, its img2img output with the resized picture's low frequencies (new texture in flat
areas, A1111's SD upscale). The engine on the tiny model, the metadata round trip, the CLI flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.core import GenerateRequest
from studio.core.metadata import parameters_for, read_parameters, request_fields
from studio.core.tiling import TileBlender
from studio.engine import upscale as up


def square_on_flat(n: int = 48) -> np.ndarray:
    """Flat grey with a flat orange square: two flat areas and one edge."""
    img = np.full((n, n, 3), (90, 100, 110), np.uint8)
    img[n // 4 : 3 * n // 4, n // 3 : 5 * n // 6] = (220, 140, 40)
    return img


def ureq(**kw) -> GenerateRequest:
    base = dict(mode="upscale", upscale_mode="diffusion", init_image=square_on_flat(), scale=2, strength=0.5,
                steps=2, sampler="Euler", seed=3, tile=64, tile_overlap=16, prompt="a cat")  # fmt: skip
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def old_rule(tile: np.ndarray, base: np.ndarray, sigma: float) -> np.ndarray:
    """The rule before transfer_detail (commit ec16c61), written out here: the tile's low frequencies replaced by
    the base's."""
    from scipy.ndimage import gaussian_filter

    a, b = tile.astype(np.float32), base.astype(np.float32)
    s = (sigma, sigma, 0)
    out = b + (a - gaussian_filter(a, s, mode="reflect")) - (b - gaussian_filter(b, s, mode="reflect"))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def runs(engine, tiny_model):
    """The same two-tile-by-two upscale with the option on and off, and each run's raw tile outputs."""
    raw: dict[bool, list] = {True: [], False: []}
    sample = up._Upscale._sample
    out = {}
    for keep in (True, False):

        def recording(self, *a, _keep=keep, **kw):
            image = sample(self, *a, **kw)
            raw[_keep].append((a[5]["region"], image.copy()))  # part: the tile's rect in output px
            return image

        up._Upscale._sample = recording  # type: ignore[method-assign]
        try:
            out[keep] = engine.generate(ureq(model=tiny_model, keep_composition=keep)).images[0]
        finally:
            up._Upscale._sample = sample  # type: ignore[method-assign]
    return out, raw


def test_off_is_the_previous_rule_and_differs_from_on(runs):
    out, raw = runs
    assert len(raw[False]) == 4  # 96 px in 64 px tiles, 16 overlap: 2 x 2
    for (ra, a), (rb, b) in zip(raw[True], raw[False], strict=True):
        assert ra == rb and np.array_equal(a, b)  # same seeds, same sampler: the choice is only what is kept
    base = up.lanczos(square_on_flat(), (96, 96))
    blender = TileBlender(96, 96, 3, 16)
    for (x, y, w, h), tile in raw[False]:
        blender.add((x, y, w, h), old_rule(tile[:h, :w], base[y : y + h, x : x + w], sigma=1.0))  # x2: half of 2
    expected = blender.result()
    assert np.abs(out[False].astype(np.int16) - expected).max() <= 1  # the previous behaviour (within 1/255)
    assert np.abs(out[False].astype(np.int16) - out[True]).mean() > 0.5  # and not today's


def test_off_paints_texture_into_flat_areas_on_the_bases_colours(runs):
    from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter

    out, _ = runs
    base = up.lanczos(square_on_flat(), (96, 96)).astype(np.float32)
    flat = (maximum_filter(base, (5, 5, 1)) == minimum_filter(base, (5, 5, 1))).all(-1)
    assert flat.mean() > 0.5
    on, off = out[True].astype(np.float32), out[False].astype(np.float32)
    assert np.array_equal(on[flat], base[flat])  # on: flat areas exactly the resize's
    assert np.abs(off[flat] - base[flat]).mean() > 1.0  # off: the model's own texture there
    low = np.abs(gaussian_filter(off, (4, 4, 0)) - gaussian_filter(base, (4, 4, 0))).mean()
    assert low < 3, low  # on the base's colours: no drifting tile


def test_metadata_writes_the_key_only_when_off_and_reads_it_back():
    r = ureq(keep_composition=False)
    text = parameters_for(r, 3, "m", "", "v")
    assert "Upscale keep composition: False" in text
    assert request_fields(text)["keep_composition"] is False
    assert r.with_fields(**request_fields(text)).upscale.keep_composition is False
    on = parameters_for(ureq(), 3, "m", "", "v")
    assert "keep composition" not in on and request_fields(on)["keep_composition"] is True
    assert "keep composition" not in parameters_for(ureq(upscale_mode="resize", keep_composition=False), 3, "m", "",
                                                    "v")  # fmt: skip  # a method it does nothing in


def test_cli_no_keep_composition(capsys, tmp_path, engine, tiny_model, runs):
    src = tmp_path / "low.png"
    Image.fromarray(square_on_flat()).save(src)
    argv = ["upscale", "--image", str(src), "--mode", "diffusion", "--model", tiny_model, "--prompt", "a cat",
            "--strength", "0.5", "--steps", "2", "--sampler", "Euler", "--seed", "3", "--tile", "64",
            "--overlap", "16", "--out", str(tmp_path / "o"), "-q"]  # fmt: skip
    assert main([*argv, "--no-keep-composition"]) == 0
    out, err = capsys.readouterr()
    p = Path(out.strip())
    assert "Upscale keep composition: False" in read_parameters(p)
    with Image.open(p) as im:
        assert np.array_equal(np.asarray(im), runs[0][False])
    code = main(["upscale", "--image", str(src), "--mode", "resize", "--no-keep-composition",
                 "--out", str(tmp_path / "r"), "-q"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and "--no-keep-composition is for --mode diffusion" in err and not (tmp_path / "r").exists()
