"""Op 1 of the 3D flow: the candidate z-buffer.

``zmin[p] = min z_i`` over the points i whose image position is within ``radius`` of pixel
p's centre (see :mod:`splat_common` for the grid and distance definitions); ``+inf`` where a
pixel has no candidate. Depths are compared as order-preserving int32 so the GPU can use an
integer atomic min; the result is exact (no float reduction), so Triton and torch agree
bit for bit.

    zbuffer_triton(xy, z, size, radius) -> (size * size,) float32
    zbuffer_torch(xy, z, size, radius)  -> same, pure torch
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .splat_common import EMPTY_Z, MAX_PAIRS, check_points, float_to_ordered, ordered_to_float, reach

try:  # optional: the package works without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None

if triton is not None:

    @triton.jit
    def footprint_origin(xy_ptr, offs, live):
        # A point's pixel (cx, cy) and its offset (ax, ay) from that pixel's centre: the
        # distance to footprint pixel (cx + dx, cy + dy) is |(ax + dx, ay + dy)|, computed the
        # same way as in the torch twins so both select bit-identical candidates.
        u = tl.load(xy_ptr + 2 * offs, mask=live, other=0.0)
        v = tl.load(xy_ptr + 2 * offs + 1, mask=live, other=0.0)
        cxf = tl.floor(u)
        cyf = tl.floor(v)
        return cxf.to(tl.int32), cyf.to(tl.int32), (cxf + 0.5) - u, (cyf + 0.5) - v

    @triton.jit
    def _zbuffer_kernel(
        xy_ptr, zkey_ptr, out_ptr, n, size, radius2, REACH: tl.constexpr, BLOCK: tl.constexpr
    ):
        # One program = BLOCK points; each point visits its (2 REACH + 1)^2 cell footprint.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        zk = tl.load(zkey_ptr + offs, mask=live, other=0)
        cx, cy, ax, ay = footprint_origin(xy_ptr, offs, live)
        for dy in tl.static_range(-REACH, REACH + 1):
            ey = ay + dy
            py = cy + dy
            row_ok = live & (py >= 0) & (py < size)
            for dx in tl.static_range(-REACH, REACH + 1):
                ex = ax + dx
                px = cx + dx
                d2 = ex * ex + ey * ey
                ok = row_ok & (px >= 0) & (px < size) & (d2 <= radius2)
                tl.atomic_min(out_ptr + py * size + px, zk, mask=ok)


def zbuffer_triton(
    xy: torch.Tensor, z: torch.Tensor, size: int, radius: float, block: int = 256
) -> torch.Tensor:
    """Host wrapper of :func:`_zbuffer_kernel` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    check_points(xy, z)
    out = torch.full((size * size,), EMPTY_Z, dtype=torch.int32, device=xy.device)
    n = xy.shape[0]
    if n:
        r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)
        grid = (triton.cdiv(n, block),)
        _zbuffer_kernel[grid](
            xy,
            float_to_ordered(z),
            out,
            n,
            size,
            r2,
            REACH=reach(radius),
            BLOCK=block,
            enable_fp_fusion=False,
        )
    return ordered_to_float(out)


class Pairs(NamedTuple):
    """Every point's full cell footprint, dense: F = (2 reach + 1)^2 entries per point."""

    pix: torch.Tensor  # (N * F,) int64 flat pixel index (row * size + column), clamped onto the grid
    d2: torch.Tensor  # (N * F,) float32 squared distance to the pixel centre; +inf off the grid
    cand: torch.Tensor  # (N, F) bool: a candidate pair (d2 <= radius^2, on the grid)


def candidate_pairs(xy: torch.Tensor, size: int, radius: float) -> Pairs:
    """Vectorised footprints of all points (the torch twins' shared front end).

    Distances follow the exact operation order of the Triton kernels, so the same pairs
    qualify. Off-grid offsets get an infinite distance, so one comparison finds the pairs.
    """
    r = reach(radius)
    w = 2 * r + 1
    cxf = torch.floor(xy[:, 0])
    cyf = torch.floor(xy[:, 1])
    ax = (cxf + 0.5) - xy[:, 0]
    ay = (cyf + 0.5) - xy[:, 1]
    d = torch.arange(-r, r + 1, dtype=torch.int64, device=xy.device)
    df = d.to(torch.float32)
    px = cxf.to(torch.int64)[:, None] + d[None, :]  # (N, W)
    py = cyf.to(torch.int64)[:, None] + d[None, :]
    ex = ax[:, None] + df[None, :]
    ey = ay[:, None] + df[None, :]
    inf = torch.tensor(float("inf"), device=xy.device)
    ex2 = torch.where((px >= 0) & (px < size), ex * ex, inf)
    ey2 = torch.where((py >= 0) & (py < size), ey * ey, inf)
    d2 = (ey2[:, :, None] + ex2[:, None, :]).view(-1)  # (N * W_dy * W_dx,)
    pix = ((py.clamp_(0, size - 1) * size)[:, :, None] + px.clamp_(0, size - 1)[:, None, :]).view(-1)
    r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)
    return Pairs(pix=pix, d2=d2, cand=(d2 <= r2).view(-1, w * w))


def zbuffer_torch(
    xy: torch.Tensor, z: torch.Tensor, size: int, radius: float, block: int = 256
) -> torch.Tensor:
    """Torch twin of :func:`zbuffer_triton` (same signature; ``block`` unused).

    Footprints are built for chunks of at most ``MAX_PAIRS`` dense pairs (bounded memory).
    """
    check_points(xy, z)
    out = torch.full((size * size,), EMPTY_Z, dtype=torch.int32, device=z.device)
    chunk = max(1, MAX_PAIRS // (2 * reach(radius) + 1) ** 2)
    for s in range(0, z.shape[0], chunk):
        _scatter_zmin(candidate_pairs(xy[s : s + chunk], size, radius), z[s : s + chunk], out)
    return ordered_to_float(out)


def zbuffer_from_pairs(pairs: Pairs, z: torch.Tensor, size: int) -> torch.Tensor:
    """The z-buffer from precomputed :func:`candidate_pairs` of all points (lets the twins share them)."""
    out = torch.full((size * size,), EMPTY_Z, dtype=torch.int32, device=z.device)
    _scatter_zmin(pairs, z, out)
    return ordered_to_float(out)


def _scatter_zmin(pairs: Pairs, z: torch.Tensor, out: torch.Tensor) -> None:
    vals = torch.where(pairs.cand, float_to_ordered(z)[:, None], EMPTY_Z).view(-1)
    out.scatter_reduce_(0, pairs.pix, vals, "amin")


def check(n: int = 300, size: int = 48, radius: float = 3.0, seed: int = 0, device: str = "cpu") -> float:
    """Compare the Triton kernel with the torch twin; returns the max abs difference (exact: 0)."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * (size + 8) - 4).contiguous()
    z = torch.randn(n, generator=g) * 20
    xy, z = xy.to(device), z.to(device)
    a = zbuffer_triton(xy, z, size, radius)
    b = zbuffer_torch(xy, z, size, radius)
    both = torch.isfinite(a) & torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        raise AssertionError("zbuffer: coverage differs between triton and torch")
    err = float((a[both] - b[both]).abs().max()) if both.any() else 0.0
    if err != 0.0:
        raise AssertionError(f"zbuffer: max |triton - torch| = {err}")
    return err
