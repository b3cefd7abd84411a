"""A1111's variation seeds, the torch-free part: which seed and which variation seed each image of a batch uses.

A1111 (modules/processing.py, process_images_inner): with a variation strength of 0 image i of a batch uses
seed + i; with a strength above 0 every image uses the seed itself and image i the variation seed subseed + i,
so a batch is a set of variations of one picture. The noise itself (slerp, the resized seed) is made by
studio.engine.variation.
"""

from __future__ import annotations

from .requests import MAX_SEED, GenerateRequest


def varies(request: GenerateRequest) -> bool:
    """Whether the request's first noise differs from its seed's own: a variation strength above 0, or a seed
    resized from another size (A1111 applies either only when set: both sizes above 0)."""
    return request.subseed_strength > 0 or resized_from(request) is not None


def resized_from(request: GenerateRequest) -> tuple[int, int] | None:
    """(width, height) the seed's noise is made at, or None."""
    w, h = request.seed_resize_from_w, request.seed_resize_from_h
    return (w, h) if w > 0 and h > 0 else None


def image_seeds(seed: int, batch: int, subseed: int | None, strength: float) -> tuple[list[int], list[int]]:
    """(seeds, variation seeds) of a batch's images, as A1111 numbers them (see the module's note)."""
    wrap = MAX_SEED + 1
    if strength > 0:
        base = subseed or 0
        return [seed] * batch, [(base + i) % wrap for i in range(batch)]
    return [(seed + i) % wrap for i in range(batch)], []


NOT_TXT2IMG = "Variation seeds apply to text to image only: this run used the plain seed"


def settle(request: GenerateRequest, seed: int, draw) -> tuple[GenerateRequest, list[int], str]:
    """The request as run (its variation seed drawn by `draw()` when the strength asks for one and none is set;
    the variation dropped, with a note, outside text to image), its images' seeds, and the note ("" if none)."""
    note = ""
    if varies(request) and request.mode != "txt2img":
        request, note = request.replace(subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0), NOT_TXT2IMG
    if request.subseed_strength > 0 and request.subseed is None:
        request = request.replace(subseed=draw())
    seeds, _ = image_seeds(seed, request.batch, request.subseed, request.subseed_strength)
    return request, seeds, note
