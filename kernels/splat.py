"""Op 2 of the 3D flow: depth-guided splatting of the front candidates.

For every (point i, pixel p) candidate pair (``d2 <= radius^2``, see :mod:`splat_common`)
that lies on the front surface, ``z_i <= zmin[p] + depth_tol``:

* ``w = exp(-d2 / (2 sigma^2))``; accumulate ``acc[:, p] += w * (1, fu, fv, z, nx, ny, nz, vis)``
  (``attrs`` rows are ``fu, fv, nx, ny, nz, vis``);
* the K nearest front candidates: ``keys[k, p]`` is the k-th smallest packed key
  ``(float bits of d2) << 32 | i`` (keys are unique, so round k takes the minimum over keys
  greater than round k-1's winner); ``EMPTY_KEY`` where fewer than k+1 exist.

Keys are exact integers, so Triton and torch select the same candidates; the float sums in
``acc`` differ only by summation order (atomics): relative 1e-5.

    splat_triton(xy, z, attrs, zmin, params) -> (acc (8, R*R) float32, keys (K, R*R) int64)
    splat_torch(xy, z, attrs, zmin, params)  -> same, pure torch
"""

from __future__ import annotations

import torch

from .splat_common import EMPTY_KEY, MAX_PAIRS, N_ACC, N_ATTR, SplatParams, check_points, exp_twin
from .zbuffer import Pairs, candidate_pairs

