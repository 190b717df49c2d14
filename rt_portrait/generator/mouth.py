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
# How a mouth interior is drawn: ``teeth`` (since session 13) draws a row of upper teeth with
# gaps between them, the dark cavity below and, as the mouth opens, the lower teeth's edge and
# the tongue, in the colours the prior measured; ``strips`` paints the prior's mean strips as
# they are (sessions 11-12: the mean of many mouths, a greyish band with no teeth or cavity of
# its own). Models record the style their residual base was painted with.
MOUTH_STYLES = ("teeth", "strips")
# The upper teeth the ``teeth`` style draws: widths (mm) from the midline outward (central and
# lateral incisor, canine, two premolars) on a dental arch of this radius seen from the front,
# so each tooth projects narrower than the one before it.
TOOTH_WIDTHS_MM = (8.5, 6.5, 7.5, 7.0, 6.5)
ARCH_RADIUS_MM = 24.0


def tooth_boundaries(span: float = 0.84) -> np.ndarray:
    """``u`` of the gaps between the upper teeth (and of the row's two ends), the row
    spanning ``span`` of the inner mouth's width around its middle."""
    s = np.concatenate([[0.0], np.cumsum(TOOTH_WIDTHS_MM)])
    x = ARCH_RADIUS_MM * np.sin(s / ARCH_RADIUS_MM)
    x = x / x[-1] * span / 2
    return np.concatenate([-x[:0:-1], x]) + 0.5


_TOOTH_GAPS = tooth_boundaries()  # what the teeth style draws (computed once, not per frame)


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


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


