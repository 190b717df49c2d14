"""A small patch discriminator for adversarial fine-tuning of the one-step generator.

No pretrained network is used (none can be downloaded here): the discriminator is trained from
scratch, alongside the generator. It sees an image together with the warp it was made from
(6 channels: image and warp in [-1, 1]), so it judges whether the image is a plausible real
frame *for that warp* (sharp skin, hair and teeth where the warp is blurred or holed), not
merely whether it is sharp. Its output is one logit per 8x8 patch; the losses average them
over the head with the batch's face mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """(B, 3, S, S) image + (B, 3, S, S) warp in [0, 1] -> (B, 1, S/8, S/8) logits."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        sn = nn.utils.parametrizations.spectral_norm  # keeps D Lipschitz: stable with tiny batches
        self.net = nn.Sequential(
            sn(nn.Conv2d(6, c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * c, 4 * c, 3, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(4 * c, 1, 3, padding=1)),
        )

    def forward(self, image: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * 2 - 1, warped * 2 - 1], dim=1))


def patch_weights(face: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The face mask (B, 1, S, S) pooled to the logits' grid: the share of head in each patch."""
    return F.adaptive_avg_pool2d(face, (int(logits.shape[-2]), int(logits.shape[-1])))


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator, averaged over the patches by ``weight``."""
    w = weight.sum().clamp_min(1e-6)
    return ((F.relu(1 - real) * weight).sum() + (F.relu(1 + fake) * weight).sum()) / w


def hinge_g_loss(fake: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The generator's side: raise the discriminator's logits on its images."""
    return -(fake * weight).sum() / weight.sum().clamp_min(1e-6)
