"""Upscaling (mode "upscale"), called by Engine.generate: resize, an upscaler model, tiled diffusion, the x4
latent upscaler.

The output size is ``request.upscale_size()`` (the input times ``scale``, or ``width x height``). Methods
(``request.upscale.method``):

- ``resize``: Lanczos to the output size. No model, no steps, no previews.
- ``model``: an upscaler model file (``studio.engine.upscalers``: ESRGAN, SwinIR... through spandrel), in the
  upscaler's own tiles, then Lanczos to the exact output size where the model's factor differs. One StepInfo
  per finished tile: stage "tile", part = the tile's number, parts = the tiles, step = total = 0 (no sampler
  steps), preview = the tile's upscaled pixels, region = where they go in the output.
- ``diffusion``: resize to the output size (Lanczos, or the upscaler model when ``upscaler`` is set: its
  tiles report stage "upscaler"), then img2img at ``strength`` with the loaded model (txt2img or 9-channel
  inpaint) in overlapping tiles of the model's working size (its native size unless ``tile`` is set; the
  overlap ``tile_overlap`` or an eighth of the tile), blended by ``tiling.TileBlender``'s linear ramps so no
  seam shows. When there are several tiles, each tile adds only its detail to the base
  (``transfer_detail``): what the sampler changed, measured against the tile's own VAE round trip (so the VAE's
  blur and a tile's colour drift cancel: the built-in VAE turns a flat grey tile yellow), above a Gaussian of
  half the upscale factor (the base holds all the input knows below it), and only where it steepens: away from
  the local mean, within the base's local range (the half factor, rounded up, each way), so edges sharpen and
  a flat area stays exactly the base's (no halo, no new shape). One extra VAE encode and decode per tile. A
  tile's output used to be its decoded img2img (17.8 dB against the truth where Lanczos has 40 on the built-in
  model: shapes erased and invented per tile), then its low frequencies replaced by the base's (36.6 dB, edges
  softer than Lanczos); now 40.2 dB, edges sharper than Lanczos (``benchmarks/bench_upscale_truth.py``). With
  ``keep_composition`` off, each tile is the previous rule (``keep_low_frequencies``): its img2img output with
  only its low frequencies replaced by the base's, so the model paints new texture (grain, pores) into flat
  areas, as A1111's "SD upscale" does, on the base's colours and composition. A run
  of one tile is the plain img2img its kept steps decode to. Each tile is its own img2img run: its steps go out
  as StepInfo(step, total, elapsed, the tile's x0 preview, stage="tile", part=i, parts=n, region=the tile in
  output px).
- ``latent``: a model of the SD x4 upscaler layout (``StableDiffusionUpscalePipeline``): the low-res input is
  the condition (noised to the level in the model folder's ``studio.json``, else diffusers' 20; guidance only
  when the U-Net reads text: without cross-attention it would only double the work), cut into input tiles
  of the U-Net's sample size (128 px for stabilityai's model: 512 px out; ``tile``/``tile_overlap`` are
  output px, divided by 4), each 4x'd, blended in the 4x image, which is Lanczos-resized to the output size
  when ``scale`` is not 4. ``strength`` 1 is the pipeline as diffusers runs it (from pure noise); below 1 the
  4x Lanczos image, encoded by the upscaler's VAE, is noised to that level and only the last
  ``int(steps * strength)`` steps run (img2img's rule), so the input's composition and colours are kept.
  Steps as for diffusion. A model predicting the clean latent gets any sampler: the engine hands the sampler
  the noise each prediction implies (``_x0_as_epsilon``). The input is mirrored ``EDGE_MARGIN`` px (4, rounded
  up to the tiles' multiple) beyond its edges, and the margin cut off the result: the VAE decoder pads with
  zeros, which otherwise greys the outermost output pixels (measured on the built-in latent upscaler, 16
  held-out scenes: +1.6 dB for its untrained, interpolating start). The margin is extra to the tile size,
  so a picture that fits a tile is still one tile.

Seeds: tile i (0-based, row by row) runs with ``seed + i`` (mod 2**32), so tiles draw different noise (one
seed for all would print the same noise pattern into every tile) and the run is reproducible from its seed.
``GenerateResult.seeds`` is ``[seed]``. A resize or an upscaler model draws no noise: its request's seed is
None and its ``seeds`` are ``[]`` (no seed in its metadata or file name).

The step timeline: a run of one tile (the output fits in one working tile) keeps its latents and x0
estimates as any run does (``result.latents``/``x0``: the whole image, the padding and margin cut off). A run
of several tiles keeps none (``None``): the live previews, placed by ``region``, showed it forming; the
timeline gets no steps.

The result's request is the request with the seed filled in and ``batch`` 1 (an upscale makes one image);
width/height stay as given (``None`` for an upscale by ``scale``): the image has the output size.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import EngineError, ModelError, RequestError, first_line, is_out_of_memory
from ..core.requests import MAX_SEED, GenerateRequest, GenerateResult, StepInfo
from ..core.tiling import Rect, TileBlender, tile_grid
from .steps import Cancelled, StepTracker, crop_fractions

X4_NOISE_LEVEL = 20  # diffusers' default noise_level of the x4 upscaler's condition (at most max_noise_level 350)
X4_SETTINGS_FILE = "studio.json"  # in a model folder: {"noise_level": N}, the level that model is meant for


def x4_noise_level(folder: Path) -> int:
    """The condition's noise level for the x4 model in ``folder``: its ``studio.json`` says (the built-in
    upscaler is used on a clean condition), else diffusers' default."""
    import json

    try:
        level = json.loads((Path(folder) / X4_SETTINGS_FILE).read_text(encoding="utf-8")).get("noise_level")
    except (OSError, ValueError, AttributeError):
        return X4_NOISE_LEVEL
    return int(level) if isinstance(level, int) and 0 <= level <= 350 else X4_NOISE_LEVEL


