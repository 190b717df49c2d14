"""Mouth-interior prior: what an open mouth usually shows, for mouths the source keeps shut.

When the driver opens a mouth that is closed in the source, the target's mouth interior has
no source pixel to sample. Rather than a flat dark cavity, the learning-free generator paints
the *mean open mouth* of the train clips that show their teeth: teeth under the upper lip,
what lies below them, the lower lip's shadow, each as a colour ratio to the subject's own skin
(so lighting and skin tone carry over). It is a statistic, like the head template, built by
``scripts/build_mouth_prior.py`` from the ``train`` split of the face data and shipped as a
small npz (no pixels of the data).

Mouth coordinates (shared by the builder and the runtime, so they cannot drift):

* ``c0``, ``c1``: the inner mouth corners (image-left first); ``Lm = |c1 - c0|``; ``e`` the
  unit corner axis, ``n`` its normal pointing down the face.
* ``U``, ``L``: the upper and lower inner-lip lines, corner to corner, as ``(a, b)`` pairs
  ``a = (p - c0).e / Lm`` (along the mouth) and ``b = (p - c0).n / Lm`` (down).
* A point ``p`` has ``u = a(p)`` and ``v = (b(p) - U(u)) / (L(u) - U(u))``: ``u`` 0 to 1 from
  corner to corner, ``v`` 0 on the upper inner lip and 1 on the lower one.
* The opening is the mean of ``L - U`` over the paired inner-lip points (a fraction of the
  mouth width).

The prior is stored against the lips rather than against ``v`` (:class:`MouthPrior`), binned
by opening (a slightly open mouth shows teeth, a wide one the tongue and the dark throat) and
interpolated between bins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
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


def visible_opening(frame: MouthFrame, x: np.ndarray, y: np.ndarray, pixel: float = 1.0) -> MouthFrame:
    """``frame`` with its lip lines moved to the edges of the opening that shows: ``x``, ``y``
    are the pixel centres of the painted hole (pixels ``pixel`` wide), grouped by column.

    The rendered lips reach past the inner-lip landmarks (they are splatted points with a
    radius), so the hole starts a few pixels below the landmark line; teeth anchored to the
    landmarks would be painted under the lips. Anchored to the hole's edges, they show."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    cols = np.round(x / pixel).astype(np.int64)
    keys = np.unique(cols)
    if len(keys) < 3:
        return frame
    q = np.stack([x, y], axis=1) - frame.c0
    a, b = q @ frame.e / frame.width, q @ frame.n / frame.width
    half = 0.5 * pixel / frame.width
    top = np.array([[a[cols == k].mean(), b[cols == k].min() - half] for k in keys])
    bottom = np.array([[a[cols == k].mean(), b[cols == k].max() + half] for k in keys])

    def line(inner: np.ndarray, lip: np.ndarray) -> np.ndarray:
        inner = inner[(inner[:, 0] > lip[0, 0]) & (inner[:, 0] < lip[-1, 0])]
        out = np.concatenate([lip[:1], inner[np.argsort(inner[:, 0])], lip[-1:]])
        out[:, 0] = np.maximum.accumulate(out[:, 0])
        return out

    return replace(frame, upper=line(top, frame.upper), lower=line(bottom, frame.lower))


