"""A1111's variation seeds: the first noise of a text-to-image run, made as A1111 makes it (modules/rng.py,
ImageRNG.first, and its `slerp`), from our noise source.

Our base noise is diffusers' `randn_tensor` with one CPU `torch.Generator` per image: torch.randn on the CPU.
That is A1111's noise with "Random number generator source: CPU" (its default source "GPU" draws from the CUDA
generator, whose numbers differ): an A1111 PNG made with the CPU source (its text says "RNG: CPU") has the same
first noise here. The image's own generator draws the full-size noise first, as the plain pipeline would, so an
ancestral sampler's later noise is the same generator's next numbers, as in a plain run and in A1111.
"""

from __future__ import annotations

import torch

from ..core.requests import GenerateRequest
from ..core.variation import resized_from


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp, kept as it is: over dim 1 of a (C, h, w) noise (its rows), and with its linear fallback
    for nearly parallel rows (which weighs low by val: A1111's own, kept so its images reproduce)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=dtype)


def first_noise(
    request: GenerateRequest,
    generators: list[torch.Generator],
    seeds: list[int],
    subseeds: list[int],
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    scale: int,
) -> torch.Tensor:
    """The (batch, C, h, w) first noise of a run with variation seeds, on the CPU. `shape`: one image's latent
    (C, h, w); `scale`: the VAE's pixels per latent cell (A1111's 8 for SD; the built-in model's 4)."""
    c, h, w = shape
    resize = resized_from(request)
    noise_shape = (c, resize[1] // scale, resize[0] // scale) if resize else shape
    out = []
    for i, generator in enumerate(generators):
        # The draw the pipeline makes itself: it advances the generator exactly as a plain run does.
        x = torch.randn((1, *shape), generator=generator, dtype=dtype)[0]
        noise = _randn(seeds[i], noise_shape, dtype) if noise_shape != shape else x
        if request.subseed_strength > 0:
            sub = _randn(subseeds[i], noise_shape, dtype)
            noise = slerp(request.subseed_strength, noise.float(), sub.float()).to(dtype)
        if noise_shape != shape:  # pasted centred: the old size's noise where the two overlap, the new one around
            dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
            pw = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            ph = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
            x = x.clone()
            x[:, ty : ty + ph, tx : tx + pw] = noise[:, sy : sy + ph, sx : sx + pw]
            noise = x
        out.append(noise)
    return torch.stack(out)