def reads_text(unet_config) -> bool:
    """Whether a UNet has cross-attention: without it, guidance changes nothing and only doubles the work."""
    blocks = [*unet_config.down_block_types, *unet_config.up_block_types, unet_config.mid_block_type or ""]
    return any("CrossAttn" in b for b in blocks)


def lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size (width, height), Lanczos; the same array when the size already matches."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.LANCZOS), np.uint8)


def transfer_detail(diffused: np.ndarray, round_trip: np.ndarray, base: np.ndarray, sigma: float,
                    radius: int) -> np.ndarray:  # fmt: skip
    """The detail a diffusion tile adds, put on the base it started from (HxWx3, any numeric type -> uint8).

    - The detail is what the sampler changed, seen through the same VAE: ``diffused - round_trip`` (the base's
      own encode/decode). Whatever the VAE alone does to the tile (its blur, a flat tile's colour drift: the
      built-in VAE turns a flat grey tile yellow) is in both and cancels.
    - Only its high frequencies count (minus a Gaussian blur of ``sigma`` px): below them the base already
      holds all the input knows.
    - It may only steepen: a pixel takes its detail where that moves it away from the mean of its
      ``2 radius + 1`` px square (further to its side of an edge), never towards it (a blur), and the result stays
      inside that square's range in the base (no halo, no overshoot). A flat area stays exactly the base's: no new
      blob or shape. Measured on the built-in model (whose detail is barely better than noise: a control with
      random detail of the same size scores 0.1 dB lower) this is what turns a loss against Lanczos into a gain.
    """
    from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter, uniform_filter

    b = base.astype(np.float32)
    detail = diffused.astype(np.float32) - round_trip.astype(np.float32)
    if sigma > 0:
        detail -= gaussian_filter(detail, (sigma, sigma, 0), mode="reflect")
    k = (2 * radius + 1, 2 * radius + 1, 1)
    side = b - uniform_filter(b, k, mode="nearest")  # which side of the local mean each pixel is on
    out = b + np.where(detail * side > 0, detail, 0.0)
    out = np.clip(out, minimum_filter(b, k, mode="nearest"), maximum_filter(b, k, mode="nearest"))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def keep_low_frequencies(image: np.ndarray, base: np.ndarray, sigma: float) -> np.ndarray:
    """`image` with its low frequencies (a Gaussian blur of `sigma` px) replaced by `base`'s: the detail a
    diffusion tile adds, on the colours and shapes of the base it started from (``keep_composition`` off)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return image
    a, b = image.astype(np.float32), base.astype(np.float32)
    s = (sigma, sigma, 0)
    out = b + (a - gaussian_filter(a, s, mode="reflect")) - (b - gaussian_filter(b, s, mode="reflect"))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def auto_overlap(tile: int) -> int:
    """The default overlap of diffusion tiles: an eighth of the tile (64 px for 512), a multiple of 8, >= 8."""
    return max(8, (tile // 8) // 8 * 8)


def tile_seed(seed: int, i: int) -> int:
    return (seed + i) % (MAX_SEED + 1)


def scale_rect(rect: Rect, sx: float, sy: float) -> Rect:
    """A rectangle in one image -> the same area in an image sx, sy times the size (edges rounded)."""
    x, y, w, h = rect
    x0, y0 = round(x * sx), round(y * sy)
    x1, y1 = round((x + w) * sx), round((y + h) * sy)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def pad_to(image: np.ndarray, multiple: int) -> np.ndarray:
    """Pad on the right and bottom (edge pixels repeated) to multiples of `multiple`."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")


