"""Upscaling (mode "upscale"): each method's output size, tiles covering the output, blends without a seam, tile
previews (stage, part, parts, region), seeds per tile, cancel, refusals; the x4 upscaler layout on a tiny pipeline."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from PIL import Image

from studio.core import GenerateRequest, ModelError, RequestError
from studio.core.samplers import SAMPLER_NAMES
from studio.engine import upscale as up
from studio.engine.upscale import diffusion_tiles, edge_margin, scale_rect, visible_part
from studio.engine.upscalers import UpscaleCancelled, UpscalerError


def smooth(h: int, w: int) -> np.ndarray:
    """A smooth picture: two gradients and a slow wave, values 40..200."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 40 + 160 * xx / max(w - 1, 1)
    g = 40 + 160 * yy / max(h - 1, 1)
    b = 120 + 60 * np.sin(xx / 9 + yy / 13)
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


def lanczos(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))


def ureq(**kw) -> GenerateRequest:
    base = dict(mode="upscale", upscale_mode="resize", init_image=smooth(24, 32), steps=2, seed=7, prompt="a cat")
    base.update(kw)
    return GenerateRequest.from_fields(**base)


def covered(rects, w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for x, y, tw, th in rects:
        assert x >= 0 and y >= 0 and x + tw <= w and y + th <= h, (x, y, tw, th)
        m[y : y + th, x : x + tw] = True
    return m


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "shape,kw,size",
    [
        ((24, 32), dict(scale=2), (64, 48)),
        ((25, 33), dict(scale=1.5), (50, 38)),
        ((24, 32), dict(scale=1), (32, 24)),
        ((24, 32), dict(scale=8), (256, 192)),
        ((24, 32), dict(width=72, height=40), (72, 40)),  # a target size: the aspect is the artist's choice
    ],
)
def test_resize_is_lanczos_to_the_output_size(engine, shape, kw, size):
    img = smooth(*shape)
    seen = []
    r = engine.generate(ureq(init_image=img, **kw), on_step=seen.append)
    assert r.images[0].shape == (size[1], size[0], 3)
    assert np.array_equal(r.images[0], lanczos(img, size))
    assert not r.cancelled and r.seeds == [] and r.steps_done == 0 and seen == []  # no noise: no seed
    assert r.latents is None and r.x0 is None and r.model_name == ""
    assert r.request.seed is None and r.request.batch == 1


def test_resize_needs_no_model(engine):
    r = engine.generate(ureq(model="/nonexistent/model"))  # no model is read for a plain resize
    assert r.images[0].shape == (48, 64, 3)


# ---------------------------------------------------------------- an upscaler model


