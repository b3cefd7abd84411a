"""Initialisations that make the x4 latent upscaler start as plain interpolation of its low-res input.

The built-in latent upscaler uses a *structured latent*: channels 0-2 of the (pipeline-scaled) latent are the
low-res picture itself, in [-1, 1], and channel 3 carries what the encoder adds about detail. The UNet then
starts by copying its low-res condition into channels 0-2, the VAE decoder as bilinear-like upsampling of
channels 0-2, and the encoder as a 4x4 box average into them; training only has to learn the corrections. (The SwinIR lesson: started from
random weights, a small network spends its CPU budget relearning flat colours, which interpolation already
gets exactly.)

Every path in an ``AutoencoderKL`` decoder or a ``UNet2DConditionModel`` ends in GroupNorm -> SiLU -> conv,
which is not linear. Both are made near-exact for the pass-through channels:
- GroupNorm: each colour c shares a group with -c, +K and -K (K a constant from a 1x1 convolution's bias;
  a bigger group holds several colours and zeros). The group's mean is then 0 and its variance, for a group
  of g channels, (2 sum E[c^2] + 2 K^2) / g, so with gamma K sqrt(2 / g) a channel comes out as
  c / sqrt(1 + sum E[c^2] / K^2): off by at most 3 / (2 K^2) relative (K = 30: 1.7e-3 of c).
- SiLU: beta = B shifts c to where SiLU(x) = x to within x * exp(-x) (B = 16: 2e-6); the last convolution's
  bias takes B off again.
Only the rows of the pass-through channels are set; every other weight keeps its random initialisation, so
the rest of the network is free to learn (its contributions to the pass-through rows start at zero).
"""

from __future__ import annotations

import math

import torch

K_CONST = 30.0
B_SHIFT = 16.0
# Bilinear x2 after nearest x2: [1/4, 1/2, 1/4] in each direction (exact away from the border)
_BILINEAR = torch.tensor([0.25, 0.5, 0.25])
BILINEAR_3X3 = torch.outer(_BILINEAR, _BILINEAR)


def _group_size(norm: torch.nn.GroupNorm) -> int:
    return norm.num_channels // norm.num_groups


def _center(conv: torch.nn.Conv2d) -> tuple[int, int]:
    kh, kw = conv.kernel_size
    return kh // 2, kw // 2


