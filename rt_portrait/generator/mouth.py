"""Mouth-interior prior: what an open mouth usually shows, for mouths the source keeps shut.

When the driver opens a mouth that is closed in the source, the target's mouth interior has
no source pixel to sample. Rather than a flat dark cavity, the learning-free generator paints
the *mean open mouth* of the train clips: teeth under the upper lip, a darker gap, the
tongue, each as a colour ratio to the subject's own skin (so lighting and skin tone carry
over). It is a statistic, like the head template, built by ``scripts/build_mouth_prior.py``
from the ``train`` split of the face data and shipped as a small npz (no pixels of the data).

Mouth coordinates (shared by the builder and the runtime, so they cannot drift):

* ``c0``, ``c1``: the inner mouth corners (image-left first); ``Lm = |c1 - c0|``; ``e`` the
  unit corner axis, ``n`` its normal pointing down the face.
* ``U``, ``L``: the upper and lower inner-lip lines, corner to corner, as ``(a, b)`` pairs
  ``a = (p - c0).e / Lm`` (along the mouth) and ``b = (p - c0).n / Lm`` (down).
* A point ``p`` has ``u = a(p)`` and ``v = (b(p) - U(u)) / (L(u) - U(u))``: ``u`` 0 to 1 from
  corner to corner, ``v`` 0 on the upper inner lip and 1 on the lower one.
* The opening is the mean of ``L - U`` over the paired inner-lip points (a fraction of the
  mouth width).

The texture is binned by opening (a slightly open mouth shows teeth, a wide one the tongue
and the dark throat) and interpolated between bins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PRIOR_PATH = Path(__file__).with_name("data") / "mouth_prior.npz"


@dataclass(frozen=True)
class MouthFrame:
    """The mouth coordinate frame of one face (2D, any pixel units)."""

    c0: np.ndarray  # (2,)
    e: np.ndarray  # (2,) unit axis c0 -> c1
    n: np.ndarray  # (2,) unit normal (down the face)
    width: float  # |c1 - c0|
    upper: np.ndarray  # (P, 2) (a, b) of the upper inner-lip line, corner to corner
    lower: np.ndarray  # (P, 2) (a, b) of the lower line, paired with ``upper``

    @property
    def opening(self) -> float:
        inner = slice(1, -1)  # the corners are shared by both lines
        return float(np.mean(self.lower[inner, 1] - self.upper[inner, 1]))


def mouth_frame(points: np.ndarray, upper: np.ndarray, lower: np.ndarray, corners: np.ndarray) -> MouthFrame:
    """The frame of landmarks ``points`` (N, >= 2); ``upper``/``lower``: paired inner-lip indices
    (image-left to image-right), ``corners``: the two inner mouth corners (image-left first)."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    c0, c1 = p[corners[0]], p[corners[1]]
    axis = c1 - c0
    width = float(np.linalg.norm(axis))
    if not width > 0:
        raise ValueError("degenerate mouth: the inner mouth corners coincide")
    e = axis / width
    n = np.array([-e[1], e[0]])

    def line(idx: np.ndarray) -> np.ndarray:
        q = p[np.concatenate([[corners[0]], idx, [corners[1]]])] - c0
        ab = np.stack([q @ e, q @ n], axis=1) / width
        ab[:, 0] = np.maximum.accumulate(ab[:, 0])  # keep ``a`` monotonic for interpolation
        return ab

    return MouthFrame(c0, e, n, width, line(np.asarray(upper)), line(np.asarray(lower)))


def mouth_points(frame: MouthFrame, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(..., 2) pixel positions of mouth coordinates ``(u, v)`` (the inverse of :func:`mouth_uv`)."""
    up = np.interp(u, frame.upper[:, 0], frame.upper[:, 1])
    lo = np.interp(u, frame.lower[:, 0], frame.lower[:, 1])
    b = up + v * (lo - up)
    return frame.c0 + frame.width * (u[..., None] * frame.e + b[..., None] * frame.n)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for torch (``xp`` increasing; clamped at the ends)."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1 = xp[i - 1], xp[i]
    t = ((x - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)
    return fp[i - 1] + t * (fp[i] - fp[i - 1])


def mouth_uv(frame: MouthFrame, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mouth coordinates ``(u, v)`` of pixel positions ``x``, ``y`` (tensors of one shape)."""
    dev = x.device
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
    c0, e, n = as_t(frame.c0), as_t(frame.e), as_t(frame.n)
    dx, dy = x - c0[0], y - c0[1]
    a = (dx * e[0] + dy * e[1]) / frame.width
    b = (dx * n[0] + dy * n[1]) / frame.width
    up = _interp(a, as_t(frame.upper[:, 0]), as_t(frame.upper[:, 1]))
    lo = _interp(a, as_t(frame.lower[:, 0]), as_t(frame.lower[:, 1]))
    v = (b - up) / (lo - up).clamp_min(1e-6)
    return a, v


@dataclass(frozen=True)
class MouthPrior:
    """Mean mouth-interior colour, as a ratio to the skin colour, per opening bin."""

    ratio: np.ndarray  # (B, 3, V, U) colour / skin colour, over the (v, u) grid in [0, 1]^2
    openings: np.ndarray  # (B,) mean opening of each bin (increasing)
    counts: np.ndarray  # (B,) frames averaged into each bin

    def texture(self, opening: float) -> np.ndarray:
        """(3, V, U) ratio texture for a mouth ``opening`` (linear between bin centres)."""
        o = self.openings
        if opening <= o[0]:
            return self.ratio[0]
        if opening >= o[-1]:
            return self.ratio[-1]
        k = int(np.searchsorted(o, opening))
        t = (opening - o[k - 1]) / (o[k] - o[k - 1])
        return (1 - t) * self.ratio[k - 1] + t * self.ratio[k]

    def paint(self, frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) colours in [0, 1] at pixel positions ``x``, ``y`` for a face whose skin
        colour is ``skin`` (3,)."""
        u, v = mouth_uv(frame, x, y)
        tex = torch.as_tensor(self.texture(frame.opening), dtype=torch.float32, device=x.device)
        grid = torch.stack([u * 2 - 1, v.clamp(0, 1) * 2 - 1], dim=-1).reshape(1, -1, 1, 2)
        ratio = F.grid_sample(tex[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return (ratio.reshape(3, *x.shape) * skin.reshape(3, *([1] * x.dim()))).clamp(0, 1)


@functools.lru_cache(maxsize=2)
def load_mouth_prior(path: str | None = None) -> MouthPrior:
    """The packaged prior (loaded once per process)."""
    p = Path(path) if path is not None else PRIOR_PATH
    if not p.exists():
        raise FileNotFoundError(f"mouth prior not found at {p}; rebuild it with scripts/build_mouth_prior.py")
    with np.load(p) as d:
        prior = MouthPrior(
            ratio=d["ratio"].astype(np.float32),
            openings=d["openings"].astype(np.float64),
            counts=d["counts"].astype(np.int64),
        )
    if prior.ratio.ndim != 4 or prior.ratio.shape[1] != 3 or len(prior.openings) != prior.ratio.shape[0]:
        raise ValueError(
            f"{p}: malformed mouth prior (ratio {prior.ratio.shape}, openings {prior.openings.shape})"
        )
    return prior
