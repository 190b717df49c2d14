"""The source's colours kept: a generator's face may not invent a colour the portrait lacks
(``AnimatorConfig.source_colours``; README: "A black-and-white portrait stays black and white").

The learned generator was trained on colour video; on a black-and-white or sepia portrait its
residual paints skin tones into what it changes (a revealed cheek, the neck, a ghost it fills),
and the warp fill's mouth prior paints a pink tongue. Here each face pixel's chroma is pulled
into the source head's own chroma distribution: a Mahalanobis clamp at ``CHROMA_CLAMP``
standard deviations around the source's mean chroma, luma unchanged. A colour portrait's skin,
lips and hair spread wide enough that the clamp rarely acts; a grey portrait's spread is zero,
so the face comes out grey. Torch only, like the other post-processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rt_portrait.core.types import Region

# Standard deviations of the source head's chroma a face pixel may stray from its mean: wide
# enough to leave a colour portrait's own colours alone (at 3, the `val` clips' pose error moved
# by 0.013° and jitter by 0.0002; at 5, 0.005° and 0), and a grey one's face within 5/255 of grey.
CHROMA_CLAMP = 5.0
# The chroma spread every source is allowed on top of its own (1/255: a JPEG's grey is not
# exactly grey, and a clamp to a single point would band a smooth gradient).
CHROMA_FLOOR = 1.0 / 255.0
_LUMA = (0.299, 0.587, 0.114)


def to_luma_chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB (3, ...) -> luma (1, ...) and chroma (2, ...) = (R - Y, B - Y)."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    y = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
    return y[None], torch.stack([r - y, b - y])


def from_luma_chroma(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_luma_chroma`."""
    r, b = y[0] + chroma[0], y[0] + chroma[1]
    g = (y[0] - _LUMA[0] * r - _LUMA[2] * b) / _LUMA[1]
    return torch.stack([r, g, b])


@dataclass(frozen=True)
class ChromaStats:
    """The source head's chroma: mean (2,) and the inverse square root of its covariance
    (2, 2), floored by ``CHROMA_FLOOR`` (so that a grey source still has a finite one)."""

    mean: torch.Tensor
    whiten: torch.Tensor

    def distance(self, chroma: torch.Tensor) -> torch.Tensor:
        """(...) Mahalanobis distance of chroma (2, ...) from the mean (the 2x2 product written
        out: an einsum over a 256² grid cost 4x as much on the CPU)."""
        d0, d1 = chroma[0] - self.mean[0], chroma[1] - self.mean[1]
        w = self.whiten
        return torch.hypot(w[0, 0] * d0 + w[0, 1] * d1, w[1, 0] * d0 + w[1, 1] * d1)


def source_chroma(source: torch.Tensor, labels: torch.Tensor) -> ChromaStats:
    """:class:`ChromaStats` of the (3, R, R) working source over its head (``labels`` (R, R)
    the source's own region labels: every label but the background); the whole window when the
    head covers no pixel."""
    _, chroma = to_luma_chroma(source.float())
    head = labels != int(Region.BACKGROUND)
    pixels = chroma[:, head] if bool(head.any()) else chroma.reshape(2, -1)
    mean = pixels.mean(1)
    d = pixels - mean[:, None]
    cov = d @ d.T / max(pixels.shape[1], 1) + CHROMA_FLOOR**2 * torch.eye(2, device=source.device)
    vals, vecs = torch.linalg.eigh(cov)
    whiten = vecs @ torch.diag(vals.rsqrt()) @ vecs.T
    return ChromaStats(mean=mean, whiten=whiten)


def keep_source_chroma(
    face: torch.Tensor,
    stats: ChromaStats,
    clamp: float = CHROMA_CLAMP,
    warped: torch.Tensor | None = None,
    visibility: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, R, R) ``face`` with each pixel's chroma pulled back onto ``clamp`` standard
    deviations of the source's (:class:`ChromaStats`) where it strays further; luma unchanged,
    the result clamped to [0, 1]. ``clamp`` <= 0 turns it off.

    With ``warped`` (3, R, R) and ``visibility`` (R, R) in [0, 1], a pixel may stray as far as
    the warp it was given where the source is visible: a red lip or a blue iris, beyond the
    head's spread, is the source's own colour, not an invented one."""
    if clamp <= 0:
        return face
    face = face.float()
    y, chroma = to_luma_chroma(face)
    dist = stats.distance(chroma)
    over = dist > clamp
    n_over = int(over.sum())
    if n_over == 0:
        return face
    # few pixels beyond the clamp (a colour source): change only those; many (a grey one, where
    # every tinted pixel is): the whole grid at once, which is 4x faster than indexing it all
    at: torch.Tensor | slice = over if n_over <= over.numel() // 4 else slice(None)
    d = dist[at]
    limit = torch.full_like(d, float(clamp))
    if warped is not None and visibility is not None:
        _, own = to_luma_chroma(warped.float()[:, at])
        limit = torch.maximum(limit, visibility.reshape(dist.shape)[at].float() * stats.distance(own))
    mean = stats.mean.reshape(2, *([1] * d.dim()))
    pulled = mean + (chroma[:, at] - mean) * (limit / d).clamp(max=1.0)
    out = face.clone()
    out[:, at] = from_luma_chroma(y[:, at], pulled)
    return out.clamp(0, 1)