class StandInUpscaler:
    """studio.engine.upscalers.LoadedUpscaler's interface: x4 nearest, two tiles (left, right half)."""

    scale = 4

    def __init__(self):
        self.calls = []

    def upscale(self, image, tile=0, overlap=0, on_tile=None, cancel=None):
        self.calls.append((image.shape, tile, overlap))
        s = self.scale
        out = np.repeat(np.repeat(image, s, 0), s, 1)
        h, w = out.shape[:2]
        halves = [(0, 0, w // 2, h), (w // 2, 0, w - w // 2, h)]
        for i, (x, y, tw, th) in enumerate(halves, 1):
            if cancel is not None and cancel.is_set():
                raise UpscaleCancelled(f"cancelled before tile {i}")
            if on_tile is not None:
                on_tile(i, 2, (x, y, tw, th), out[y : y + th, x : x + tw])
        return out


@pytest.fixture
def stand_in(engine, monkeypatch):
    fake = StandInUpscaler()
    monkeypatch.setattr(engine, "upscaler", lambda path: fake)
    return fake


def test_model_upscale_resizes_to_the_exact_size_and_previews_each_tile(engine, stand_in, tmp_path):
    f = tmp_path / "x4.safetensors"
    f.write_bytes(b"stand-in")
    img = smooth(24, 32)
    seen = []
    r = engine.generate(ureq(upscale_mode="model", upscaler=str(f), scale=2, tile=256, tile_overlap=32), seen.append)
    x4 = np.repeat(np.repeat(img, 4, 0), 4, 1)
    assert np.array_equal(r.images[0], lanczos(x4, (64, 48)))  # the model's 4x, Lanczos to 2x
    assert stand_in.calls == [((24, 32, 3), 64, 8)]  # tile and overlap: output px over the model's scale
    assert [(s.step, s.total, s.stage, s.part, s.parts) for s in seen] == [(0, 0, "tile", 1, 2), (0, 0, "tile", 2, 2)]
    assert [s.region for s in seen] == [(0, 0, 32, 48), (32, 0, 32, 48)]  # in output px, not the model's 4x
    assert seen[0].preview.shape == (96, 64, 3) and seen[1].label() == "tile 2/2"
    assert r.steps_done == 0 and r.latents is None and r.model_name == ""


def test_model_upscale_cancel_between_tiles(engine, stand_in, tmp_path):
    f = tmp_path / "x4.safetensors"
    f.write_bytes(b"stand-in")
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info.part)
        cancel.set()

    r = engine.generate(ureq(upscale_mode="model", upscaler=str(f)), on_step, cancel)
    assert r.cancelled and r.images == [] and seen == [1]


def test_model_upscale_with_a_real_upscaler_file(engine, tiny_sr_file):
    from studio.engine.upscalers import load_upscaler

    img = smooth(40, 48)
    seen = []
    r = engine.generate(ureq(init_image=img, upscale_mode="model", upscaler=tiny_sr_file, scale=3, tile=64), seen.append)
    assert r.images[0].shape == (120, 144, 3)
    direct = load_upscaler(tiny_sr_file).upscale(img, 16, 0)
    assert np.array_equal(r.images[0], lanczos(direct, (144, 120)))
    _, _, rects = load_upscaler(tiny_sr_file).plan(48, 40, 16, 0)
    assert [s.part for s in seen] == list(range(1, len(rects) + 1)) and {s.parts for s in seen} == {len(rects)}
    assert covered([s.region for s in seen], 144, 120).all()
    r4 = engine.generate(ureq(init_image=img, upscale_mode="model", upscaler=tiny_sr_file, scale=4))
    assert np.array_equal(r4.images[0], load_upscaler(tiny_sr_file).upscale(img))  # the model's own size: as is


def test_upscaler_files_that_are_not_one(engine, tmp_path):
    with pytest.raises(ModelError, match="Upscaler not found"):
        engine.generate(ureq(upscale_mode="model", upscaler=str(tmp_path / "missing.pth")))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(UpscalerError, match="bad.safetensors"):
        engine.generate(ureq(upscale_mode="model", upscaler=str(bad)))


# ---------------------------------------------------------------- tiles


@pytest.mark.parametrize("size", [(64, 64), (65, 64), (200, 72), (128, 300), (513, 1025), (8, 700)])
@pytest.mark.parametrize("tile,overlap,multiple", [(64, 8, 8), (512, 64, 64), (96, 16, 8)])
def test_diffusion_tiles_cover_every_pixel(size, tile, overlap, multiple):
    w, h = size
    rects = diffusion_tiles(size, tile, overlap, multiple)
    assert covered(rects, w, h).all()
    for _x, _y, tw, th in rects:
        assert tw <= tile or tw == w
        assert (tw % multiple == 0) or tw == w  # a tile's side is the multiple, or the whole (short) axis
        assert (th % multiple == 0) or th == h
    xs = sorted({x for x, _, _, _ in rects})
    spans = {x: tw for x, _, tw, _ in rects}
    for a, b in zip(xs, xs[1:], strict=False):
        assert a + spans[a] - b >= overlap  # neighbours overlap by at least the overlap


def test_x4_tiles_in_output_px_cover_the_output():
    rects = diffusion_tiles((40, 24), 16, 4, 4)  # input px
    out = [scale_rect((x * 4, y * 4, w * 4, h * 4), 100 / 160, 60 / 96) for x, y, w, h in rects]
    assert covered(out, 100, 60).all()


def test_too_much_overlap_is_refused(engine, tiny_model):
    with pytest.raises(RequestError, match="leaves no room"):
        engine.generate(ureq(model=tiny_model, upscale_mode="diffusion", tile=64, tile_overlap=64, strength=0.5))


# ---------------------------------------------------------------- diffusion: the blend, with a stand-in img2img


def stand_in_img2img(monkeypatch, offsets: dict[int, int] | None = None):
    """Replace each tile's img2img run by its input plus a constant per tile: what the blend does, exactly."""
    calls = []

    def fake(self, model, pipe, kwargs, req, seed, part, keep, crop=(1.0, 1.0), legacy=False, total=None,
             patches=None):  # fmt: skip
        calls.append((seed, part["part"], part["parts"], part["region"], req.init_image.shape))
        pixels = np.asarray(kwargs["image"]).astype(np.int16) + (offsets or {}).get(part["part"], 0)
        return np.clip(pixels, 0, 255).astype(np.uint8)

    monkeypatch.setattr(up._Upscale, "_sample", fake)
    monkeypatch.setattr(up._Upscale, "round_trip", lambda self, model, pixels: pixels)  # a lossless stand-in VAE
    return calls


def test_identity_tiles_blend_back_to_the_resized_image_exactly(engine, tiny_model, monkeypatch):
    calls = stand_in_img2img(monkeypatch)
    img = smooth(64, 64)
    r = engine.generate(ureq(init_image=img, model=tiny_model, upscale_mode="diffusion", strength=0.3, steps=10,
                             tile=64, tile_overlap=16, seed=100))  # fmt: skip
    assert np.array_equal(r.images[0], lanczos(img, (128, 128)))  # no seam at all: the tiles were the base's
    n = len(calls)
    assert n == 9  # 3 x 3 tiles of 64 px over 128 px with 16 px overlap
    assert [c[0] for c in calls] == [100 + i for i in range(n)]  # tile i runs with seed + i
    assert [c[1:3] for c in calls] == [(i, n) for i in range(1, n + 1)]
    assert covered([c[3] for c in calls], 128, 128).all()


def test_tiles_that_differ_are_cross_faded_not_seamed(engine, tiny_model, monkeypatch):
    """Tiles coming back 24 levels apart (checkerboard): a plain paste would jump by 24 at the seams; the linear
    ramps spread it over the overlap (at most 24/16 + rounding per pixel)."""
    offsets = {i: 24 * (i % 2) for i in range(1, 10)}
    calls = stand_in_img2img(monkeypatch, offsets)
    img = smooth(64, 64)
    base = lanczos(img, (128, 128)).astype(np.float32)
    r = engine.generate(ureq(init_image=img, model=tiny_model, upscale_mode="diffusion", strength=0.3, steps=10,
                             tile=64, tile_overlap=16))  # fmt: skip
    d = r.images[0].astype(np.float32) - base
    assert np.abs(np.diff(d, axis=1)).max() <= 24 / 16 + 1
    assert np.abs(np.diff(d, axis=0)).max() <= 24 / 16 + 1
    # the same tiles pasted (each over the last) do show the seam: the measure can fail
    paste = base.copy()
    for _, part, _, (x, y, w, h), _ in calls:
        paste[y : y + h, x : x + w] = np.clip(base[y : y + h, x : x + w] + offsets[part], 0, 255)
    assert np.abs(np.diff(paste - base, axis=1)).max() >= 24 - 1


def test_padded_tiles_reach_the_model_at_its_multiple(engine, tiny_model, monkeypatch):
    calls = stand_in_img2img(monkeypatch)
    img = smooth(25, 35)
    r = engine.generate(ureq(init_image=img, model=tiny_model, upscale_mode="diffusion", strength=0.5, scale=1.5))
    assert r.images[0].shape == (38, 52, 3)  # 35 x 1.5 = 52.5 -> 52, 25 x 1.5 = 37.5 -> 38
    assert [c[4] for c in calls] == [(40, 56, 3)]  # one tile, padded to multiples of 8, cut back after
    assert np.array_equal(r.images[0], lanczos(img, (52, 38)))


# ---------------------------------------------------------------- diffusion with the tiny model


@pytest.fixture(scope="module")
def two_tiles(engine, tiny_model):
    """A 32x40 input upscaled 2x by the tiny model (native 64 px): two tiles, one step each."""
    seen = []
    r = engine.generate(ureq(init_image=smooth(40, 32), model=tiny_model, upscale_mode="diffusion", strength=0.5,
                             steps=2, sampler="Euler"), seen.append)  # fmt: skip
    return r, seen


def test_diffusion_output_and_tile_previews(two_tiles):
    r, seen = two_tiles
    assert r.images[0].shape == (80, 64, 3) and r.images[0].dtype == np.uint8
    assert [(s.step, s.total, s.stage, s.part, s.parts) for s in seen] == [(1, 1, "tile", 1, 2), (1, 1, "tile", 2, 2)]
    assert [s.region for s in seen] == [(0, 0, 64, 64), (0, 16, 64, 64)]
    assert seen[1].label() == "tile 2/2, step 1/1"
    assert all(s.preview.shape == (32, 32, 3) and s.preview.dtype == np.uint8 for s in seen)  # its x0, latent grid
    assert all(b.elapsed >= a.elapsed for a, b in zip(seen, seen[1:], strict=False))
    assert r.steps_done == 2 and r.seeds == [7] and r.model_name == "tiny-sd" and r.model_hash
    assert r.latents is None and r.x0 is None  # several tiles: nothing for the timeline
    assert r.request.mode == "upscale" and r.request.width is None and r.request.seed == 7


def test_diffusion_is_reproducible_from_its_seed(engine, tiny_model, two_tiles):
    r, _ = two_tiles
    again = engine.generate(ureq(init_image=smooth(40, 32), model=tiny_model, upscale_mode="diffusion",
                                 strength=0.5, steps=2, sampler="Euler"))  # fmt: skip
    assert np.array_equal(again.images[0], r.images[0])


def test_diffusion_tile_edges_step_no_more_than_inside(two_tiles):
    """On the tiny random model (whose output is busy everywhere) a sanity check: the two tiles overlap on rows
    16..63, and the rows where a hard seam would be step no more than rows inside one tile. The blend itself is
    shown exactly by the stand-in tests above."""
    r, _ = two_tiles
    out = r.images[0].astype(np.float32)
    rows = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2))  # rows[k]: row k -> k + 1
    inside = np.concatenate([rows[2:14], rows[66:]])  # away from where either tile ends
    edges = rows[[15, 16, 62, 63]]  # where a hard seam would be: tile 2's top, tile 1's bottom
    assert edges.max() <= 1.5 * np.percentile(inside, 90) + 1, (edges, np.percentile(inside, 90))


