"""3D flow: target/source point clouds -> per-pixel fields, on Triton or the torch twins.

Definition (learning-free, rasterization-free; grid and distances as in
``rt_portrait.kernels.splat_common``: pixel (i, j) has its centre at (j + 0.5, i + 0.5)):

1. Candidates of pixel p: the target points within ``radius`` of p's centre (image plane).
2. Front surface: candidates with ``z <= zmin(p) + depth_tol``, zmin over p's candidates.
3. Weights on front candidates: ``w = exp(-d^2 / (2 sigma^2))``, ``sigma = radius / 2``.
   Back-facing points (normal z > 0: facing away from the camera, z grows away from it) are
   no candidates: on a closed surface a front-facing surface hides them anyway (culling
   halves the head shell's cost).
4. Source visibility of point i: its source depth is within ``depth_tol`` of the source
   cloud's z-buffer (same definition, steps 1-2) at the pixel containing its source position;
   points whose source position is off the grid count as visible, points back-facing in
   the source as hidden.
5. Fields: flow = weighted mean of ``src_uv - tgt_uv`` (backward: source = p + flow);
   visibility = ``(1 - exp(-sum w / 0.1))`` x weighted fraction of source-visible
   candidates; depth, normal (renormalised) = weighted means; label = region of the nearest
   front candidate; encoding = the K nearest front candidates sorted by distance (ties by
   point index), each ``(flow u / R, flow v / R, (z_k - depth) / R, w_k / sum w)``.
6. Background (analytic: the clouds hold no background points). A pixel without candidates
   is static background: label BACKGROUND, flow 0, depth R (far behind any head), normal
   (0, 0, -1), encoding 0, and visibility 1 if the source showed the background there, i.e.
   the source cloud has no candidate at that pixel (steps 1 and 3 on the source; a
   per-session (R, R) map, :func:`source_background_visibility`), else 0 (revealed
   background). Any candidate at a pixel wins over the background.
7. Gaps of the mouth fan: a wide-open mouth stretches its fan until, here and there, no fan
   point is within reach of a pixel and the head shell's front, inside the head, is the
   nearest front candidate there (isolated shell pixels inside the mouth). A HEAD_SHELL pixel
   with at least ``MOUTH_GAP_NEIGHBOURS`` of its 8 neighbours MOUTH_INTERIOR or LIPS, one of
   them MOUTH_INTERIOR, is labelled MOUTH_INTERIOR (:func:`close_mouth_gaps`; labels only).

The torch twins compute the splat and the fields on the covered pixels only (pixels with a
candidate) and fill in the background afterwards; the Triton kernels run over the full grid.

Backends: "torch" (twins, any device), "triton" (CUDA, or the CPU when TRITON_INTERPRET=1 was
set before triton was imported), "auto" (Triton when the tensors are on CUDA and triton
imports, else torch). Triton is imported lazily, on first use.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch
import torch.nn.functional as F

from rt_portrait.core.types import Region

from .types import FlowConfig, FlowFields, PointCloud

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
MIN_RADIUS = 0.75  # a point's own pixel must be one of its candidates (source visibility)
MOUTH_GAP_NEIGHBOURS = 6  # step 7: of 8


def close_mouth_gaps(labels: torch.Tensor) -> torch.Tensor:
    """(R, R) labels with the head shell seen through gaps of the mouth fan relabelled
    MOUTH_INTERIOR (step 7 of the module doc)."""
    mouth = labels == int(Region.MOUTH_INTERIOR)
    if not bool(mouth.any()):
        return labels
    shell = labels == int(Region.HEAD_SHELL)
    inner = (mouth | (labels == int(Region.LIPS))).float()[None, None]
    ring = torch.ones(1, 1, 3, 3, device=labels.device)
    ring[0, 0, 1, 1] = 0
    around = F.conv2d(inner, ring, padding=1)[0, 0]
    near_mouth = F.conv2d(mouth.float()[None, None], ring, padding=1)[0, 0]
    gap = shell & (around >= MOUTH_GAP_NEIGHBOURS) & (near_mouth >= 1)
    return torch.where(gap, torch.full_like(labels, int(Region.MOUTH_INTERIOR)), labels)


class FlowBackendError(RuntimeError):
    """The requested flow backend cannot run here (the message says why)."""


def splat_params(config: FlowConfig):
    """Resolved scalar parameters (defaults from :class:`FlowConfig`)."""
    from rt_portrait.kernels.splat_common import SplatParams

    if config.size < 8:
        raise ValueError(f"FlowConfig.size must be >= 8, got {config.size}")
    if config.k < 1 or config.k > 64:
        raise ValueError(f"FlowConfig.k must be in [1, 64], got {config.k}")
    radius = float(config.radius) if config.radius is not None else config.size / 128 + 1
    tol = float(config.depth_tol) if config.depth_tol is not None else config.size / 32
    if not radius >= MIN_RADIUS or radius > config.size / 4:
        raise ValueError(f"FlowConfig.radius must be in [{MIN_RADIUS}, size/4], got {radius}")
    if not tol >= 0:
        raise ValueError(f"FlowConfig.depth_tol must be >= 0, got {tol}")
    return SplatParams(size=config.size, radius=radius, depth_tol=tol, k=config.k, sigma=radius / 2)


def validate_cloud(cloud: PointCloud, name: str) -> None:
    """Raise ValueError naming the problem if ``cloud`` is not a well-formed PointCloud."""
    xyz, normal, label = cloud.xyz, cloud.normal, cloud.label
    if not (
        isinstance(xyz, torch.Tensor) and isinstance(normal, torch.Tensor) and isinstance(label, torch.Tensor)
    ):
        raise TypeError(f"{name}: xyz, normal and label must be torch tensors")
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{name}.xyz must be (N, 3), got {tuple(xyz.shape)}")
    n = xyz.shape[0]
    if normal.shape != (n, 3):
        raise ValueError(f"{name}.normal must be ({n}, 3) like xyz, got {tuple(normal.shape)}")
    if label.shape != (n,):
        raise ValueError(f"{name}.label must be ({n},) like xyz, got {tuple(label.shape)}")
    if xyz.dtype != torch.float32 or normal.dtype != torch.float32:
        raise ValueError(f"{name}: xyz and normal must be float32, got {xyz.dtype} and {normal.dtype}")
    if label.dtype != torch.int32:
        raise ValueError(f"{name}.label must be int32, got {label.dtype}")
    if not (xyz.device == normal.device == label.device):
        raise ValueError(
            f"{name}: xyz, normal and label are on different devices "
            f"({xyz.device}, {normal.device}, {label.device})"
        )
    if n and not bool(torch.isfinite(xyz).all()):
        raise ValueError(f"{name}.xyz has non-finite coordinates")


def _validate_pair(target: PointCloud, source: PointCloud) -> None:
    validate_cloud(target, "target")
    validate_cloud(source, "source")
    if target.xyz.shape[0] != source.xyz.shape[0]:
        raise ValueError(
            f"target and source clouds must be index-aligned: {target.xyz.shape[0]} vs "
            f"{source.xyz.shape[0]} points"
        )
    if target.xyz.device != source.xyz.device:
        raise ValueError(f"target is on {target.xyz.device} but source is on {source.xyz.device}")


def resolve_backend(config: FlowConfig, device: torch.device) -> str:
    """ "torch" or "triton" for tensors on ``device``; raises FlowBackendError with the reason."""
    if config.backend not in BACKENDS:
        raise ValueError(f"FlowConfig.backend must be one of {BACKENDS}, got {config.backend!r}")
    if config.backend == "torch":
        return "torch"
    if config.backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            _triton_modules()
        except FlowBackendError as e:
            log.warning("flow: falling back to the torch twin on %s: %s", device, e)
            return "torch"
        return "triton"
    # explicit "triton"
    mods = _triton_modules()
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise FlowBackendError(
                "backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
        if type(mods[0]._zbuffer_kernel).__name__ != "InterpretedFunction":
            raise FlowBackendError(
                "TRITON_INTERPRET=1 was set after the flow kernels were compiled for the GPU; "
                "set it before importing triton"
            )
    elif device.type != "cuda":
        raise FlowBackendError(
            f"backend 'triton' needs CUDA tensors (or CPU + TRITON_INTERPRET=1), got {device}"
        )
    return "triton"


def _triton_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    from rt_portrait.kernels import finalize, splat, zbuffer

    if zbuffer.triton is None:
        raise FlowBackendError("triton is not installed (pip install 'rt-portrait[gpu]')")
    return zbuffer, splat, finalize


def _splat_xy(xyz: torch.Tensor, size: int, reach: int) -> torch.Tensor:
    # Far-off points cannot reach the grid; clamping keeps the kernels' int32 maths in range.
    lim = float(size + reach + 2)
    return xyz[:, :2].clamp(-lim, size + lim).contiguous()


def _point_visibility(
    xy: torch.Tensor, z: torch.Tensor, zmin: torch.Tensor, size: int, tol: float
) -> torch.Tensor:
    """1 where a point is on the front surface of its own pixel (or off the grid), else 0."""
    cx = torch.floor(xy[:, 0])
    cy = torch.floor(xy[:, 1])
    on = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    pix = (cy.clamp(0, size - 1) * size + cx.clamp(0, size - 1)).long()
    front = z <= zmin.index_select(0, pix) + tol
    return (front | ~on).to(torch.float32)


def _source_zbuffer(source: PointCloud, config: FlowConfig):
    """The source cloud's front-facing z-buffer (steps 1-3 on the source): (params, xy, z, facing, zmin)."""
    validate_cloud(source, "source")
    params = splat_params(config)
    backend = resolve_backend(config, source.xyz.device)
    xy = _splat_xy(source.xyz, params.size, params.reach)
    z = source.xyz[:, 2].contiguous()
    facing = source.normal[:, 2] <= 0
    keep = facing.nonzero().squeeze(1)
    xyk, zk = xy.index_select(0, keep).contiguous(), z.index_select(0, keep).contiguous()
    if backend == "triton":
        zmin = _triton_modules()[0].zbuffer_triton(xyk, zk, params.size, params.radius)
    else:
        from rt_portrait.kernels.zbuffer import zbuffer_torch

        zmin = zbuffer_torch(xyk, zk, params.size, params.radius)
    return params, xy, z, facing, zmin


