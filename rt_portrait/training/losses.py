"""Losses in plain torch (no pretrained networks: none can be downloaded here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Per-pixel SSIM of (B, C, H, W) images (Gaussian window, 'valid'-free: reflect padding)."""
    c = a.shape[1]
    g = _gaussian(window, sigma, a.device)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).to(a.dtype)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1e-6)


def l1_ssim(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ssim_weight: float = 0.5
) -> torch.Tensor:
    """Weighted L1 + ssim_weight x (1 - SSIM) of images in [0, 1]."""
    l1 = weighted_mean((pred - target).abs(), weight)
    if ssim_weight == 0:
        return l1
    s = ssim_map(pred, target)
    return l1 + ssim_weight * weighted_mean(1 - s, weight)