def lip_points(frame: MouthFrame, u: np.ndarray, d: np.ndarray, lip: str) -> np.ndarray:
    """(..., 2) pixel positions ``d`` mouth widths below the upper inner lip (``lip="upper"``)
    or above the lower one (``"lower"``), at ``u`` along the mouth (the inverse of
    :func:`lip_depths`)."""
    if lip not in ("upper", "lower"):
        raise ValueError(f"lip must be 'upper' or 'lower', not {lip!r}")
    line = frame.upper if lip == "upper" else frame.lower
    b = np.interp(u, line[:, 0], line[:, 1]) + (d if lip == "upper" else -d)
    return frame.c0 + frame.width * (u[..., None] * frame.e + b[..., None] * frame.n)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for torch (``xp`` increasing; clamped at the ends)."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1 = xp[i - 1], xp[i]
    t = ((x - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)
    return fp[i - 1] + t * (fp[i] - fp[i - 1])


def lip_depths(frame: MouthFrame, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(u, d_upper, d_lower)`` of pixel positions: ``u`` along the mouth, and the distances
    (in mouth widths) below the upper inner lip and above the lower one."""
    dev = x.device
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
    c0, e, n = as_t(frame.c0), as_t(frame.e), as_t(frame.n)
    dx, dy = x - c0[0], y - c0[1]
    a = (dx * e[0] + dy * e[1]) / frame.width
    b = (dx * n[0] + dy * n[1]) / frame.width
    up = _interp(a, as_t(frame.upper[:, 0]), as_t(frame.upper[:, 1]))
    lo = _interp(a, as_t(frame.lower[:, 0]), as_t(frame.lower[:, 1]))
    return a, b - up, lo - b


def mouth_uv(frame: MouthFrame, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mouth coordinates ``(u, v)`` of pixel positions ``x``, ``y`` (tensors of one shape)."""
    u, d_up, d_lo = lip_depths(frame, x, y)
    return u, d_up / (d_up + d_lo).clamp_min(1e-6)


@dataclass(frozen=True)
class MouthPrior:
    """Mouth-interior colour as a ratio to the skin's luminance, anchored to the lips, per opening bin.

    Teeth hang from the upper lip at a height set by the teeth, not by how far the mouth is
    open, so each bin holds two strips: ``upper`` sampled at depths ``0 .. depth`` (mouth
    widths) below the upper inner lip, ``lower`` at the same depths above the lower one. (A
    texture over the lip-to-lip fraction ``v`` put each frame's teeth edge at another ``v`` and
    the mean came out a flat grey slab.) The strips average the open mouths of the train clips
    that show their upper teeth (see ``scripts/build_mouth_prior.py``)."""

    upper: np.ndarray  # (B, 3, D, U) colour / skin luminance, depth rows 0 .. ``depth``, u columns 0 .. 1
    lower: np.ndarray  # (B, 3, D, U)
    depth: float  # mouth widths covered by the strips' rows
    openings: np.ndarray  # (B,) mean opening of each bin (increasing)
    counts: np.ndarray  # (B,) frames averaged into each bin

    # where the upper strip hands over to the lower one, as the fraction d_upper / (d_upper +
    # d_lower) of the way down: a soft band around the middle
    seam: float = 0.5
    seam_width: float = 0.3

    def strips(self, opening: float) -> tuple[np.ndarray, np.ndarray]:
        """(3, D, U) upper and lower strips for a mouth ``opening`` (linear between bin centres)."""
        o = self.openings
        if opening <= o[0]:
            return self.upper[0], self.lower[0]
        if opening >= o[-1]:
            return self.upper[-1], self.lower[-1]
        k = int(np.searchsorted(o, opening))
        t = (opening - o[k - 1]) / (o[k] - o[k - 1])
        return (
            (1 - t) * self.upper[k - 1] + t * self.upper[k],
            (1 - t) * self.lower[k - 1] + t * self.lower[k],
        )

    def paint(self, frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) colours in [0, 1] at pixel positions ``x``, ``y`` for a face whose skin
        colour is ``skin`` (3,): the strips are ratios to the skin's luminance (its channel
        mean), so teeth stay near white on any skin."""
        u, d_up, d_lo = lip_depths(frame, x, y)
        d_up, d_lo = d_up.clamp_min(0), d_lo.clamp_min(0)
        upper, lower = (
            torch.as_tensor(t, dtype=torch.float32, device=x.device) for t in self.strips(frame.opening)
        )

        def sample(strip: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            grid = torch.stack([u * 2 - 1, (d / self.depth).clamp(0, 1) * 2 - 1], dim=-1).reshape(1, -1, 1, 2)
            out = F.grid_sample(strip[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
            return out.reshape(3, *x.shape)

        down = d_up / (d_up + d_lo).clamp_min(1e-6)
        w = ((self.seam + self.seam_width / 2 - down) / self.seam_width).clamp(0, 1)
        ratio = w * sample(upper, d_up) + (1 - w) * sample(lower, d_lo)
        return (ratio * skin.mean()).clamp(0, 1)


@dataclass(frozen=True)
class MouthPaint:
    """Where a generator painted the mouth prior, so that compose can paint it again finer.

    The working grid holds a mouth a few pixels tall (teeth a pixel or two): compose adds,
    over the full-resolution frame, the prior evaluated at each frame pixel minus its
    working-grid painting upsampled, i.e. the detail the grid could not hold."""

    prior: MouthPrior
    frame: MouthFrame  # the target's mouth, in working pixels
    skin: torch.Tensor  # (3,) the source's skin colour
    box: tuple[int, int, int, int]  # (v0, v1, u0, u1) working-grid box of the painted pixels
    hole: torch.Tensor  # (v1 - v0, u1 - u0) weight the painting was blended in with
    painted: torch.Tensor  # (3, v1 - v0, u1 - u0) the prior at the box's working pixel centres

    @classmethod
    def over_box(
        cls,
        prior: MouthPrior,
        frame: MouthFrame,
        skin: torch.Tensor,
        box: tuple[int, int, int, int],
        hole: torch.Tensor,
    ) -> MouthPaint:
        """The prior painted over the working-grid ``box`` (once: the fill and compose share it)."""
        v0, v1, u0, u1 = box
        ys = torch.arange(v0, v1, device=hole.device, dtype=torch.float32) + 0.5
        xs = torch.arange(u0, u1, device=hole.device, dtype=torch.float32) + 0.5
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return cls(prior, frame, skin, box, hole, prior.paint(frame, x, y, skin))

    def paint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) the prior at working-pixel positions ``x``, ``y`` (any resolution)."""
        return self.prior.paint(self.frame, x, y, self.skin)


@functools.lru_cache(maxsize=2)
def load_mouth_prior(path: str | None = None) -> MouthPrior:
    """The packaged prior (loaded once per process)."""
    p = Path(path) if path is not None else PRIOR_PATH
    if not p.exists():
        raise FileNotFoundError(f"mouth prior not found at {p}; rebuild it with scripts/build_mouth_prior.py")
    with np.load(p) as d:
        missing = {"upper", "lower", "depth", "openings", "counts"} - set(d.files)
        if missing:
            raise ValueError(
                f"{p}: not a lip-anchored mouth prior (missing {sorted(missing)}); "
                "rebuild it with scripts/build_mouth_prior.py"
            )
        prior = MouthPrior(
            upper=d["upper"].astype(np.float32),
            lower=d["lower"].astype(np.float32),
            depth=float(d["depth"]),
            openings=d["openings"].astype(np.float64),
            counts=d["counts"].astype(np.int64),
        )
    shape = prior.upper.shape
    if len(shape) != 4 or shape[1] != 3 or prior.lower.shape != shape or len(prior.openings) != shape[0]:
        raise ValueError(
            f"{p}: malformed mouth prior (upper {shape}, lower {prior.lower.shape}, "
            f"openings {prior.openings.shape})"
        )
    return prior