def _column_edges(
    frame: MouthFrame, x: np.ndarray, y: np.ndarray, pixel: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Per pixel column of an opening given by its pixel centres ``x``, ``y`` (pixels ``pixel``
    wide): the column's ``a``, its top and bottom edges' ``b`` (mouth widths), and half a pixel
    in mouth widths; None under three columns."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    cols = np.round(x / pixel).astype(np.int64)
    keys = np.unique(cols)
    if len(keys) < 3:
        return None
    q = np.stack([x, y], axis=1) - frame.c0
    a, b = q @ frame.e / frame.width, q @ frame.n / frame.width
    half = 0.5 * pixel / frame.width
    col_a = np.array([a[cols == k].mean() for k in keys])
    top = np.array([b[cols == k].min() for k in keys]) - half
    bottom = np.array([b[cols == k].max() for k in keys]) + half
    return col_a, top, bottom, half


def visible_opening(frame: MouthFrame, x: np.ndarray, y: np.ndarray, pixel: float = 1.0) -> MouthFrame:
    """``frame`` with its lip lines moved to the edges of the opening that shows: ``x``, ``y``
    are the pixel centres of the painted hole (pixels ``pixel`` wide), grouped by column.

    The rendered lips reach past the inner-lip landmarks (they are splatted points with a
    radius), so the hole starts a few pixels below the landmark line; teeth anchored to the
    landmarks would be painted under the lips. Anchored to the hole's edges, they show."""
    edges = _column_edges(frame, x, y, pixel)
    if edges is None:
        return frame
    col_a, top, bottom, _ = edges

    def line(edge: np.ndarray, lip: np.ndarray) -> np.ndarray:
        inner = np.stack([col_a, edge], axis=1)
        inner = inner[(inner[:, 0] > lip[0, 0]) & (inner[:, 0] < lip[-1, 0])]
        out = np.concatenate([lip[:1], inner[np.argsort(inner[:, 0])], lip[-1:]])
        out[:, 0] = np.maximum.accumulate(out[:, 0])
        return out

    return replace(frame, upper=line(top, frame.upper), lower=line(bottom, frame.lower))


def fit_opening(frame: MouthFrame, x: np.ndarray, y: np.ndarray, pixel: float = 1.0) -> MouthFrame:
    """``frame`` with its lip lines on the edges of the opening that shows, as smooth curves:
    ``x``, ``y`` are the pixel centres of the opening (pixels ``pixel`` wide).

    Like :func:`visible_opening`, but each edge is a low-order polynomial fitted to the pixel
    columns' edges (the columns' own edges are a staircase a pixel tall wherever the edge is
    not level); the two curves meet half a pixel beyond the first and the last column."""
    edges = _column_edges(frame, x, y, pixel)
    if edges is None:
        return frame
    col_a, top, bottom, half = edges
    deg = min(4, len(col_a) - 2)
    top = np.polyval(np.polyfit(col_a, top, deg), col_a)
    bottom = np.polyval(np.polyfit(col_a, bottom, deg), col_a)
    order = np.argsort(col_a)
    col_a, top, bottom = col_a[order], top[order], bottom[order]
    ends_a = [col_a[0] - half, col_a[-1] + half]
    ends_b = [(top[0] + bottom[0]) / 2, (top[-1] + bottom[-1]) / 2]

    def line(edge: np.ndarray) -> np.ndarray:
        out = np.stack([np.r_[ends_a[0], col_a, ends_a[1]], np.r_[ends_b[0], edge, ends_b[1]]], axis=1)
        out[:, 0] = np.maximum.accumulate(out[:, 0])
        return out

    return replace(frame, upper=line(np.minimum(top, bottom)), lower=line(np.maximum(top, bottom)))


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


def opening_coverage(frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, pixel: float = 1.0) -> torch.Tensor:
    """The share of each pixel (``pixel`` wide, centred at ``x``, ``y``) that lies inside the
    opening between the lip lines of ``frame``: an anti-aliased mask whose outline follows the
    lines rather than a pixel grid's staircase."""
    u, d_up, d_lo = lip_depths(frame, x, y)
    px = frame.width / pixel  # pixels per mouth width
    inside = lambda d: (d * px + 0.5).clamp(0, 1)  # noqa: E731
    return inside(d_up) * inside(d_lo) * inside(u) * inside(1 - u)


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
    style: str = "teeth"  # MOUTH_STYLES

    # where the upper strip hands over to the lower one, as the fraction d_upper / (d_upper +
    # d_lower) of the way down: a soft band around the middle
    seam: float = 0.5
    seam_width: float = 0.3

    # the ``teeth`` style, in mouth widths and colour / skin luminance: how far the upper teeth
    # show below the upper lip (less toward the corners, where the arch turns away), the lower
    # teeth's edge above the lower lip, the cavity and the tongue (dark and red: the prior's
    # strips average many mouths and have neither), and the edge width (anti-aliasing)
    teeth_height: float = 0.12
    lower_teeth_height: float = 0.035
    cavity: tuple[float, float, float] = (0.34, 0.16, 0.15)
    tongue: tuple[float, float, float] = (1.0, 0.55, 0.55)
    edge: float = 0.012
    tint: float = 0.3

    def __post_init__(self) -> None:
        if self.style not in MOUTH_STYLES:
            raise ValueError(f"unknown mouth style {self.style!r}; expected one of {MOUTH_STYLES}")

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

    def teeth_colour(self, opening: float) -> np.ndarray:
        """(3,) the teeth's colour / skin luminance for a mouth ``opening``: the brightest row
        of the upper strip's middle half (the row just under the lip where teeth show)."""
        upper = self.strips(opening)[0]
        quarter = upper.shape[2] // 4
        middle = upper[:, :, quarter : upper.shape[2] - quarter]
        return middle[:, int(np.argmax(middle.mean(axis=(0, 2))))].mean(axis=1)

    def paint(self, frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) colours in [0, 1] at pixel positions ``x``, ``y`` for a face whose skin
        colour is ``skin`` (3,): colours are ratios to the skin's luminance (its channel mean),
        so teeth stay near white on any skin. Drawn in the prior's ``style``."""
        if self.style == "teeth":
            return self._paint_teeth(frame, x, y, skin)
        return self._paint_strips(frame, x, y, skin)

    def _paint_teeth(
        self, frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, skin: torch.Tensor
    ) -> torch.Tensor:
        shape, dev = x.shape, x.device
        u, d_up, d_lo = lip_depths(frame, x.reshape(-1), y.reshape(-1))
        d_up, d_lo = d_up.clamp_min(0), d_lo.clamp_min(0)
        opening, soft = max(frame.opening, 1e-3), self.edge
        across = 2 * u - 1  # -1 .. 1 corner to corner
        colour = lambda c: torch.as_tensor(np.asarray(c), dtype=torch.float32, device=dev)[:, None]  # noqa: E731
        teeth = colour(self.teeth_colour(frame.opening))
        gap_u = torch.as_tensor(_TOOTH_GAPS, dtype=torch.float32, device=dev)
        to_gap = (u[:, None] - gap_u[None]).abs().min(dim=1).values
        # upper teeth: hanging from the upper lip, their edges rounding off toward each gap
        height = min(self.teeth_height, 0.7 * opening) * (1 - 0.35 * across**2)
        height = height * (1 - 0.18 * (1 - _smoothstep(0, 1, to_gap / 0.035)) ** 2)
        upper = (1 - _smoothstep(0, 1, (d_up - height + soft) / (2 * soft))) * (
            1 - _smoothstep(0.72, 0.88, across.abs())
        )
        shade = (1 - 0.4 * across**2) * (0.85 + 0.15 * _smoothstep(0, 0.03, d_up))  # corners, lip shadow
        tooth = teeth * shade * (1 - 0.25 * (1 - _smoothstep(0, 1, to_gap / 0.008)))
        # below them the dark cavity; the lower teeth's edge over the lower lip at the middle,
        # clear of the upper teeth; the tongue's red mound as the mouth opens wide
        out = colour(self.cavity) * (0.7 + 0.3 * (1 - across.abs()))
        wide = float(_smoothstep(0.18, 0.3, torch.tensor(opening)))
        tongue = wide * (1 - _smoothstep(0, 1, (across / 0.55) ** 2 + (d_lo / (0.4 * opening)) ** 2))
        out = torch.lerp(out, colour(self.tongue) * (0.75 + 0.25 * (1 - across.abs())), tongue)
        low_h = min(self.lower_teeth_height, 0.2 * opening)
        lower = (
            (1 - _smoothstep(0, 1, (d_lo - low_h + soft) / (2 * soft)))
            * (1 - _smoothstep(0.4, 0.55, across.abs()))
            * _smoothstep(0, 1, (d_up - height - 0.02) / 0.02)
        )
        out = torch.lerp(out, 0.8 * teeth * shade, lower)
        out = torch.lerp(out, tooth, upper)
        # a little of the skin's own tint: the light on the face lights the mouth too (all of
        # it would turn teeth orange on a saturated skin)
        light = torch.lerp(skin.mean().expand(3), skin, self.tint)
        return (out.reshape(3, *shape) * light.reshape(3, *([1] * len(shape)))).clamp(0, 1)

    def _paint_strips(
        self, frame: MouthFrame, x: torch.Tensor, y: torch.Tensor, skin: torch.Tensor
    ) -> torch.Tensor:
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


def box_centres(box: tuple[int, int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) of the working pixel centres of ``box`` (v0, v1, u0, u1), each (v1 - v0, u1 - u0)."""
    v0, v1, u0, u1 = box
    ys = torch.arange(v0, v1, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(u0, u1, device=device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return y, x


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
    # an anti-aliased hole (the ``teeth`` style): compose redraws its edge crisp at frame
    # resolution (the upsampled hole's half-way line) instead of a working pixel's soft ramp
    crisp: bool = False

    @classmethod
    def over_box(
        cls,
        prior: MouthPrior,
        frame: MouthFrame,
        skin: torch.Tensor,
        box: tuple[int, int, int, int],
        hole: torch.Tensor,
        crisp: bool = False,
    ) -> MouthPaint:
        """The prior painted over the working-grid ``box`` (once: the fill and compose share it)."""
        y, x = box_centres(box, hole.device)
        return cls(prior, frame, skin, box, hole, prior.paint(frame, x, y, skin), crisp)

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
