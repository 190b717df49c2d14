"""A source sharper than the model's training clips: the diffusion generator is shown the source
with its detail brought down to the level of those clips, and the rest is added back to its
face where the frame shows the source (``DiffusionConfig.source_detail``; README: "A
portrait's own detail").

The shipped model learned from video frames: on its working grid their faces' finest band has
a standard deviation of about 0.010 (the median over the train split's clips), where a photo
portrait's is often 2-5 times that. Shown such a source, the one-step model answers with the
texture it knows, so its face loses the portrait's own detail, and with it part of the likeness
(dlib's identity distance across people). Splitting the source into a base at the training
level and the detail above it keeps the model in its training distribution, and the detail,
carried by the flow like the warp, is the portrait's own. A source at or below the level is
left as it is: the validation clips, mostly, whose scores barely move.

Torch only, so the CLI and configs can name the default without loading the diffusion module.
"""

from __future__ import annotations

import torch

from rt_portrait.core.fill import gaussian_blur
from rt_portrait.core.types import Region
from rt_portrait.generator.texture import fine_band

# The standard deviation of the finest band (each pixel minus the mean of its 4 neighbours) of
# the grey source over its face on the 256 working grid, median over the first frames of the
# 77 train clips the shipped weights learned from (scripts/source_detail_level.py; quartiles
# 0.0090 and 0.0137).
SOURCE_DETAIL = 0.0110
FACE_REGIONS = (Region.SKIN, Region.EYES, Region.IRIS, Region.BROWS, Region.NOSE, Region.LIPS)
MIN_FACE_PIXELS = 64  # fewer face pixels than this: too few to measure, the source stays whole
MAX_SIGMA = 4.0  # working pixels; beyond it a face has no detail left worth splitting off


def face_mask(labels: torch.Tensor) -> torch.Tensor:
    """(R, R) bool: the face's own regions (skin, eyes, brows, nose, lips) in a label map."""
    regions = torch.tensor([int(r) for r in FACE_REGIONS], device=labels.device)
    return torch.isin(labels, regions)


def face_detail(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Standard deviation of the grey (3, R, R) ``image``'s finest band over ``mask`` (R, R)."""
    band = fine_band(image.float().mean(0, keepdim=True)[None])[0, 0]
    return float(band[mask].std())


def detail_sigma(source: torch.Tensor, labels: torch.Tensor, level: float, iterations: int = 10) -> float:
    """The Gaussian sigma (working pixels) that brings the (3, R, R) ``source``'s face detail
    down to ``level``, found by bisection; 0 when it is there already, when ``level`` is 0
    (off), or when ``labels`` (R, R) show too little face to measure."""
    if level <= 0:
        return 0.0
    mask = face_mask(labels.reshape(source.shape[-2:]))
    if int(mask.sum()) < MIN_FACE_PIXELS or face_detail(source, mask) <= level:
        return 0.0
    lo, hi = 0.0, MAX_SIGMA
    if face_detail(gaussian_blur(source[None].float(), hi)[0], mask) > level:
        return hi
    for _ in range(iterations):  # detail falls monotonically with sigma
        mid = 0.5 * (lo + hi)
        if face_detail(gaussian_blur(source[None].float(), mid)[0], mask) > level:
            lo = mid
        else:
            hi = mid
    return hi


def split_detail(source: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, detail) of a (3, R, R) image: its Gaussian blur with ``sigma`` and the rest."""
    base = gaussian_blur(source[None].float(), sigma)[0]
    return base, source - base
