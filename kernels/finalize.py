"""Op 3 of the 3D flow: per-pixel fields from the splat accumulations and the K nearest keys.

With ``sw = acc[0]`` (sum of front-candidate weights) at pixel p:

* flow = acc[1:3] / sw; depth = acc[3] / sw; normal = acc[4:7] renormalised;
* visibility = (1 - exp(-sw / COVERAGE_SCALE)) * clamp(acc[7] / sw, 0, 1), i.e. coverage
  times the weighted fraction of candidates visible in the source;
* label = label of the nearest front candidate;
* encoding, per k < K (channels 4k .. 4k+3): the k-th nearest front candidate's
  (flow u / R, flow v / R, (z_k - depth) / R, w_k / sw). Dividing by R makes the encoding
  independent of the working resolution;
* pixels without candidates (``sw == 0``) are the static background: flow 0, depth R (far),
  normal (0, 0, -1), visibility ``bg_visible[p]`` (given: whether the source showed the
  background there), encoding 0, label BACKGROUND (0); missing k: zeros.

Output ``fields`` rows: 0-1 flow, 2 visibility, 3 depth, 4-6 normal, 7.. encoding (4K).
Triton and torch differ only by their exp/division rounding: absolute 1e-5 on O(1) values.

    finalize_triton(acc, keys, xy, z, flow, label, bg_visible, params)
        -> (fields (7+4K, R*R), labels (R*R,) int64)
    finalize_torch(...) -> same, pure torch (computed on the covered pixels only)
    finalize_compact(acc_c, keys_c, z, flow, label, params) -> the covered pixels' columns
"""

from __future__ import annotations

import torch

from .splat_common import COVERAGE_SCALE, EMPTY_KEY, N_ACC, SplatParams, exp_twin

N_BASE = 7  # flow 2, visibility 1, depth 1, normal 3