EDGE_MARGIN = 4  # low-res px of mirrored context around the x4 upscaler's input (16 output px)


def edge_margin(multiple: int) -> int:
    """EDGE_MARGIN rounded up to the tiles' multiple (the margin keeps tile positions on it)."""
    return -(-EDGE_MARGIN // multiple) * multiple


def visible_part(rect: Rect, margin: int, width: int, height: int) -> Rect | None:
    """The part of ``rect`` (in a picture padded by ``margin`` on every side) that is the ``width x height``
    picture's, in the padded coordinates; None when it is all margin."""
    x, y, w, h = rect
    x0, y0 = max(x, margin), max(y, margin)
    x1, y1 = min(x + w, margin + width), min(y + h, margin + height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def diffusion_tiles(size: tuple[int, int], tile: int, overlap: int, multiple: int, px: int = 1) -> list[Rect]:
    """The tiles of an upscale (see studio.core.tiling.tile_grid); RequestError when the overlap is more than
    half the tile (`px`: output px per unit, for the message: 4 for the x4 upscaler's input tiles)."""
    if overlap * 2 > tile:
        raise RequestError(
            f"The tile overlap {overlap * px} px leaves no room in a {tile * px} px tile: use at most {tile * px // 2} px"
        )
    try:
        return tile_grid(size[0], size[1], tile, overlap, multiple)
    except ValueError as e:
        raise RequestError(
            f"The tile overlap {overlap * px} px leaves no room in a {tile * px} px tile: use less overlap"
        ) from e


SAMPLED = ("diffusion", "latent")  # the methods that run a sampler (steps, a seed)


def run(engine, request: GenerateRequest, on_step, cancel, t_start: float) -> GenerateResult:
    """One upscale on `engine` (the caller holds its lock and has validated the request)."""
    mode = request.upscale.method
    notes = []
    if request.controls and mode != "diffusion":  # only the loaded model's tiles can follow a ControlNet
        what = {"resize": "a resize", "model": "an upscaler model", "latent": "the x4 latent upscaler"}[mode]
        notes.append(f"Control layers were not used: {what} does not follow them (only the diffusion upscale does)")
        request = request.replace(controls=())  # nor does its PNG say so
    if mode in ("diffusion", "latent"):
        engine.check_family(request.model, "upscale", mode)  # from the json files: nothing loaded to refuse
        _check_steps(request)
    if request.upscale.upscaler and mode in ("model", "diffusion") and not Path(request.upscale.upscaler).expanduser().exists():
        raise ModelError(f"Upscaler not found: {request.upscale.upscaler}")
    # Only a sampled upscale draws noise: a resize or an upscaler model has no seed to report
    seed = (request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)) if mode in SAMPLED else None
    job = _Upscale(engine, request.replace(seed=seed, batch=1), on_step, cancel, t_start)
    try:
        if mode == "resize":
            image = lanczos(job.image, job.size)
        elif mode == "model":
            image = job.upscaler_pass(job.image, stage="tile")
        elif mode == "diffusion":
            base = job.upscaler_pass(job.image, stage="upscaler") if request.upscale.upscaler else lanczos(job.image, job.size)
            image = job.diffusion(base)
        else:
            image = job.latent()
    except Cancelled:
        return job.result([], cancelled=True)
    except EngineError:
        raise
    except MemoryError as e:
        raise EngineError(engine.out_of_memory()) from e
    except Exception as e:  # noqa: BLE001 - one readable line for the artist; the chain keeps the cause
        if is_out_of_memory(e):  # torch's OutOfMemoryError, or the CPU allocator's RuntimeError
            raise EngineError(engine.out_of_memory()) from e
        raise EngineError(f"Upscale failed: {first_line(e)}") from e
    if job.cancelled():
        return job.result([], cancelled=True)
    result = job.result([image])
    result.notes.extend(notes)
    return result


def _check_steps(r: GenerateRequest) -> None:
    if r.strength < 1.0 and int(r.steps * r.strength) < 1:
        raise RequestError(
            f"{r.steps} steps at denoising strength {r.strength:g} run no step: use more steps or a higher strength"
        )


class _Upscale:
    """One upscale run: the request, the output size, the model when one is needed, what was done."""

    def __init__(self, engine, used: GenerateRequest, on_step, cancel, t_start: float):
        self.engine = engine
        self.r = used
        self.on_step = on_step
        self.cancel = cancel
        self.t0 = t_start
        self.image = np.array(used.init_image, dtype=np.uint8, copy=True)  # writable: torch.from_numpy takes it
        self.size = used.upscale_size()
        self.model = None
        self.t_loaded = t_start
        self.sample_s = 0.0
        self.decode_s = 0.0
        self.preview_s = 0.0
        self.steps_done = 0
        self.kept: tuple[np.ndarray, np.ndarray] | None = None  # (latents, x0) of a one-tile run

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def result(self, images: list[np.ndarray], cancelled: bool = False) -> GenerateResult:
        total = time.perf_counter() - self.t0
        timings = {"load": self.t_loaded - self.t0, "sample": self.sample_s, "decode": self.decode_s,
                   "preview": self.preview_s, "total": total}  # fmt: skip
        kept = self.kept if not cancelled else None
        return GenerateResult(
            images=images,
            request=self.r,
            seeds=[int(self.r.seed)] if self.r.seed is not None else [],
            cancelled=cancelled,
            latents=kept[0] if kept else None,
            x0=kept[1] if kept else None,
            model_name=self.model.name if self.model is not None else "",
            model_hash=self.model.hash if self.model is not None else "",
            timings=timings,
            steps_done=self.steps_done,
            extra_params=dict(getattr(self, "extra", {})),
        )

    def load(self):
        self.model = self.engine.load(self.r.model, self.r.prediction)
        self.t_loaded = time.perf_counter()
        return self.model

    def send(self, info: StepInfo) -> None:
        if self.on_step is not None:
            self.on_step(info)

    # -- an upscaler model ------------------------------------------------------------------------------
    def upscaler_pass(self, image: np.ndarray, stage: str) -> np.ndarray:
        """The upscaler model over `image` in its tiles, then Lanczos to the output size; a StepInfo per tile."""
        from .upscalers import UpscaleCancelled

        up = self.engine.upscaler(self.r.upscale.upscaler)
        self.t_loaded = time.perf_counter()
        scale = max(1, int(getattr(up, "scale", 1) or 1))
        ih, iw = image.shape[:2]
        sx, sy = self.size[0] / (iw * scale), self.size[1] / (ih * scale)
        # The request's tile and overlap are output px; the upscaler cuts its input.
        tile = self.r.upscale.tile // scale if self.r.upscale.tile and stage == "tile" else 0
        overlap = self.r.upscale.tile_overlap // scale if self.r.upscale.tile_overlap and stage == "tile" else 0
        want_preview = self.r.preview != "none"

        def on_tile(part: int, parts: int, rect: Rect, pixels: np.ndarray | None) -> None:
            # studio.engine.upscalers: after tile `part` of `parts`, its rectangle in the upscaler's output px.
            if self.cancelled():
                raise Cancelled
            preview = np.asarray(pixels, np.uint8) if want_preview and pixels is not None else None
            region = scale_rect(tuple(int(v) for v in rect), sx, sy)
            # step 0 of total 0: the upscaler has tiles, no sampler steps (StepInfo.label: "tile 3/9")
            self.send(StepInfo(0, 0, time.perf_counter() - self.t0, preview, stage=stage, part=part, parts=parts,
                               region=region))  # fmt: skip

        t = time.perf_counter()
        try:
            out = up.upscale(image, tile, overlap, on_tile, self.cancel)
        except UpscaleCancelled as e:
            raise Cancelled from e
        finally:
            self.sample_s += time.perf_counter() - t
        if out is None or self.cancelled():
            raise Cancelled
        return lanczos(np.asarray(out, np.uint8), self.size)

    # -- tiled img2img ------------------------------------------------------------------------------------
    def diffusion(self, base: np.ndarray) -> np.ndarray:
        """img2img at the request's strength over `base` (already the output size) in blended tiles."""
        from . import runaddons

        model = self.load()
        self.extra = runaddons.prepare(model, self.r, self.engine.folders)
        m = model.size_multiple
        tile = self.r.upscale.tile or max(model.native_size)
        tile = max(m, tile - tile % m)
        overlap = self.r.upscale.tile_overlap or auto_overlap(tile)
        rects = diffusion_tiles(self.size, tile, overlap, m)
        blender = TileBlender(self.size[0], self.size[1], 3, overlap)
        embeds = None
        for i, rect in enumerate(rects):
            x, y, w, h = rect
            padded = pad_to(base[y : y + h, x : x + w], m)
            ph, pw = padded.shape[:2]
            s = tile_seed(int(self.r.seed), i)
            tile_req = self.r.replace(mode="img2img", init_image=padded, width=pw, height=ph, seed=s, batch=1)
            if tile_req.controls:  # each tile sees its own part of the control images (a tile ControlNet's input)
                from .controlnet import control_region

                tile_req = tile_req.replace(controls=tuple(
                    c.replace(image=control_region(c.image, self.size, rect, m)) for c in tile_req.controls))
            part = dict(stage="tile", part=i + 1, parts=len(rects), region=rect)
            pipe, kwargs = self.engine.pipeline_call(model, tile_req, [s], embeds=embeds)
            embeds = {k: v for k, v in kwargs.items() if k.endswith("prompt_embeds")}  # one encoding per run
            pixels = self._sample(model, pipe, kwargs, tile_req, s, part, keep=len(rects) == 1,
                                  crop=(0.0, 0.0, h / ph, w / pw))  # fmt: skip
            if len(rects) > 1 and not self.r.upscale.keep_composition:  # the tile's texture on the base's colours
                pixels = keep_low_frequencies(pixels[:h, :w], base[y : y + h, x : x + w], self.low_pass_sigma())
            elif len(rects) > 1:  # a tile decoded without its surroundings drifts (one tile is plain img2img)
                pixels = transfer_detail(pixels, self.round_trip(model, padded), padded, self.low_pass_sigma(),
                                         self.clamp_radius())  # fmt: skip
            blender.add(rect, pixels[:h, :w])
        return blender.result()

    def round_trip(self, model, pixels: np.ndarray) -> np.ndarray:
        """`pixels` (HxWx3 uint8, the model's multiple) through the model's VAE: encoded (the posterior's mode, as
        the img2img pipelines scale it) and decoded as the engine decodes a run."""
        import torch

        vae = model.vae
        t = time.perf_counter()
        x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)  # as the pipelines encode
        try:
            with torch.inference_mode():
                if upcast:
                    vae.to(torch.float32)
                enc = vae.encode(x.to(model.device, vae.dtype))
                # a tiny autoencoder (TAESD) gives its latents; a KL VAE its posterior
                z = (enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents).float()
                mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
                if mean is not None and std is not None:  # the inverse of Engine.decode's scaling
                    z = (z - torch.tensor(mean, device=z.device).view(1, -1, 1, 1)) / torch.tensor(
                        std, device=z.device).view(1, -1, 1, 1)  # fmt: skip
                z = z * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(torch.float16)
        image = self.engine.decode(model, z)[0]
        self.decode_s += time.perf_counter() - t
        return image

    def low_pass_sigma(self) -> float:
        """The Gaussian blur (output px) below which a diffusion tile keeps the base's frequencies: half the upscale
        factor puts the cross-over near the input's Nyquist frequency (its pixels are `factor` output px apart), so
        the base gives all it knows and the model only what lies beyond it."""
        ih, iw = self.image.shape[:2]
        factor = max(self.size[0] / iw, self.size[1] / ih)
        return max(0.5, factor / 2)

    def clamp_radius(self) -> int:
        """The neighbourhood (output px each way) whose range a tile's detail stays in: half the upscale factor,
        rounded up (1 px at x2, 2 at x4), about the width Lanczos spreads an input edge over."""
        ih, iw = self.image.shape[:2]
        factor = max(self.size[0] / iw, self.size[1] / ih)
        return max(1, math.ceil(factor / 2))

    def _sample(self, model, pipe, kwargs: dict, req: GenerateRequest, seed: int, part: dict, keep: bool,
                crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0), legacy: bool = False,
                total: int | None = None, patches=None) -> np.ndarray:  # fmt: skip
        """One pipeline call with the step tracker (previews, kept steps, cancel) -> the decoded image.

        crop: the (top, left, bottom, right) fractions of the tile that are the picture's (previews and kept
        steps show only those); legacy: the pipeline has only the legacy `callback(step, t, latents)` (the x4
        upscaler)."""
        import torch

        from .schedulers import build_scheduler

        if self.cancelled():  # set while the model loaded, the prompt was encoded or the last tile decoded
            raise Cancelled
        scheduler = build_scheduler(model.scheduler_config, req.sampler, req.schedule, seed)
        x0_model = scheduler.config.get("prediction_type") == "sample"
        if x0_model:
            # half of diffusers' samplers (Euler a, DPM2, PLMS...) refuse clean-latent predictions: they all get
            # the epsilon those predictions imply instead (the same sampling, exactly, for those that accept both)
            scheduler = type(scheduler).from_config(scheduler.config, prediction_type="epsilon")
        pipe.scheduler = scheduler
        tracker = StepTracker(scheduler, req, model, self.on_step, self.cancel, self.t0, total=total, part=part,
                              preview_crop=crop)  # fmt: skip
        t = time.perf_counter()
        try:
            with torch.inference_mode(), (patches(pipe, scheduler) if patches else contextlib.nullcontext()), \
                    (_x0_as_epsilon(pipe.unet, scheduler) if x0_model else contextlib.nullcontext()):
                if legacy:
                    latents = pipe(**kwargs, callback=tracker.legacy_callback, callback_steps=1).images
                else:
                    latents = pipe(**kwargs, callback_on_step_end=tracker.callback).images
        finally:
            tracker.restore()
            self.steps_done += len(tracker.latents)
            self.preview_s += tracker.preview_s
            self.sample_s += time.perf_counter() - t
        if self.cancelled():
            raise Cancelled
        if keep and tracker.latents:
            self.kept = (crop_fractions(np.stack(tracker.latents), crop), crop_fractions(np.stack(tracker.x0), crop))
        t = time.perf_counter()
        image = self.engine.decode(model, latents)[0]
        self.decode_s += time.perf_counter() - t
        return image

    # -- the x4 latent upscaler -----------------------------------------------------------------------------
    def latent(self) -> np.ndarray:
        import torch

        model = self.load()
        f = model.vae_scale_factor  # 4: the latents have the low-res image's size, the VAE decodes 4x
        unet = model.base.unet.config
        sample = unet.sample_size[0] if isinstance(unet.sample_size, (list, tuple)) else unet.sample_size
        m = math.lcm(2 ** (len(unet.block_out_channels) - 1), f)  # the U-Net's and the image processor's multiple
        tile = self.r.upscale.tile // f if self.r.upscale.tile else int(sample)
        tile = max(m, tile - tile % m)
        overlap = self.r.upscale.tile_overlap // f if self.r.upscale.tile_overlap else max(m, (tile // 8) // m * m)
        # A mirrored margin around the picture: the networks pad with zeros, which greys and blurs the outermost
        # pixels of whatever they are given; the margin takes that, and is cut off (a tile's margin is extra to it)
        e = edge_margin(m)
        ih, iw = self.image.shape[:2]
        source = np.pad(self.image, ((e, e), (e, e), (0, 0)), mode="symmetric")
        rects = diffusion_tiles((iw + 2 * e, ih + 2 * e), tile + 2 * e, overlap, m, px=f)
        rects = [(r, v) for r in rects if (v := visible_part(r, e, iw, ih)) is not None]
        big = (iw * f, ih * f)
        blender = TileBlender(big[0], big[1], 3, overlap * f)
        sx, sy = self.size[0] / big[0], self.size[1] / big[1]
        pipe = model.pipe("upscale")
        noise_level = x4_noise_level(model.layout.path)
        guidance = self.r.cfg if reads_text(unet) else 1.0
        strength = float(self.r.strength)
        n = self.r.steps
        total = n if strength >= 1.0 else min(int(n * strength), n)
        for i, (rect, (vx, vy, vw, vh)) in enumerate(rects):
            x, y, w, h = rect
            padded = pad_to(source[y : y + h, x : x + w], m)
            ph, pw = padded.shape[:2]
            s = tile_seed(int(self.r.seed), i)
            kwargs: dict = {
                "prompt": self.r.prompt,
                "negative_prompt": self.r.negative_prompt or None,
                "image": Image.fromarray(np.ascontiguousarray(padded)),
                "num_inference_steps": n,
                "guidance_scale": guidance,
                "noise_level": noise_level,
                "generator": torch.Generator("cpu").manual_seed(s),
                "output_type": "latent",
            }
            if self.r.clip_skip > 1:
                kwargs["clip_skip"] = self.r.clip_skip - 1
            patches = None
            if strength < 1.0:
                patches = _PartialDenoise(model, padded, n, strength, f).patches
            out4 = ((vx - e) * f, (vy - e) * f, vw * f, vh * f)  # the visible part, in output px before resizing
            part = dict(stage="tile", part=i + 1, parts=len(rects), region=scale_rect(out4, sx, sy))
            ox, oy = vx - x, vy - y  # the visible part inside the padded tile, in latent px
            crop = (oy / ph, ox / pw, (oy + vh) / ph, (ox + vw) / pw)
            pixels = self._sample(model, pipe, kwargs, self.r, s, part, keep=len(rects) == 1, crop=crop, legacy=True,
                                  total=total, patches=patches)  # fmt: skip
            blender.add(out4, pixels[oy * f : (oy + vh) * f, ox * f : (ox + vw) * f])
        return lanczos(blender.result(), self.size)


