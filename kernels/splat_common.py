"""Definitions shared by the 3D-flow kernels and their torch twins (no triton import here).

Grid convention: the working grid is R x R; pixel (row i, column j) covers [j, j+1) x [i, i+1)
in working coordinates (u, v), so its centre is (j + 0.5, i + 0.5). A point's *cell* is the
pixel that contains it, (floor(u), floor(v)).

Distances are computed bit-identically in Triton and torch (no FMA contraction, same
operation order): ``ex = ((cx + 0.5) - u) + dx`` with ``cx = floor(u)`` and the integer
cell offset ``dx``; ``d2 = ex * ex + ey * ey``. A pair (point, pixel) is a *candidate* when
``d2 <= radius**2``; only cell offsets with ``|dx|, |dy| <= reach(radius)`` can qualify.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# "No candidate" in the K-nearest key buffers: above every real key, its d2 decodes to +inf
# (weight exp(-inf) = 0) and its index (2^32 - 1) to the dummy row past the last point.
EMPTY_KEY = (0x7F800000 << 32) | 0xFFFFFFFF
EMPTY_Z = torch.iinfo(torch.int32).max  # "no candidate" in the ordered-int z-buffer
N_ACC = 8  # accumulated channels: w, w*fu, w*fv, w*z, w*nx, w*ny, w*nz, w*src_visible
N_ATTR = 6  # per-point attributes: fu, fv, nx, ny, nz, src_visible
MAX_PAIRS = 1 << 22  # torch twins: dense (point, offset) pairs built at once (bounds memory)
COVERAGE_SCALE = (
    0.1  # coverage = 1 - exp(-sum_w / COVERAGE_SCALE): saturates (> 0.99) inside sampled surfaces
)


def reach(radius: float) -> int:
    """Largest |cell offset| that can hold a candidate: |dx| - 0.5 < radius."""
    return max(0, math.ceil(radius + 0.5) - 1)


@dataclass(frozen=True)
class SplatParams:
    """Scalar parameters of one flow evaluation (all in working pixels)."""

    size: int  # R
    radius: float
    depth_tol: float
    k: int
    sigma: float  # Gaussian weight w = exp(-d2 / (2 sigma^2))

    @property
    def reach(self) -> int:
        return reach(self.radius)

    @property
    def radius2(self) -> float:
        return float(torch.tensor(self.radius, dtype=torch.float32) ** 2)

    @property
    def inv_two_sigma2(self) -> float:
        return 1.0 / (2.0 * self.sigma * self.sigma)


def float_to_ordered(z: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 whose signed order equals the float order (for atomic min)."""
    bits = z.contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def ordered_to_float(key: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`float_to_ordered`; ``EMPTY_Z`` becomes +inf."""
    bits = torch.where(key >= 0, key, key ^ 0x7FFFFFFF)
    z = bits.contiguous().view(torch.float32)
    return torch.where(key == EMPTY_Z, torch.full_like(z, math.inf), z)


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """Point index stored in the low 32 bits of a K-nearest key."""
    return keys & 0xFFFFFFFF


def key_d2(keys: torch.Tensor) -> torch.Tensor:
    """Squared distance stored (as float bits) in the high 32 bits of a K-nearest key."""
    return (keys >> 32).to(torch.int32).view(torch.float32)


def check_points(xy: torch.Tensor, z: torch.Tensor) -> None:
    if xy.dim() != 2 or xy.shape[1] != 2 or xy.dtype != torch.float32 or not xy.is_contiguous():
        raise ValueError(f"xy must be a contiguous (N, 2) float32 tensor, got {tuple(xy.shape)} {xy.dtype}")
    if z.shape != (xy.shape[0],) or z.dtype != torch.float32 or z.device != xy.device:
        raise ValueError(
            f"z must be ({xy.shape[0]},) float32 on {xy.device}, got {tuple(z.shape)} {z.dtype} {z.device}"
        )
    if xy.shape[0] >= 2**31:
        raise ValueError("too many points for 32-bit point indices")


def exp_twin(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` for the torch twins, computed in float64 and returned in ``x``'s dtype.

    The torch 2.13 CPU build's float32 ``exp`` is off by up to 1e-4 relative on the first
    call of about one process in 40 (later calls agree; measured with a fresh process per
    trial): enough to fail the 1e-5 kernel checks at random and to make the CPU flow's first
    frame differ. Its float64 ``exp`` agreed to the last float32 bit in 99 of 100 such trials
    and to 1 ulp in the other; on a few thousand pairs per frame it costs microseconds."""
    return torch.exp(x.double()).to(x.dtype)
