"""The generator stage: conditioning bundle -> face at working resolution.

Every generator takes a ``GeneratorInput`` and returns a ``GeneratorOutput`` (the face and
the soft mask with which compose blends it into the full-resolution warp). The first one
is learning-free: it returns the warped source with holes (no source correspondence)
filled, and blends only where the warp has nothing to show. The distilled diffusion UNet
(DESIGN.md) joins later behind the same interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from rt_portrait.compose import nonzero_box, push_pull_fill
from rt_portrait.flow.types import FlowFields, Region


@dataclass(frozen=True)
class GeneratorInput:
    warped: torch.Tensor  # (3, R, R) source warped by the flow
    source: torch.Tensor  # (3, R, R) the source window
    fields: FlowFields  # flow, visibility, encoding, depth, normal, labels
    history: torch.Tensor | None  # (3, R, R) previous output warped to now, or None


@dataclass(frozen=True)
class GeneratorOutput:
    face: torch.Tensor  # (3, R, R)
    alpha: torch.Tensor  # (1, R, R) blend weight of ``face`` over the full-resolution warp


class Generator(Protocol):
    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput: ...


class WarpFillGenerator:
    """Learning-free pass-through: the warp itself, holes filled.

    The open mouth (no source correspondence) gets a push-pull fill from the surrounding
    pixels, darkened and shaded so it reads as a mouth cavity; every other pixel is the warp.
    """

    def __init__(self, mouth_darkness: float = 0.3, visible_at: float = 0.5) -> None:
        self.mouth_darkness = mouth_darkness
        self.visible_at = visible_at

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        warped = inputs.warped
        alpha = torch.zeros_like(warped[:1])
        mouth = inputs.fields.region_mask(Region.MOUTH_INTERIOR)
        box = nonzero_box(mouth, margin=max(8, warped.shape[-1] // 32))
        if box is None:
            return GeneratorOutput(face=warped, alpha=alpha)
        # Only the open mouth is a hole here. Other pixels without a source (a cheek or the
        # side of the nose turning into view, revealed hair or background) still sample the
        # source where the flow points, which stretches the nearby surface: more plausible
        # than a blurred fill, and seam-free. Visibility still marks them for a learned
        # generator.
        v0, v1, u0, u1 = box
        crop = (slice(None), slice(v0, v1), slice(u0, u1))
        vis = (inputs.fields.visibility[crop] / self.visible_at).clamp(0, 1)
        m = mouth[None][crop].float()
        fill = push_pull_fill(warped[crop], vis)
        # darker toward the inside of the cavity (low visibility = deep inside)
        fill = fill * (1 - m) + fill * self.mouth_darkness * (0.6 + 0.4 * vis) * m
        hole = (1 - vis) * m
        face = warped.clone()
        face[crop] = warped[crop] * (1 - hole) + fill * hole
        alpha[crop] = hole
        return GeneratorOutput(face=face, alpha=alpha)
