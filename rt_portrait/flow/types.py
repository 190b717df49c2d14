"""Typed inputs and outputs of the 3D-flow stage (torch tensors, one device)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rt_portrait.core.types import Region


@dataclass(frozen=True)
class Window:
    """The square window of the source frame that the working grid covers.

    Working pixel (u, v) = ((x - x0) * size / side, (y - y0) * size / side); the window may
    extend past the frame's edges.
    """

    x0: float
    y0: float
    side: float  # in source-frame pixels
    size: int  # working resolution R (the grid is R x R)

    @property
    def scale(self) -> float:
        return self.size / self.side


@dataclass(frozen=True)
class PointCloud:
    """Surface samples of the head scene in working-grid pixels.

    Target and source clouds are index-aligned: point i of the target is the same surface
    point as point i of the source, so ``source.xyz[i, :2] - target.xyz[i, :2]`` is its
    backward flow.
    """

    xyz: torch.Tensor  # (N, 3) float32: u, v in working pixels; z depth, larger = farther
    normal: torch.Tensor  # (N, 3) float32 unit normals in the camera frame
    label: torch.Tensor  # (N,) int32 Region values


@dataclass(frozen=True)
class FlowConfig:
    size: int = 256  # working resolution R
    k: int = 4  # candidates per pixel in the flow encoding
    radius: float | None = None  # splat/search radius in working px; None = R / 128 + 1
    depth_tol: float | None = None  # front-surface tolerance in working px; None = R / 32
    backend: str = "auto"  # "auto" (Triton on CUDA, torch twin elsewhere), "torch", "triton"


@dataclass(frozen=True)
class FlowFields:
    """Per-pixel fields at working resolution, all (C, R, R) except ``labels``."""

    flow: torch.Tensor  # (2, R, R) backward flow in working px: source = pixel + flow
    visibility: torch.Tensor  # (1, R, R) in [0, 1]; 0 = no source correspondence
    depth: torch.Tensor  # (1, R, R) working px, larger = farther
    normal: torch.Tensor  # (3, R, R)
    labels: torch.Tensor  # (R, R) int64 Region values
    encoding: torch.Tensor  # (4K, R, R): per candidate k: flow u, flow v, depth offset, weight

    def region_mask(self, *regions: Region) -> torch.Tensor:
        mask = torch.zeros_like(self.labels, dtype=torch.bool)
        for r in regions:
            mask |= self.labels == int(r)
        return mask
