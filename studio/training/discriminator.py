"""The adversarial half of an LDM first stage (Rombach et al. 2022, after taming-transformers' VQGAN): a PatchGAN
discriminator, the hinge loss, and the adaptive weight that balances the adversarial term against the
reconstruction at the decoder's last layer.

LPIPS, the paper's perceptual term, needs VGG weights from a hub: unavailable offline, so it is left out and the
reconstruction is L1 (+ MSE) alone.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix's NLayerDiscriminator as taming-transformers uses it): 4x4 convolutions, ``n_layers``
    stride-2 downsamplings, then one stride-1 layer and a 1-channel map of logits, one per overlapping patch.
    ``n_layers=2`` sees 34x34 px patches: half a 64 px picture, a whole shape and its edges."""

    def __init__(self, in_channels: int = 3, ndf: int = 32, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    # taming-transformers' init: N(0, 0.02) convolutions, N(1, 0.02) norm scales
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real patches pushed above +1, fakes below -1."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge GAN (as in LDM): raise the fakes' logits."""
    return -logits_fake.mean()


def adopt_weight(weight: float, step: int, start: int, ramp: int = 0) -> float:
    """0 before step ``start`` (the adversarial term's warm-up), then ``weight`` (LDM), or with ``ramp`` a linear
    rise to it over that many steps: a sweep of weights in one run, for the validation to choose from."""
    if step < start:
        return 0.0
    return weight * min(1.0, (step - start + 1) / ramp) if ramp > 0 else weight


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    factor: float = 1.0) -> torch.Tensor:
    """LDM's ``d_weight = ||grad_last(L_rec)|| / (||grad_last(L_gan)|| + 1e-4)``, clamped to [0, 1e4], detached,
    times ``factor``: the adversarial gradient at the decoder's last layer is scaled to the reconstruction's, so
    neither swamps the other whatever the losses' units."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.norm(rec_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * factor
