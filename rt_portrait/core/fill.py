"""Small image-space tensor helpers shared by the flow (elastic background) and the
generator (hole fills)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _running_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over the 2 radius + 1 neighbours along ``dim`` (-1 or -2) of an (H, W) map."""
    n = x.shape[dim]
    pad = (radius, radius) if dim == -1 else (0, 0, radius, radius)
    p = F.pad(x[None], pad, value=float("-inf"))[0]
    out = p.narrow(dim, 0, n)
    for i in range(1, 2 * radius + 1):
        out = torch.maximum(out, p.narrow(dim, i, n))
    return out


def dilate(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the (2 radius + 1)² square around each pixel of an (H, W) float map.

    Separable, as running maxima of shifted slices: on one CPU thread at 256² this is 0.2-0.6
    ms for radii 2-8, where ``max_pool2d`` with the square kernel took 1.6-16 ms (the flow
    stage and the warp fill call it several times a frame). The result is the same."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if image.ndim != 2:
        raise ValueError(f"dilate takes an (H, W) map, got shape {tuple(image.shape)}")
    return _running_max(_running_max(image, radius, -1), radius, -2)


def erode(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Min over the (2 radius + 1)² square around each pixel of an (H, W) float map (the
    grid's border does not erode)."""
    return -dilate(-image, radius)


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


def _pixel_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) float row and column indices."""
    yy = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w)
    return yy, xx


def nearest_seed(seeds: torch.Tensor, y_scale: float = 1.0) -> torch.Tensor:
    """(2, H, W) float (y, x) of the nearest True pixel of an (H, W) bool map with at least
    one, for every pixel, with vertical distances counted ``y_scale`` times: SciPy's exact
    Euclidean feature transform for a CPU tensor (about 1 ms at 128²), jump flooding
    (:func:`nearest_seed_jfa`) on other devices."""
    if seeds.device.type != "cpu":
        return nearest_seed_jfa(seeds, y_scale)
    from scipy.ndimage import distance_transform_edt

    idx = distance_transform_edt(
        ~seeds.numpy(), sampling=(y_scale, 1.0), return_distances=False, return_indices=True
    )
    return torch.from_numpy(idx.astype(np.float32))


def nearest_seed_jfa(seeds: torch.Tensor, y_scale: float = 1.0) -> torch.Tensor:
    """:func:`nearest_seed` by jump flooding with a final 1-step pass, on any device (exact
    but for rare near-ties, within a pixel; inf without seeds): a few dozen shifted tensor
    comparisons, so a fill on the GPU needs no host round trip."""
    h, w = seeds.shape
    yy, xx = _pixel_grid(h, w, seeds.device)
    inf = torch.full_like(yy, float("inf"))
    best = torch.stack((torch.where(seeds, yy, inf), torch.where(seeds, xx, inf)))
    steps, k = [], 1
    while k < max(h, w):
        steps.append(k)
        k *= 2
    for step in [*reversed(steps), 1]:
        padded = F.pad(best, (step, step, step, step), value=float("inf"))
        dist = (y_scale * (best[0] - yy)) ** 2 + (best[1] - xx) ** 2
        for dy in (-step, 0, step):
            for dx in (-step, 0, step):
                if dy == 0 and dx == 0:
                    continue
                cand = padded[:, step + dy : step + dy + h, step + dx : step + dx + w]
                d = (y_scale * (cand[0] - yy)) ** 2 + (cand[1] - xx) ** 2
                closer = d < dist
                best = torch.where(closer[None], cand, best)
                dist = torch.where(closer, d, dist)
    return best


def mirror_fill(image: torch.Tensor, donor: torch.Tensor, y_scale: float = 1.0) -> torch.Tensor | None:
    """Fill a (C, H, W) image from its ``donor`` pixels ((H, W) bool) by reflection: each
    pixel takes the donor pixel mirrored through its nearest donor (where that mirror point
    is a donor too, else the nearest donor itself), vertical distances counted ``y_scale``
    times (above 1, sideways donors win). None when there is no donor.

    Unlike :func:`push_pull_fill`, which averages to a smooth, flat patch, this continues the
    texture next to a hole (hair, a background) into it, and meets it without an edge."""
    if not bool(donor.any()):
        return None
    h, w = donor.shape
    near = nearest_seed(donor, y_scale)
    yy, xx = _pixel_grid(h, w, donor.device)
    my = (2 * near[0] - yy).clamp(0, h - 1)
    mx = (2 * near[1] - xx).clamp(0, w - 1)
    ok = donor[my.long(), mx.long()]
    sy = torch.where(ok, my, near[0]).long()
    sx = torch.where(ok, mx, near[1]).long()
    return image[:, sy, sx]


def sampled_at(source_map: torch.Tensor, flow: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The (R, R) ``source_map``'s value at the pixel each pixel of the working-grid ``box``
    (v0, v1, u0, u1) samples by the (2, R, R) backward ``flow`` (nearest, clamped to the grid):
    e.g. the source label or background visibility a target pixel shows."""
    r = source_map.shape[-1]
    v0, v1, u0, u1 = box
    xs = torch.arange(u0, u1, device=flow.device, dtype=torch.float32) + 0.5
    ys = torch.arange(v0, v1, device=flow.device, dtype=torch.float32) + 0.5
    u = (xs[None, :] + flow[0, v0:v1, u0:u1]).floor().long().clamp(0, r - 1)
    v = (ys[:, None] + flow[1, v0:v1, u0:u1]).floor().long().clamp(0, r - 1)
    return source_map[v, u]


def source_area_ratio(flow: torch.Tensor) -> torch.Tensor:
    """(R, R) source area per target area of a (2, R, R) backward flow (the determinant of
    the Jacobian of pixel -> pixel + flow, central differences, one-sided at the borders).
    Near 0 where a sliver of the source is stretched over many target pixels (a surface the
    source saw edge-on, now seen face-on); negative where the mapping folds."""
    if flow.dim() != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be (2, R, R), got {tuple(flow.shape)}")
    gx = torch.gradient(flow, dim=2)[0]
    gy = torch.gradient(flow, dim=1)[0]
    return (1 + gx[0]) * (1 + gy[1]) - gx[1] * gy[0]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) separable Gaussian blur, replicate-padded (sigma in pixels).

    On the CPU each pass is a weighted sum of shifted slices: depthwise convolutions cost
    1.1-8x as much there (sigma 0.7-12 at 256^2, one thread; e.g. 4.1 against 1.0 ms for the
    warp fill's 4-channel soften), for the same result within 3e-7. Elsewhere, two depthwise
    convolutions (one launch a pass instead of one per tap)."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma * sigma))
    k = k / k.sum()
    if x.device.type == "cpu":
        taps = k.tolist()
        return _blur_rows(_blur_rows(x, taps, r, -1), taps, r, -2)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )


def _blur_rows(x: torch.Tensor, k: list[float], r: int, dim: int) -> torch.Tensor:
    """One pass of :func:`gaussian_blur` along ``dim`` (-1 or -2) as shifted slices."""
    n = x.shape[dim]
    p = F.pad(x, (r, r, 0, 0) if dim == -1 else (0, 0, r, r), mode="replicate")
    out = p.narrow(dim, 0, n) * k[0]
    for i in range(1, 2 * r + 1):
        out.add_(p.narrow(dim, i, n), alpha=k[i])
    return out


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
