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


PIXEL_LOSSES = ("l1", "mse")


def l1_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    ssim_weight: float = 0.5,
    pixel: str = "l1",
) -> torch.Tensor:
    """Weighted L1 (or, with ``pixel="mse"``, squared error) + ssim_weight x (1 - SSIM) of
    images in [0, 1].

    Squared error alone is the flow-matching objective: its minimiser at every noise level is
    the conditional mean E[x0 | x_t], the only prediction the deterministic multi-step sampler
    integrates exactly. L1's minimiser is the conditional median, which is sharper in one step
    but drifts over many (README: "A teacher for the students")."""
    if pixel not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel loss {pixel!r}; choose from {PIXEL_LOSSES}")
    diff = pred - target
    base = weighted_mean(diff * diff if pixel == "mse" else diff.abs(), weight)
    if ssim_weight == 0:
        return base
    s = ssim_map(pred, target)
    return base + ssim_weight * weighted_mean(1 - s, weight)


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])  # also the sharpness metric's


def texture_energy(img: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Local high-frequency energy of (B, C, H, W) images: the Laplacian of the grey image,
    squared, blurred by a Gaussian of ``sigma`` px and square-rooted (B, 1, H, W)."""
    grey = img.mean(1, keepdim=True)
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), LAPLACIAN.to(grey)[None, None])
    size = 2 * int(3 * sigma) + 1
    g = _gaussian(size, sigma, img.device).to(img.dtype)
    pad = size // 2
    e = F.conv2d(F.pad(lap * lap, (pad, pad, 0, 0), mode="reflect"), g.view(1, 1, 1, size))
    e = F.conv2d(F.pad(e, (0, 0, pad, pad), mode="reflect"), g.view(1, 1, size, 1))
    return (e + 1e-6).sqrt()


def texture_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, sigma: float = 2.0
) -> torch.Tensor:
    """Weighted |texture energy(pred) - texture energy(target)|.

    L1 and SSIM to a real frame reward the conditional mean, which is smooth wherever the
    answer is uncertain (revealed cheeks, teeth, hair). This term asks only for as much fine
    detail as the real frame has in each neighbourhood, not for the same detail in the same
    place, so it penalises that blur without a pretrained perceptual network."""
    return weighted_mean((texture_energy(pred, sigma) - texture_energy(target, sigma)).abs(), weight)