try:  # optional: the package works without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    from .zbuffer import footprint_origin

    @triton.jit
    def _splat_kernel(
        xy_ptr,
        z_ptr,
        attr_ptr,
        zmin_ptr,
        acc_ptr,
        key_ptr,
        n,
        size,
        radius2,
        depth_tol,
        inv2s2,
        REACH: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        z = tl.load(z_ptr + offs, mask=live, other=0.0)
        fu = tl.load(attr_ptr + 6 * offs, mask=live, other=0.0)
        fv = tl.load(attr_ptr + 6 * offs + 1, mask=live, other=0.0)
        nx = tl.load(attr_ptr + 6 * offs + 2, mask=live, other=0.0)
        ny = tl.load(attr_ptr + 6 * offs + 3, mask=live, other=0.0)
        nz = tl.load(attr_ptr + 6 * offs + 4, mask=live, other=0.0)
        vis = tl.load(attr_ptr + 6 * offs + 5, mask=live, other=0.0)
        cx, cy, ax, ay = footprint_origin(xy_ptr, offs, live)
        plane = size * size
        for dy in tl.static_range(-REACH, REACH + 1):
            ey = ay + dy
            py = cy + dy
            row_ok = live & (py >= 0) & (py < size)
            for dx in tl.static_range(-REACH, REACH + 1):
                ex = ax + dx
                px = cx + dx
                d2 = ex * ex + ey * ey
                ok = row_ok & (px >= 0) & (px < size) & (d2 <= radius2)
                pix = py * size + px
                zmin = tl.load(zmin_ptr + pix, mask=ok, other=0.0)
                ok = ok & (z <= zmin + depth_tol)
                w = tl.exp(-(d2 * inv2s2))
                tl.atomic_add(acc_ptr + pix, w, mask=ok)
                tl.atomic_add(acc_ptr + plane + pix, w * fu, mask=ok)
                tl.atomic_add(acc_ptr + 2 * plane + pix, w * fv, mask=ok)
                tl.atomic_add(acc_ptr + 3 * plane + pix, w * z, mask=ok)
                tl.atomic_add(acc_ptr + 4 * plane + pix, w * nx, mask=ok)
                tl.atomic_add(acc_ptr + 5 * plane + pix, w * ny, mask=ok)
                tl.atomic_add(acc_ptr + 6 * plane + pix, w * nz, mask=ok)
                tl.atomic_add(acc_ptr + 7 * plane + pix, w * vis, mask=ok)
                key = (d2.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs.to(tl.int64)
                tl.atomic_min(key_ptr + pix, key, mask=ok)

    @triton.jit
    def _select_kernel(
        xy_ptr,
        z_ptr,
        zmin_ptr,
        prev_ptr,
        key_ptr,
        n,
        size,
        radius2,
        depth_tol,
        REACH: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # One selection round: the smallest front-candidate key above the previous winner.
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < n
        z = tl.load(z_ptr + offs, mask=live, other=0.0)
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
                pix = py * size + px
                prev = tl.load(prev_ptr + pix, mask=ok, other=0)
                zmin = tl.load(zmin_ptr + pix, mask=ok, other=0.0)
                key = (d2.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs.to(tl.int64)
                ok = ok & (z <= zmin + depth_tol) & (key > prev)
                tl.atomic_min(key_ptr + pix, key, mask=ok)


def _check(
    xy: torch.Tensor, z: torch.Tensor, attrs: torch.Tensor, zmin: torch.Tensor, params: SplatParams
) -> None:
    check_points(xy, z)
    n = xy.shape[0]
    if attrs.shape != (n, N_ATTR) or attrs.dtype != torch.float32 or not attrs.is_contiguous():
        raise ValueError(
            f"attrs must be a contiguous ({n}, {N_ATTR}) float32 tensor, got {tuple(attrs.shape)} {attrs.dtype}"
        )
    if zmin.shape != (params.size * params.size,) or zmin.dtype != torch.float32:
        raise ValueError(f"zmin must be ({params.size**2},) float32, got {tuple(zmin.shape)} {zmin.dtype}")


def splat_triton(
    xy: torch.Tensor,
    z: torch.Tensor,
    attrs: torch.Tensor,
    zmin: torch.Tensor,
    params: SplatParams,
    block: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host wrapper: one accumulation pass (which also selects the nearest) + K-1 selection rounds."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    _check(xy, z, attrs, zmin, params)
    plane = params.size * params.size
    acc = torch.zeros((N_ACC, plane), dtype=torch.float32, device=xy.device)
    keys = torch.full((params.k, plane), EMPTY_KEY, dtype=torch.int64, device=xy.device)
    n = xy.shape[0]
    if n == 0:
        return acc, keys
    grid = (triton.cdiv(n, block),)
    common = dict(REACH=params.reach, BLOCK=block, enable_fp_fusion=False)
    _splat_kernel[grid](
        xy,
        z,
        attrs,
        zmin,
        acc,
        keys,
        n,
        params.size,
        params.radius2,
        params.depth_tol,
        params.inv_two_sigma2,
        **common,
    )
    for k in range(1, params.k):
        _select_kernel[grid](
            xy, z, zmin, keys[k - 1], keys[k], n, params.size, params.radius2, params.depth_tol, **common
        )
    return acc, keys


def splat_torch(
    xy: torch.Tensor,
    z: torch.Tensor,
    attrs: torch.Tensor,
    zmin: torch.Tensor,
    params: SplatParams,
    block: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of :func:`splat_triton` (same signature; ``block`` unused).

    Footprints are built for chunks of points (at most ``MAX_PAIRS`` dense pairs at a time),
    so memory stays bounded for large clouds; the K rounds run over all front pairs.
    """
    _check(xy, z, attrs, zmin, params)
    plane = params.size * params.size
    acc = torch.zeros((N_ACC, plane), dtype=torch.float32, device=z.device)
    chunk = max(1, MAX_PAIRS // (2 * params.reach + 1) ** 2)
    pixs, keys = [], []
    for s in range(0, z.shape[0], chunk):
        e = min(s + chunk, z.shape[0])
        pairs = candidate_pairs(xy[s:e], params.size, params.radius)
        pix, key = _splat_chunk(pairs, z, attrs, zmin, params, s, e, acc)
        pixs.append(pix)
        keys.append(key)
    if not pixs:
        return acc, torch.full((params.k, plane), EMPTY_KEY, dtype=torch.int64, device=z.device)
    return acc, select_k_nearest(torch.cat(pixs), torch.cat(keys), params.k, plane)


def splat_covered(
    pairs: Pairs, z: torch.Tensor, attrs: torch.Tensor, zmin: torch.Tensor, params: SplatParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The splat from precomputed candidate pairs of all points, on the covered pixels only.

    Returns ``cov`` (C,) int64, the pixels with a candidate (finite ``zmin``, ascending),
    and their columns of ``acc`` (8, C) and ``keys`` (K, C): the same values as
    :func:`splat_torch` at those pixels (elsewhere it has zeros and ``EMPTY_KEY``). Working
    on C << R^2 columns is what makes the CPU twin fast.
    """
    plane = params.size * params.size
    cov = torch.isfinite(zmin).nonzero().squeeze(1)
    cid_map = torch.zeros((plane,), dtype=torch.int64, device=z.device)
    cid_map.index_copy_(0, cov, torch.arange(cov.shape[0], device=z.device))
    acc = torch.zeros((N_ACC, cov.shape[0]), dtype=torch.float32, device=z.device)
    pix, key = _splat_chunk(pairs, z, attrs, zmin, params, 0, z.shape[0], acc, cid_map)
    return cov, acc, select_k_nearest(pix, key, params.k, cov.shape[0])


def _splat_chunk(
    pairs: Pairs,
    z: torch.Tensor,
    attrs: torch.Tensor,
    zmin: torch.Tensor,
    params: SplatParams,
    start: int,
    stop: int,
    acc: torch.Tensor,
    cid_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the front pairs of points [start, stop) into ``acc``; return their (column, key).

    Columns are pixels, or ``cid_map[pixel]`` when a map onto compact columns is given.
    """
    f = pairs.cand.shape[1]
    zc = z[start:stop]
    front = pairs.cand & (zc[:, None] <= zmin.index_select(0, pairs.pix).view(-1, f) + params.depth_tol)
    # Compact to the front pairs (nonzero + index_select: boolean indexing is slow on the CPU).
    nz = front.nonzero()  # (M, 2): point, footprint slot (2-D nonzero: no integer division)
    pid = nz[:, 0].contiguous()
    sel = pid * f + nz[:, 1]
    pix = pairs.pix.index_select(0, sel)
    if cid_map is not None:
        pix = cid_map.index_select(0, pix)
    d2 = pairs.d2.index_select(0, sel)
    w = exp_twin(-(d2 * params.inv_two_sigma2))
    a = attrs[start:stop]
    chans = torch.cat([a[:, :2].T, zc[None], a[:, 2:].T])  # (7, n): fu, fv, z, nx, ny, nz, vis
    # scatter_add_ over an expanded index beats index_add_ along dim 1 on the CPU (2x)
    acc[0].scatter_add_(0, pix, w)
    acc[1:].scatter_add_(1, pix.expand(N_ACC - 1, -1), chans.index_select(1, pid).mul_(w))
    key = (d2.view(torch.int32).to(torch.int64) << 32) | (pid + start)
    return pix, key


def select_k_nearest(pix: torch.Tensor, key: torch.Tensor, k: int, plane: int) -> torch.Tensor:
    """K rounds of scatter-min over the unique packed keys; round r keeps the keys above round r-1's.

    ``key`` is consumed (overwritten).
    """
    keys = torch.full((k, plane), EMPTY_KEY, dtype=torch.int64, device=key.device)
    for r in range(k):
        keys[r].scatter_reduce_(0, pix, key, "amin")
        if r + 1 < k:
            key.masked_fill_(key <= keys[r].index_select(0, pix), EMPTY_KEY)
    return keys


def check(
    n: int = 300, size: int = 48, radius: float = 3.0, k: int = 4, seed: int = 0, device: str = "cpu"
) -> dict[str, float]:
    """Compare Triton with the torch twin: keys must be equal, sums within 1e-5 relative."""
    from .zbuffer import zbuffer_torch

    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * (size + 8) - 4).contiguous()
    z = (torch.rand(n, generator=g) * 30).contiguous()
    attrs = torch.randn(n, N_ATTR, generator=g).contiguous()
    xy, z, attrs = xy.to(device), z.to(device), attrs.to(device)
    params = SplatParams(size=size, radius=radius, depth_tol=size / 32, k=k, sigma=radius / 2)
    zmin = zbuffer_torch(xy, z, size, radius)
    acc_t, keys_t = splat_triton(xy, z, attrs, zmin, params)
    acc_r, keys_r = splat_torch(xy, z, attrs, zmin, params)
    if not torch.equal(keys_t, keys_r):
        bad = int((keys_t != keys_r).sum())
        raise AssertionError(f"splat: {bad} K-nearest keys differ between triton and torch")
    scale = acc_r.abs().max().clamp_min(1e-6)
    err = float((acc_t - acc_r).abs().max() / scale)
    if err > 1e-5:
        raise AssertionError(f"splat: max relative |triton - torch| accumulation error {err:.3g} > 1e-5")
    return {"acc_rel_err": err, "keys_equal": 1.0}