def test_one_tile_keeps_its_steps_for_the_timeline(engine, tiny_model):
    seen = []
    r = engine.generate(ureq(init_image=smooth(32, 32), model=tiny_model, upscale_mode="diffusion", strength=0.5,
                             steps=4, sampler="Euler"), seen.append)  # fmt: skip
    assert r.images[0].shape == (64, 64, 3)
    assert [(s.step, s.total, s.part, s.parts, s.region) for s in seen] == [(1, 2, 1, 1, (0, 0, 64, 64)),
                                                                           (2, 2, 1, 1, (0, 0, 64, 64))]  # fmt: skip
    assert r.latents.shape == (2, 1, 4, 32, 32) and r.x0.shape == r.latents.shape
    dec = engine.decode_latent(tiny_model, r.latents[-1, 0])
    assert np.abs(dec.astype(int) - r.images[0].astype(int)).max() <= 2


def test_diffusion_cancel_during_tile_two(engine, tiny_model, monkeypatch):
    cancel = threading.Event()
    seen = []
    decodes = []
    real_decode = engine.decode
    monkeypatch.setattr(engine, "decode", lambda m, lat: decodes.append(1) or real_decode(m, lat))

    def on_step(info):
        seen.append((info.part, info.step))
        if info.part == 2:
            cancel.set()

    r = engine.generate(ureq(init_image=smooth(40, 32), model=tiny_model, upscale_mode="diffusion", strength=0.5,
                             steps=4), on_step, cancel)  # fmt: skip
    assert r.cancelled and r.images == []
    assert seen == [(1, 1), (1, 2), (2, 1)]  # stopped within one step of tile 2
    assert len(decodes) == 2 and r.steps_done == 3  # tile 1 decoded (and its base's round trip), tile 2 never