@contextlib.contextmanager
def _x0_as_epsilon(unet, scheduler):
    """For the length of one call, ``unet`` (which predicts the clean latent) returns the noise that
    prediction implies at the timestep it is called with: eps = (x_t - sqrt(a) x0) / sqrt(1 - a), with
    x_t its own (scaled) input and a the schedule's alpha-bar, interpolated for fractional timesteps."""
    import torch

    ac = scheduler.alphas_cumprod.to(torch.float64)
    forward = unet.forward

    def eps_forward(sample, timestep, *args, **kwargs):
        out = forward(sample, timestep, *args, **kwargs)
        x0 = out[0] if isinstance(out, tuple) else out.sample
        t = min(max(float(torch.as_tensor(timestep).reshape(-1)[0]), 0.0), len(ac) - 1.0)
        lo = int(t)
        hi = min(lo + 1, len(ac) - 1)
        a = float(ac[lo] + (ac[hi] - ac[lo]) * (t - lo))
        x_t = sample[:, : x0.shape[1]]
        eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1.0 - a)
        if isinstance(out, tuple):
            return (eps, *out[1:])
        out.sample = eps
        return out

    unet.forward = eps_forward  # an instance attribute: only this call
    try:
        yield
    finally:
        unet.__dict__.pop("forward", None)