@torch.no_grad()
def _copy_rows(conv: torch.nn.Conv2d, src: list[int], dst: list[int], kernel: torch.Tensor | None = None) -> None:
    """Rows ``dst`` of ``conv`` read only channel ``src[i]`` (centre tap, or ``kernel``), no bias."""
    conv.weight[dst] = 0.0
    if conv.bias is not None:
        conv.bias[dst] = 0.0
    cy, cx = _center(conv)
    for s, d in zip(src, dst, strict=True):
        if kernel is None:
            conv.weight[d, s, cy, cx] = 1.0
        else:
            kh, kw = kernel.shape
            conv.weight[d, s, cy - kh // 2 : cy + kh // 2 + 1, cx - kw // 2 : cx + kw // 2 + 1] = kernel


@torch.no_grad()
def _zero_rows(conv: torch.nn.Conv2d, rows: list[int]) -> None:
    conv.weight[rows] = 0.0
    if conv.bias is not None:
        conv.bias[rows] = 0.0


@torch.no_grad()
def _linear_head(shortcut: torch.nn.Conv2d, src: list[int], norm: torch.nn.GroupNorm, conv_out: torch.nn.Conv2d,
                 out_rows: list[int]) -> list[int]:
    """The last shortcut writes (c, -c) pairs plus (K, -K) into groups of ``norm`` (as many colours per group
    as fit, the rest of a used group held at zero); the norm, SiLU and ``conv_out`` then give back c on
    ``out_rows``. Other rows of ``conv_out`` keep their weights but read nothing from the used groups.
    Returns the channels the pass-through holds (later residuals must leave them alone)."""
    g = _group_size(norm)
    per = (g - 2) // 2
    if per < 1:
        raise ValueError(f"the last GroupNorm needs groups of 4 channels or more, not {g}")
    n = len(src)
    groups = -(-n // per)
    if groups * g > norm.num_channels:
        raise ValueError(f"{n} pass-through channels need {groups * g} channels, the last stage has "
                         f"{norm.num_channels}")
    rows = list(range(groups * g))
    _zero_rows(shortcut, rows)
    cy, cx = _center(shortcut)
    gamma = K_CONST * math.sqrt(2.0 / g)  # the group's std is about K * sqrt(2 / g)
    norm.weight[rows] = 0.0
    norm.bias[rows] = 0.0
    conv_out.weight[:, rows] = 0.0
    oy, ox = _center(conv_out)
    for k, s in enumerate(src):
        base = (k // per) * g
        pos = base + 2 * (k % per)
        shortcut.weight[pos, s, cy, cx] = 1.0
        shortcut.weight[pos + 1, s, cy, cx] = -1.0
        norm.weight[pos] = gamma
        norm.bias[pos] = B_SHIFT
        r = out_rows[k]
        conv_out.weight[r] = 0.0
        conv_out.weight[r, pos, oy, ox] = 1.0
        conv_out.bias[r] = -B_SHIFT
    for j in range(groups):
        shortcut.bias[j * g + g - 2] = K_CONST
        shortcut.bias[j * g + g - 1] = -K_CONST
    return rows


def _resnets(blocks) -> list:
    out = []
    for b in blocks:
        out.extend(b.resnets)
    return out


# fit_upsampling_kernels(lr=3e-3, 400 iterations, 96 whole training pairs, 8 px margin), each scaled to sum 1:
# conv_in's (a slight sharpening at the latent's size), then the two upsamplings'. On 16 held-out scenes:
# 35.63 dB as they are (zero padding), 36.98 with edges repeated; bilinear 34.05 / 35.65.
FITTED_KERNELS = [torch.tensor(k) / torch.tensor(k).sum() for k in (
    [[-0.0575, -0.0398, -0.0573], [-0.0432, 1.0284, -0.042], [-0.0585, -0.0414, -0.0581]],
    [[0.072, 0.1519, 0.07], [0.1608, 0.3142, 0.1595], [0.0749, 0.155, 0.0727]],
    [[0.0896, 0.1576, 0.0893], [0.1593, 0.2903, 0.159], [0.0911, 0.1591, 0.0908]],
)]


def upsample_like_decoder(x: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
    """What the pass-through decoder does to each channel of ``x`` (N, C, H, W): ``kernels[0]`` (3x3) at the
    latent's size (``conv_in``), then per upsampling nearest x2 and ``kernels[i]`` (3x3), zero padding."""
    import torch.nn.functional as F

    c = x.shape[1]
    for i, k in enumerate(kernels):
        if i:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, k.to(x.dtype)[None, None].expand(c, 1, 3, 3), padding=1, groups=c)
    return x


def fit_upsampling_kernels(low: torch.Tensor, high: torch.Tensor, upsamplings: int = 2, iters: int = 400,
                           margin: int = 8, lr: float = 3e-3) -> list[torch.Tensor]:
    """The 3x3 kernels of :func:`upsample_like_decoder` that best map ``low`` to ``high`` (least squares on
    pictures in [-1, 1], leaving out ``margin`` px at the borders, which zero padding spoils whatever the
    kernels), from bilinear. Each kernel is scaled to sum to 1 (flat colours pass unchanged).

    ``FITTED_KERNELS`` came out of it (torch's bicubic, edges repeated, measures 37.16 dB there)."""
    ident = torch.zeros(3, 3)
    ident[1, 1] = 1.0
    ks = [torch.nn.Parameter(k.clone()) for k in [ident] + [BILINEAR_3X3] * upsamplings]
    opt = torch.optim.Adam(ks, lr=lr)
    with torch.enable_grad():
        for _ in range(iters):
            err = (upsample_like_decoder(low, ks) - high)[..., margin:-margin, margin:-margin]
            loss = err.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [(k / k.sum()).detach() for k in ks]


@torch.no_grad()
def init_decoder_passthrough(vae, channels: int = 3, kernels: list[torch.Tensor] | None = None) -> None:
    """The decoder of ``vae`` (an ``AutoencoderKL``, 2 upsamplings: x4) outputs x4 upsampling of its
    (post-quant) latent's first ``channels`` channels, unchanged in scale: bilinear-like, or
    :func:`upsample_like_decoder` with ``kernels`` (one for ``conv_in``, one per upsampling)."""
    dec = vae.decoder
    ch = list(range(channels))
    ups = [up for block in dec.up_blocks for up in block.upsamplers or []]
    if kernels is not None and len(kernels) != len(ups) + 1:
        raise ValueError(f"the decoder has {len(ups)} upsamplings: it needs {len(ups) + 1} kernels, not {len(kernels)}")
    if vae.post_quant_conv is not None:
        _copy_rows(vae.post_quant_conv, ch, ch)
    dtype = dec.conv_in.weight.dtype
    _copy_rows(dec.conv_in, ch, ch, kernel=None if kernels is None else kernels[0].to(dtype))
    for r in _resnets([dec.mid_block]) + _resnets(dec.up_blocks):
        _zero_rows(r.conv2, ch)
    for i, up in enumerate(ups):
        k = BILINEAR_3X3 if kernels is None else kernels[i + 1]
        _copy_rows(up.conv, ch, ch, kernel=k.to(dtype))
    last = list(dec.up_blocks[-1].resnets)
    first_short = next((r for r in last if r.conv_shortcut is not None), None)
    for block in dec.up_blocks[:-1]:
        for r in block.resnets:
            if r.conv_shortcut is not None:
                _copy_rows(r.conv_shortcut, ch, ch)
    if first_short is None:
        raise ValueError("the decoder's last stage needs a channel change (a shortcut convolution)")
    held = _linear_head(first_short.conv_shortcut, ch, dec.conv_norm_out, dec.conv_out, ch)
    # after the shortcut, the pass-through rows hold (c, -c, K, -K) groups: keep the later residuals off them
    for r in last[last.index(first_short):]:
        _zero_rows(r.conv2, held)


# A 2x2 box average on the 3x3 kernel of diffusers' Downsample2D (stride 2, padded right and bottom only):
# taps (0, 0), (0, 1), (1, 0), (1, 1) read pixels 2j and 2j + 1. Twice: the 4x4 box of each low-res pixel.
BOX_2X2 = torch.tensor([[0.25, 0.25, 0.0], [0.25, 0.25, 0.0], [0.0, 0.0, 0.0]])


@torch.no_grad()
def init_encoder_passthrough(vae, channels: int = 3) -> None:
    """The encoder of ``vae`` gives, as the mean of its latent channels 0..channels-1, the 4x4 box average
    of the picture's channels (before ``quant_conv``, which is set to pass them on)."""
    enc = vae.encoder
    ch = list(range(channels))
    _copy_rows(enc.conv_in, ch, ch)
    resnets = _resnets(enc.down_blocks) + _resnets([enc.mid_block])
    for r in resnets:
        _zero_rows(r.conv2, ch)
    for block in enc.down_blocks:
        for down in block.downsamplers or []:
            if down.conv.stride != (2, 2) or down.conv.kernel_size != (3, 3):
                raise ValueError("the encoder's downsampling is not diffusers' 3x3 stride-2 convolution")
            _copy_rows(down.conv, ch, ch, kernel=BOX_2X2.to(down.conv.weight.dtype))
    shorts = [r for r in resnets if r.conv_shortcut is not None]
    if not shorts or shorts[-1] not in list(enc.down_blocks[-1].resnets):
        raise ValueError("the encoder's last stage needs a channel change (a shortcut convolution)")
    for r in shorts[:-1]:
        _copy_rows(r.conv_shortcut, ch, ch)
    last = shorts[-1]
    held = _linear_head(last.conv_shortcut, ch, enc.conv_norm_out, enc.conv_out, ch)
    for r in resnets[resnets.index(last):]:
        _zero_rows(r.conv2, held)
    if vae.quant_conv is not None:
        _copy_rows(vae.quant_conv, ch, ch)


@torch.no_grad()
def init_unet_copy(unet, src_channels: list[int], out_channels: list[int]) -> None:
    """``unet`` (a ``UNet2DConditionModel``) outputs its input channels ``src_channels`` on ``out_channels``,
    whatever the timestep, class label or text, through the skip from ``conv_in`` to the last resnet."""
    n = len(src_channels)
    mid = list(range(n))
    _copy_rows(unet.conv_in, src_channels, mid)
    last = unet.up_blocks[-1].resnets[-1]
    if last.conv_shortcut is None:
        raise ValueError("the UNet's last resnet has no shortcut convolution")
    # its input is cat([features from below, the skip from conv_in]): the skip's channels come after
    below = last.conv_shortcut.in_channels - unet.conv_in.out_channels
    held = _linear_head(last.conv_shortcut, [below + c for c in mid], unet.conv_norm_out, unet.conv_out,
                        out_channels)
    _zero_rows(last.conv2, held)
    # the other outputs (the detail channel) start at zero
    _zero_rows(unet.conv_out, [r for r in range(unet.conv_out.out_channels) if r not in out_channels])