def test_diffusion_with_an_inpainting_model(engine, tiny_inpaint_model):
    seen = []
    r = engine.generate(ureq(init_image=smooth(32, 32), model=tiny_inpaint_model, upscale_mode="diffusion",
                             strength=0.5, steps=2), seen.append)  # fmt: skip
    assert r.images[0].shape == (64, 64, 3) and len(seen) == 1


def test_diffusion_with_an_upscaler_model_first(engine, tiny_model, tiny_sr_file, monkeypatch):
    calls = stand_in_img2img(monkeypatch)
    from studio.engine.upscalers import load_upscaler

    img = smooth(20, 24)
    seen = []
    r = engine.generate(ureq(init_image=img, model=tiny_model, upscale_mode="diffusion", upscaler=tiny_sr_file,
                             scale=2, strength=0.5), seen.append)  # fmt: skip
    base = lanczos(load_upscaler(tiny_sr_file).upscale(img), (48, 40))
    assert np.array_equal(r.images[0], base)  # the stand-in img2img keeps what the upscaler made
    assert seen[0].stage == "upscaler" and seen[0].region == (0, 0, 48, 40)
    assert len(calls) == 1


# ---------------------------------------------------------------- the x4 upscaler layout


def test_x4_layout_loads_as_an_upscaler(engine, tiny_x4_model):
    from pathlib import Path

    from studio.engine.loader import read_layout

    lay = read_layout(Path(tiny_x4_model))
    assert (lay.family, lay.layout, lay.unet_in_channels, lay.modes) == ("upscale", "upscale", 7, ("upscale",))
    m = engine.load(tiny_x4_model)
    assert type(m.base).__name__ == "StableDiffusionUpscalePipeline" and m.vae_scale_factor == 4
    assert m.base.unet.config.num_class_embeds and m.base.config.max_noise_level == 350
    assert m.base.vae.config.scaling_factor == pytest.approx(0.08333)
    assert type(m.base.low_res_scheduler).__name__ == "DDPMScheduler"
    assert m.base.scheduler.config.prediction_type == "v_prediction"