def source_visibility(source: PointCloud, config: FlowConfig) -> torch.Tensor:
    """(N,) float32 in {0, 1}: which source points the source image shows (step 4).

    It depends on the source cloud only, so a session with a still source can compute it
    once and pass it to :func:`compute_flow` every frame.
    """
    params, xy, z, facing, zmin = _source_zbuffer(source, config)
    return _point_visibility(xy, z, zmin, params.size, params.depth_tol) * facing


def source_background_visibility(source: PointCloud, config: FlowConfig) -> torch.Tensor:
    """(R, R) float32 in {0, 1}: where the source image shows the background (step 6).

    1 at the pixels without a candidate of the source cloud (nothing of the source head
    within ``radius``), 0 where the source head covers the background. Per session, like
    :func:`source_visibility`.
    """
    params, _, _, _, zmin = _source_zbuffer(source, config)
    return torch.isinf(zmin).to(torch.float32).view(params.size, params.size)


def compute_flow(
    target: PointCloud,
    source: PointCloud,
    config: FlowConfig,
    source_visible: torch.Tensor | None = None,
    source_background: torch.Tensor | None = None,
) -> FlowFields:
    """Per-pixel flow, visibility, depth, normal, labels and K-candidate encoding (see module doc).

    ``source_visible`` (optional, (N,) float32) is :func:`source_visibility` of ``source`` and
    ``source_background`` (optional, (R, R) float32) is :func:`source_background_visibility`
    of ``source``, precomputed (once per session); each is computed here when omitted.
    """
    _validate_pair(target, source)
    params = splat_params(config)
    device = target.xyz.device
    backend = resolve_backend(config, device)
    n = target.xyz.shape[0]
    r = params.size
    if source_visible is None:
        source_visible = source_visibility(source, config)
    elif (
        source_visible.shape != (n,)
        or source_visible.dtype != torch.float32
        or source_visible.device != device
    ):
        raise ValueError(
            f"source_visible must be ({n},) float32 on {device}, got {tuple(source_visible.shape)} "
            f"{source_visible.dtype} {source_visible.device}"
        )
    if source_background is None:
        source_background = source_background_visibility(source, config)
    elif (
        source_background.shape != (r, r)
        or source_background.dtype != torch.float32
        or source_background.device != device
    ):
        raise ValueError(
            f"source_background must be ({r}, {r}) float32 on {device}, got "
            f"{tuple(source_background.shape)} {source_background.dtype} {source_background.device}"
        )
    bg_visible = source_background.reshape(-1).contiguous()

    keep = (target.normal[:, 2] <= 0).nonzero().squeeze(1)  # back-face culling
    txyz = target.xyz.index_select(0, keep)
    xy = _splat_xy(txyz, params.size, params.reach)
    z = txyz[:, 2].contiguous()
    flow = (source.xyz.index_select(0, keep)[:, :2] - txyz[:, :2]).contiguous()
    attrs = torch.cat(
        [flow, target.normal.index_select(0, keep), source_visible.index_select(0, keep)[:, None]], dim=1
    ).contiguous()
    label = target.label.index_select(0, keep).contiguous()

    if backend == "triton":
        zb, sp, fin = _triton_modules()
        zmin = zb.zbuffer_triton(xy, z, params.size, params.radius)
        acc, keys = sp.splat_triton(xy, z, attrs, zmin, params)
        out, labels = fin.finalize_triton(acc, keys, xy, z, flow, label, bg_visible, params)
    else:
        from rt_portrait.kernels.finalize import finalize_compact, finalize_torch, scatter_fields
        from rt_portrait.kernels.splat import splat_covered, splat_torch
        from rt_portrait.kernels.splat_common import MAX_PAIRS
        from rt_portrait.kernels.zbuffer import candidate_pairs, zbuffer_from_pairs, zbuffer_torch

        if xy.shape[0] * (2 * params.reach + 1) ** 2 <= MAX_PAIRS:
            # Fused twins: the candidate pairs are built once for the z-buffer and the splat,
            # and the splat and finalize work on the covered pixels only.
            pairs = candidate_pairs(xy, params.size, params.radius)
            zmin = zbuffer_from_pairs(pairs, z, params.size)
            cov, acc_c, keys_c = splat_covered(pairs, z, attrs, zmin, params)
            vals, labs = finalize_compact(acc_c, keys_c, z, flow, label, params)
            out, labels = scatter_fields(vals, labs, cov, bg_visible, params)
        else:  # large clouds: chunked twins (footprints built twice, memory bounded)
            zmin = zbuffer_torch(xy, z, params.size, params.radius)
            acc, keys = splat_torch(xy, z, attrs, zmin, params)
            out, labels = finalize_torch(acc, keys, xy, z, flow, label, bg_visible, params)

    out = out.view(-1, r, r)
    return FlowFields(
        flow=out[0:2],
        visibility=out[2:3],
        depth=out[3:4],
        normal=out[4:7],
        labels=close_mouth_gaps(labels.view(r, r)),
        encoding=out[7:],
    )