try:  # optional: the package works without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def _finalize_kernel(
        acc_ptr,
        key_ptr,
        z_ptr,
        flow_ptr,
        label_ptr,
        bg_ptr,
        out_ptr,
        lab_out_ptr,
        plane,
        inv_size,
        far,
        inv2s2,
        inv_cov,
        EMPTY: tl.constexpr,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < plane
        sw = tl.load(acc_ptr + p, mask=live, other=0.0)
        has = sw > 0.0
        den = tl.where(has, sw, 1.0)
        fu = tl.load(acc_ptr + plane + p, mask=live, other=0.0) / den
        fv = tl.load(acc_ptr + 2 * plane + p, mask=live, other=0.0) / den
        depth = tl.load(acc_ptr + 3 * plane + p, mask=live, other=0.0) / den
        nx = tl.load(acc_ptr + 4 * plane + p, mask=live, other=0.0)
        ny = tl.load(acc_ptr + 5 * plane + p, mask=live, other=0.0)
        nz = tl.load(acc_ptr + 6 * plane + p, mask=live, other=0.0)
        frac = tl.load(acc_ptr + 7 * plane + p, mask=live, other=0.0) / den
        frac = tl.minimum(tl.maximum(frac, 0.0), 1.0)
        bg = tl.load(bg_ptr + p, mask=live, other=0.0)
        vis = tl.where(has, (1.0 - tl.exp(-(sw * inv_cov))) * frac, bg)
        nn = tl.sqrt(nx * nx + ny * ny + nz * nz)
        nden = tl.where(nn > 0.0, nn, 1.0)
        tl.store(out_ptr + p, fu, mask=live)
        tl.store(out_ptr + plane + p, fv, mask=live)
        tl.store(out_ptr + 2 * plane + p, vis, mask=live)
        tl.store(out_ptr + 3 * plane + p, tl.where(has, depth, far), mask=live)
        tl.store(out_ptr + 4 * plane + p, nx / nden, mask=live)
        tl.store(out_ptr + 5 * plane + p, ny / nden, mask=live)
        tl.store(out_ptr + 6 * plane + p, tl.where(has, nz / nden, -1.0), mask=live)
        for k in tl.static_range(K):
            key = tl.load(key_ptr + k * plane + p, mask=live, other=EMPTY)
            ok = live & (key != EMPTY)
            idx = (key & 0xFFFFFFFF).to(tl.int32)
            d2 = (key >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            wk = tl.exp(-(d2 * inv2s2))
            ku = tl.load(flow_ptr + 2 * idx, mask=ok, other=0.0)
            kv = tl.load(flow_ptr + 2 * idx + 1, mask=ok, other=0.0)
            kz = tl.load(z_ptr + idx, mask=ok, other=0.0)
            base = out_ptr + (7 + 4 * k) * plane + p
            tl.store(base, tl.where(ok, ku * inv_size, 0.0), mask=live)
            tl.store(base + plane, tl.where(ok, kv * inv_size, 0.0), mask=live)
            tl.store(base + 2 * plane, tl.where(ok, (kz - depth) * inv_size, 0.0), mask=live)
            tl.store(base + 3 * plane, tl.where(ok, wk / den, 0.0), mask=live)
            if k == 0:
                lab = tl.load(label_ptr + idx, mask=ok, other=0)
                tl.store(lab_out_ptr + p, lab.to(tl.int64), mask=live)


def _check(
    acc: torch.Tensor,
    keys: torch.Tensor,
    xy: torch.Tensor,
    z: torch.Tensor,
    flow: torch.Tensor,
    label: torch.Tensor,
    bg_visible: torch.Tensor,
    params: SplatParams,
) -> None:
    plane = params.size * params.size
    n = z.shape[0]
    if acc.shape != (N_ACC, plane) or acc.dtype != torch.float32:
        raise ValueError(f"acc must be ({N_ACC}, {plane}) float32, got {tuple(acc.shape)} {acc.dtype}")
    if keys.shape != (params.k, plane) or keys.dtype != torch.int64:
        raise ValueError(f"keys must be ({params.k}, {plane}) int64, got {tuple(keys.shape)} {keys.dtype}")
    if flow.shape != (n, 2) or flow.dtype != torch.float32 or not flow.is_contiguous():
        raise ValueError(f"flow must be a contiguous ({n}, 2) float32 tensor, got {tuple(flow.shape)}")
    if label.shape != (n,) or label.dtype != torch.int32:
        raise ValueError(f"label must be ({n},) int32, got {tuple(label.shape)} {label.dtype}")
    if bg_visible.shape != (plane,) or bg_visible.dtype != torch.float32 or not bg_visible.is_contiguous():
        raise ValueError(
            f"bg_visible must be a contiguous ({plane},) float32 tensor, got "
            f"{tuple(bg_visible.shape)} {bg_visible.dtype}"
        )


def finalize_triton(
    acc: torch.Tensor,
    keys: torch.Tensor,
    xy: torch.Tensor,
    z: torch.Tensor,
    flow: torch.Tensor,
    label: torch.Tensor,
    bg_visible: torch.Tensor,
    params: SplatParams,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host wrapper of :func:`_finalize_kernel` (``xy`` unused: distances come from the keys)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    _check(acc, keys, xy, z, flow, label, bg_visible, params)
    plane = params.size * params.size
    out = torch.empty((N_BASE + 4 * params.k, plane), dtype=torch.float32, device=acc.device)
    labels = torch.empty((plane,), dtype=torch.int64, device=acc.device)
    grid = (triton.cdiv(plane, block),)
    _finalize_kernel[grid](
        acc,
        keys,
        z,
        flow,
        label,
        bg_visible,
        out,
        labels,
        plane,
        1.0 / params.size,
        float(params.size),
        params.inv_two_sigma2,
        1.0 / COVERAGE_SCALE,
        EMPTY=EMPTY_KEY,
        K=params.k,
        BLOCK=block,
        enable_fp_fusion=False,
    )
    return out, labels


def finalize_torch(
    acc: torch.Tensor,
    keys: torch.Tensor,
    xy: torch.Tensor,
    z: torch.Tensor,
    flow: torch.Tensor,
    label: torch.Tensor,
    bg_visible: torch.Tensor,
    params: SplatParams,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of :func:`finalize_triton` (same signature; ``block`` unused)."""
    _check(acc, keys, xy, z, flow, label, bg_visible, params)
    cov = (acc[0] > 0).nonzero().squeeze(1)
    vals, labs = finalize_compact(acc.index_select(1, cov), keys.index_select(1, cov), z, flow, label, params)
    return scatter_fields(vals, labs, cov, bg_visible, params)


def background_fields(bg_visible: torch.Tensor, params: SplatParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The fields of an image without candidates: the static background everywhere."""
    plane = params.size * params.size
    out = torch.zeros((N_BASE + 4 * params.k, plane), dtype=torch.float32, device=bg_visible.device)
    out[2].copy_(bg_visible)
    out[3].fill_(float(params.size))
    out[6].fill_(-1.0)
    return out, torch.zeros((plane,), dtype=torch.int64, device=bg_visible.device)


def scatter_fields(
    vals: torch.Tensor, labs: torch.Tensor, cov: torch.Tensor, bg_visible: torch.Tensor, params: SplatParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-image fields: the covered pixels' columns ``vals`` at ``cov``, background elsewhere."""
    out, labels = background_fields(bg_visible, params)
    for c in range(out.shape[0]):  # row by row: contiguous index_copy is the fastest scatter on the CPU
        out[c].index_copy_(0, cov, vals[c])
    labels.index_copy_(0, cov, labs)
    return out, labels


def finalize_compact(
    acc: torch.Tensor,
    keys: torch.Tensor,
    z: torch.Tensor,
    flow: torch.Tensor,
    label: torch.Tensor,
    params: SplatParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fields of covered pixels only (``acc`` (8, C) with ``acc[0] > 0``, ``keys`` (K, C)).

    Returns ((7 + 4K, C) float32, (C,) int64); the torch twins' shared back end.
    """
    k = params.k
    c = acc.shape[1]
    n = z.shape[0]
    inv_size = 1.0 / params.size
    sw = acc[0]
    inv = 1.0 / sw
    out = torch.empty((N_BASE + 4 * k, c), dtype=torch.float32, device=acc.device)
    torch.mul(acc[1:3], inv, out=out[0:2])
    torch.mul(acc[3], inv, out=out[3])
    frac = (acc[7] * inv).clamp_(0.0, 1.0)
    torch.mul(1.0 - exp_twin(-(sw * (1.0 / COVERAGE_SCALE))), frac, out=out[2])
    nrm = acc[4:7]
    nn = torch.sqrt(nrm[0] * nrm[0] + nrm[1] * nrm[1] + nrm[2] * nrm[2])
    torch.div(nrm, torch.where(nn > 0, nn, 1.0), out=out[4:7])
    # Key halves as int32 views (little-endian: low word = point index, high word = d2 bits).
    words = keys.contiguous().view(torch.int32).view(k, c, 2)
    low = words[..., 0]
    # Per-point columns (flow u / R, flow v / R, z / R) with a zero column at index n for
    # the empty keys, whose index word (-1 as int32) is sent there.
    cols = torch.zeros((3, n + 1), dtype=torch.float32, device=acc.device)
    cols[0:2, :n] = flow.T * inv_size
    cols[2, :n] = z * inv_size
    empty = low < 0
    idx = torch.where(empty, n, low)  # (K, C) int32
    depth_r = out[3] * inv_size
    enc = out[N_BASE:].view(k, 4, c)
    for j in range(k):  # K rounds over the covered pixels (no per-pixel loop)
        ij = idx[j]
        torch.index_select(cols[0], 0, ij, out=enc[j, 0])
        torch.index_select(cols[1], 0, ij, out=enc[j, 1])
        torch.sub(cols[2].index_select(0, ij), depth_r, out=enc[j, 2])
    enc[:, 2].masked_fill_(empty, 0.0)
    d2 = words[..., 1].view(torch.float32)  # empty keys: +inf -> weight exp(-inf) = 0
    torch.mul(exp_twin(d2 * -params.inv_two_sigma2), inv, out=enc[:, 3])
    lab = torch.cat([label, label.new_zeros(1)])  # BACKGROUND for a (never expected) empty nearest key
    labels = lab.index_select(0, idx[0]).to(torch.int64)
    return out, labels


def check(
    n: int = 300, size: int = 48, radius: float = 3.0, k: int = 4, seed: int = 0, device: str = "cpu"
) -> float:
    """Compare Triton with the torch twin on a real splat; returns the max abs difference (<= 1e-5)."""
    from .splat import splat_torch
    from .zbuffer import zbuffer_torch

    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * (size + 8) - 4).contiguous()
    z = (torch.rand(n, generator=g) * 30).contiguous()
    attrs = torch.randn(n, 6, generator=g)
    attrs[:, 5] = (attrs[:, 5] > 0).float()
    attrs = attrs.contiguous()
    label = torch.randint(0, 8, (n,), generator=g, dtype=torch.int32)
    xy, z, attrs, label = xy.to(device), z.to(device), attrs.to(device), label.to(device)
    params = SplatParams(size=size, radius=radius, depth_tol=size / 32, k=k, sigma=radius / 2)
    acc, keys = splat_torch(xy, z, attrs, zbuffer_torch(xy, z, size, radius), params)
    flow = attrs[:, :2].contiguous()
    bg = (torch.rand(size * size, generator=g) > 0.5).float().to(device)
    a, la = finalize_triton(acc, keys, xy, z, flow, label, bg, params)
    b, lb = finalize_torch(acc, keys, xy, z, flow, label, bg, params)
    if not torch.equal(la, lb):
        raise AssertionError("finalize: labels differ between triton and torch")
    err = float((a - b).abs().max())
    if err > 1e-5:
        raise AssertionError(f"finalize: max |triton - torch| = {err:.3g} > 1e-5")
    return err