@pytest.fixture(scope="module")
def x4_run(engine, tiny_x4_model):
    seen = []
    r = engine.generate(ureq(init_image=smooth(24, 32), model=tiny_x4_model, upscale_mode="latent", scale=4,
                             strength=1.0, steps=3, sampler="DDIM", prompt="a cat"), seen.append)  # fmt: skip
    return r, seen


def test_x4_gives_4x_with_a_preview_per_step(x4_run):
    r, seen = x4_run
    assert r.images[0].shape == (96, 128, 3)
    assert [(s.step, s.total, s.stage, s.part, s.parts) for s in seen] == [(k, 3, "tile", 1, 1) for k in (1, 2, 3)]
    assert {s.region for s in seen} == {(0, 0, 128, 96)}
    assert all(s.preview.shape == (24, 32, 3) for s in seen)  # the x0 estimate on the latent grid (input size)
    assert r.latents.shape == (3, 1, 4, 24, 32) and r.steps_done == 3 and r.model_name == "tiny-x4"


def test_x4_matches_plain_diffusers(engine, tiny_x4_model, x4_run):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_x4_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False)
    # the engine mirrors a margin around the input (to the tiles' multiple: 8 for this U-Net) and cuts it off
    e = edge_margin(math.lcm(2 ** (len(pipe.unet.config.block_out_channels) - 1), 4))
    padded = np.pad(smooth(24, 32), ((e, e), (e, e), (0, 0)), mode="symmetric")
    out = pipe(prompt="a cat", image=Image.fromarray(padded), num_inference_steps=3, guidance_scale=7.0,
               noise_level=20, generator=torch.Generator("cpu").manual_seed(7), output_type="np").images[0]  # fmt: skip
    theirs = (out * 255).round().astype(np.uint8)[4 * e : -4 * e, 4 * e : -4 * e]
    r, _ = x4_run
    assert np.abs(r.images[0].astype(int) - theirs.astype(int)).max() <= 1
    dec = engine.decode_latent(tiny_x4_model, r.latents[-1, 0])  # the timeline's "decode this step"
    # the kept latents are the picture's part only (the margin cut off): decoded alone, without the margin's
    # context, the last step is near the result (this random VAE's attention reads the whole latent)
    assert dec.shape == r.images[0].shape
    first = engine.decode_latent(tiny_x4_model, r.latents[0, 0])
    err = np.abs(dec.astype(int) - r.images[0].astype(int)).mean()
    assert err < np.abs(first.astype(int) - r.images[0].astype(int)).mean() / 2