class _PartialDenoise:
    """img2img for the x4 upscaler pipeline, which has no strength: for the length of one call, the scheduler's
    timesteps are cut to the last int(steps * strength) (as diffusers' img2img get_timesteps does), and the
    pipeline's starting latents are the 4x Lanczos image, encoded by the upscaler's VAE, noised to the first of
    them (instead of pure noise)."""

    def __init__(self, model, low_res: np.ndarray, steps: int, strength: float, factor: int):
        self.model = model
        self.low_res = low_res
        self.steps = steps
        self.strength = strength
        self.factor = factor

    @contextlib.contextmanager
    def patches(self, pipe, scheduler):
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        orig_set = scheduler.set_timesteps
        steps, strength = self.steps, self.strength
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)

        held: dict = {}

        def set_timesteps(*args, **kwargs):
            # the pipeline reads scheduler.timesteps once, right after this: it gets the tail. The scheduler
            # gets its whole list back in prepare_latents (next), as diffusers' img2img leaves it: multistep
            # solvers find their last step by len(timesteps), and a short list made DPM++ 2M's final
            # second-order step divide by zero (an all-black picture)
            orig_set(*args, **kwargs)
            order = getattr(scheduler, "order", 1)
            held["all"] = scheduler.timesteps
            held["tail"] = scheduler.timesteps = scheduler.timesteps[t_start * order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * order)

        vae = self.model.vae
        h, w = self.low_res.shape[:2]
        big = lanczos(self.low_res, (w * self.factor, h * self.factor))

        def prepare_latents(batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
            x = torch.from_numpy(big.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            # an fp16 VAE that asks for it encodes in fp32, as the pipelines decode (force_upcast)
            upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
            if upcast:
                vae.to(torch.float32)
            try:
                x = x.to(device=device, dtype=vae.dtype)
                init = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
            finally:
                if upcast:
                    vae.to(torch.float16)
            init = init.to(dtype).repeat(batch_size, 1, 1, 1)
            noise = randn_tensor(init.shape, generator=generator, device=torch.device(device), dtype=dtype)
            first = held.get("tail", scheduler.timesteps)[:1]
            if "all" in held and hasattr(scheduler, "set_begin_index"):
                scheduler.timesteps = held["all"]  # the loop has its tail; step_index starts at the begin index
            return scheduler.add_noise(init, noise, first.repeat(batch_size))

        scheduler.set_timesteps = set_timesteps  # instance attributes: only this call's objects are patched
        pipe.prepare_latents = prepare_latents
        try:
            yield
        finally:
            scheduler.__dict__.pop("set_timesteps", None)
            pipe.__dict__.pop("prepare_latents", None)
