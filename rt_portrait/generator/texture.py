"""Texture energy matched to the warp: the diffusion generator's post-process for the one-step
face's missing fine detail (``DiffusionConfig.texture_gain``; README: "A sharper learned
face"). Torch only, so the CLI and configs can name the default without loading the
diffusion module."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The default texture gain (DiffusionConfig.texture_gain): chosen on 13 train clips, in session
# 23, as the smallest of 1, 1.25, 1.5 and 2 whose median clip is over 0.9 of the real frame's
# sharpness (1.25, chosen in session 18 on the clips' mean, left 7 of 13 under it; README: "Hair
# that turns away with the head, and the sharpness goal clip by clip").
TEXTURE_GAIN = 1.5
TEXTURE_POOL = 4  # energies are averaged over 3x3 cells of a grid this much coarser: ~12 px


def fine_band(x: torch.Tensor) -> torch.Tensor:
    """The finest band of (B, C, R, R) images: each pixel minus the mean of its 4 neighbours
    (a quarter of the negative Laplacian the sharpness measure takes; slices, not a 3x3
    pooling, which costs 5x as much on the CPU)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return x - 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])


def _neighbourhood_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, R, R) ``x`` averaged over about 12 px: pooled onto a grid 4x coarser, 3x3-averaged
    there and upsampled (with Gaussian blurs for the bands and neighbourhoods, this post-process
    took 25 ms at 256² on the 2-core CPU; with these pools and slices, 1.4 ms)."""
    coarse = F.avg_pool2d(x, TEXTURE_POOL, ceil_mode=True)
    coarse = F.avg_pool2d(coarse, 3, stride=1, padding=1, count_include_pad=False)
    return F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)


def match_warp_texture(
    face: torch.Tensor, warped: torch.Tensor, visibility: torch.Tensor, max_gain: float
) -> torch.Tensor:
    """(B, 3, R, R) ``face`` whose finest band is amplified, by at most ``max_gain``, where its
    local energy falls short of ``warped``'s, in proportion to ``visibility`` (B, R, R).

    The one-step sample is the model's conditional mean, smooth wherever the exact texture is
    uncertain: the face has about 0.8 of the real frame's Laplacian variance. The warp shows the
    real source's texture, so its local energy says how much detail belongs in each neighbourhood
    (the measure the training's texture loss matches, :mod:`rt_portrait.training.losses`). Only
    the face's own band is scaled, never the warp's copied in: it keeps the model's structure
    (whose corrections put misplaced texture right), where the warp's detail, even where it agrees
    with the face's, costs SSIM (README: "A sharper learned face"). The gain never
    falls below 1, so a face as sharp as the warp is left as it is; where the source shows
    nothing (a revealed cheek, an opened mouth) the warp's energy means nothing and the face
    stays whole."""
    if max_gain < 1:
        raise ValueError(f"texture gain must be 1 or more (1 = off), got {max_gain}")
    if max_gain == 1:
        return face
    fine = fine_band(face)
    fine_warp = fine_band(warped)
    energy = _neighbourhood_mean((fine * fine).mean(1, keepdim=True))
    energy_warp = _neighbourhood_mean((fine_warp * fine_warp).mean(1, keepdim=True))
    eps = 1e-5  # about a grey level of noise: flat skin on both sides keeps a gain near 1
    gain = ((energy_warp + eps) / (energy + eps)).sqrt().clamp(1, max_gain)
    v = _neighbourhood_mean(visibility.reshape(-1, 1, *visibility.shape[-2:]).float()).clamp(0, 1)
    return (face + v * (gain - 1) * fine).clamp(0, 1)