def test_x4_tiled_has_the_untiled_size_and_partial_strength(engine, tiny_x4_model):
    seen = []
    r = engine.generate(ureq(init_image=smooth(24, 32), model=tiny_x4_model, upscale_mode="latent", scale=2,
                             tile=64, strength=0.5, steps=2), seen.append)  # fmt: skip
    assert r.images[0].shape == (48, 64, 3)  # the 4x result, Lanczos to 2x
    n = seen[0].parts
    assert n > 1 and [(s.step, s.total, s.part) for s in seen] == [(1, 1, i) for i in range(1, n + 1)]
    assert covered([s.region for s in seen], 64, 48).all()
    assert r.latents is None and r.steps_done == n


def test_x4_below_strength_1_starts_from_the_encoded_lanczos_image(engine, tiny_x4_model, x4_run):
    """strength 0.1 of 10 steps: one step from the 4x Lanczos image, encoded by the upscaler's VAE and noised a
    little; its latent stays near that encoding, where a run from pure noise (strength 1) lands anywhere."""
    import torch

    img = smooth(24, 32)
    seen = []
    r = engine.generate(ureq(init_image=img, model=tiny_x4_model, upscale_mode="latent", scale=4, strength=0.1,
                             steps=10, sampler="DDIM"), seen.append)  # fmt: skip
    assert [(s.step, s.total) for s in seen] == [(1, 1)] and r.latents.shape == (1, 1, 4, 24, 32)
    vae = engine.load(tiny_x4_model).vae
    x = torch.from_numpy(lanczos(img, (128, 96)).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        encoded = (vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)[0].numpy()
    near = np.abs(r.latents[-1, 0].astype(np.float32) - encoded).mean()
    full, _ = x4_run
    far = np.abs(full.latents[-1, 0].astype(np.float32) - encoded).mean()
    assert near < far / 4, (near, far)


def test_x4_cancel_mid_run(engine, tiny_x4_model):
    cancel = threading.Event()
    seen = []

    def on_step(info):
        seen.append(info.step)
        if info.step == 2:
            cancel.set()

    r = engine.generate(ureq(init_image=smooth(16, 16), model=tiny_x4_model, upscale_mode="latent", strength=1.0,
                             steps=6), on_step, cancel)  # fmt: skip
    assert r.cancelled and r.images == [] and seen == [1, 2]


# ---------------------------------------------------------------- refusals, before any work


def test_layout_refusals_read_no_weights(engine, tiny_model, tiny_x4_model):
    loads = engine.loads
    engine.unload()
    with pytest.raises(RequestError, match="needs an x4 upscaler model"):
        engine.generate(ureq(model=tiny_model, upscale_mode="latent"))
    with pytest.raises(RequestError, match="x4 upscaler model: it only upscales"):
        engine.generate(ureq(model=tiny_x4_model, upscale_mode="diffusion", strength=0.5))
    with pytest.raises(RequestError, match="tiny-x4 is an x4 upscaler model.*txt2img"):
        engine.generate(GenerateRequest.from_fields(prompt="x", model=tiny_x4_model, steps=1, width=32, height=32))
    assert engine.loads == loads


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(scale=9), "between 1 and 8"),
        (dict(scale=0.5), "between 1 and 8"),
        (dict(init_image=np.zeros((2000, 1100, 3), np.uint8), scale=5), "too large"),
        (dict(width=9000, height=64), "out of range"),
        (dict(init_image=None), "needs an input image"),
        (dict(upscale_mode="model"), "needs an upscaler model"),
        (dict(upscale_mode="sideways"), "Unknown upscale mode"),
        (dict(upscale_mode="diffusion", strength=0.0), "Denoising strength"),
        (dict(upscale_mode="diffusion", strength=0.3, steps=2), "run no step"),
        (dict(tile=32), "tile size"),
    ],
)
def test_bad_requests_are_refused(engine, tiny_model, kw, message):
    loads = engine.loads
    with pytest.raises(RequestError, match=message):
        engine.generate(ureq(model=tiny_model, **kw))
    assert engine.loads == loads


