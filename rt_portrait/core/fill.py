"""Small image-space tensor helpers shared by the flow (elastic background) and the
generator (hole fills)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nonzero_box(mask: torch.Tensor, margin: int = 0) -> tuple[int, int, int, int] | None:
    """(v0, v1, u0, u1) bounding box of the nonzero pixels of a (..., H, W) mask, or None."""
    m = mask.reshape(-1, *mask.shape[-2:]).any(0)
    rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
    if rows.numel() == 0:
        return None
    h, w = m.shape
    return (
        max(0, int(rows[0]) - margin),
        min(h, int(rows[-1]) + 1 + margin),
        max(0, int(cols[0]) - margin),
        min(w, int(cols[-1]) + 1 + margin),
    )


def push_pull_fill(image: torch.Tensor, weight: torch.Tensor, levels: int = 6) -> torch.Tensor:
    """Fill low-weight pixels of a (C, H, W) image from their surroundings (push-pull pyramid).

    Cheap, smooth and plausible for holes such as newly revealed background; a learned
    generator replaces it later.
    """
    pyramid = [(image * weight, weight)]
    for _ in range(levels):
        iw, ww = pyramid[-1]
        if min(iw.shape[-2:]) <= 2:
            break
        pyramid.append(
            (F.avg_pool2d(iw[None], 2, ceil_mode=True)[0], F.avg_pool2d(ww[None], 2, ceil_mode=True)[0])
        )
    iw, ww = pyramid[-1]
    filled = iw / ww.clamp_min(1e-6)
    for iw, ww in reversed(pyramid[:-1]):
        up = F.interpolate(filled[None], size=iw.shape[-2:], mode="bilinear", align_corners=False)[0]
        conf = (ww * 2).clamp(max=1)
        filled = conf * (iw / ww.clamp_min(1e-6)) + (1 - conf) * up
    return filled


def warp_batch(images: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward-warp (B, C, H, W) images by (B, 2, H, W) flows in pixels: each output pixel
    samples its image at its own centre plus its flow (x, y), border-padded; ``mode`` is
    grid_sample's ("bilinear", or "bicubic", which keeps more of the finest detail)."""
    h, w = flow.shape[-2:]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype) + 0.5
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype) + 0.5
    gx = (xs[None, None, :] + flow[:, 0]) * (2.0 / w) - 1
    gy = (ys[None, :, None] + flow[:, 1]) * (2.0 / h) - 1
    grid = torch.stack((gx, gy), -1).to(images.dtype)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_working(source_working: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp a (C, R, R) working image by a (2, R, R) flow in working pixels."""
    return warp_batch(source_working[None], flow[None])[0]