def test_visible_part_of_a_tile_in_the_mirrored_margin():
    assert edge_margin(4) == 4 and edge_margin(8) == 8 and edge_margin(1) == 4 and edge_margin(3) == 6
    # a 10 x 6 picture padded by 4: tiles over the 18 x 14 padded picture
    assert visible_part((0, 0, 8, 8), 4, 10, 6) == (4, 4, 4, 4)
    assert visible_part((8, 6, 10, 8), 4, 10, 6) == (8, 6, 6, 4)
    assert visible_part((0, 0, 4, 14), 4, 10, 6) is None  # all margin
    assert visible_part((4, 4, 10, 6), 4, 10, 6) == (4, 4, 10, 6)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_x4_below_strength_1_runs_every_sampler_to_a_finite_end(engine, tiny_x4_model, sampler):
    """The tail of the steps only: multistep solvers find their last step by the scheduler's whole list (a cut
    list made DPM++ 2M's last step second-order at sigma 0: inf, a black picture)."""
    seen = []
    r = engine.generate(ureq(init_image=smooth(24, 32), model=tiny_x4_model, upscale_mode="latent", scale=4,
                             strength=0.5, steps=6, sampler=sampler), seen.append)  # fmt: skip
    # PLMS's list holds one call more than its steps (its warm-up), and the cut keeps it: 4 previews of "3"
    assert [s.step for s in seen] == ([1, 2, 3, 4] if sampler == "PLMS" else [1, 2, 3])
    assert np.isfinite(r.latents.astype(np.float32)).all() and np.isfinite(r.x0.astype(np.float32)).all()
    assert r.images[0].std() > 5  # not the black of NaN cast to uint8


def test_controls_on_an_upscale_that_cannot_follow_them_are_dropped_and_said(engine):
    from studio.core.control import ControlSpec

    lines = np.zeros((16, 16, 3), np.uint8)
    lines[4:12, 4] = 255
    ctrl = ControlSpec(model="some-controlnet", image=lines, module="scribble")
    res = engine.generate(ureq(controls=(ctrl,)))
    assert res.images[0].shape == (48, 64, 3)
    assert res.request.controls == ()  # its PNG must not claim a ControlNet
    assert any("Control layers were not used: a resize" in n for n in res.notes)
