"""The generator stage: conditioning bundle -> face at working resolution.

Every generator takes a ``GeneratorInput`` and returns a ``GeneratorOutput`` (the face and
the soft mask with which compose blends it into the full-resolution warp). The first one
is learning-free: it returns the warped source with holes (no source correspondence)
filled, and blends only where the warp has nothing to show. The distilled diffusion UNet
(DESIGN.md) joins later behind the same interface.

Coordinates: everything is on the working grid (R x R) of the window; ``landmarks`` are the
target head's 478 vertices in working pixels (x, y, z), the geometry behind the region masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from rt_portrait.compose import nonzero_box, push_pull_fill
from rt_portrait.flow.types import FlowFields, Region
from rt_portrait.head.template import Template, load_template
from rt_portrait.mouth import MouthPrior, load_mouth_prior, mouth_frame


@dataclass(frozen=True)
class GeneratorInput:
    warped: torch.Tensor  # (3, R, R) source warped by the flow
    source: torch.Tensor  # (3, R, R) the source window
    fields: FlowFields  # flow, visibility, encoding, depth, normal, labels
    history: torch.Tensor | None  # (3, R, R) previous output warped to now, or None
    source_labels: torch.Tensor | None = None  # (R, R) region labels of the source image
    landmarks: torch.Tensor | None = None  # (478, 3) target head vertices, working px


@dataclass(frozen=True)
class GeneratorOutput:
    face: torch.Tensor  # (3, R, R)
    alpha: torch.Tensor  # (1, R, R) blend weight of ``face`` over the full-resolution warp


class Generator(Protocol):
    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput: ...


class WarpFillGenerator:
    """Learning-free pass-through: the warp itself, holes filled.

    Pixels without a source correspondence are filled: hair, neck and background by a
    push-pull pyramid from visible pixels of their own kind; an open mouth that the source
    does not show by the mean open mouth of the train clips (:mod:`rt_portrait.mouth`) in
    the subject's skin tone. Face pixels keep the warp.

    ``mouth_prior=None`` (or inputs without ``landmarks``) falls back to a dark push-pull
    cavity of ``mouth_darkness``.
    """

    def __init__(self, mouth_darkness: float = 0.3, visible_at: float = 0.5,
                 mouth_prior: MouthPrior | None | str = "default", template: Template | None = None) -> None:
        self.mouth_darkness = mouth_darkness
        self.visible_at = visible_at
        self.mouth_prior = load_mouth_prior() if mouth_prior == "default" else mouth_prior
        self.template = template or load_template()

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        warped = inputs.warped
        fields = inputs.fields
        face = warped
        alpha = torch.zeros_like(warped[:1])
        vis = (fields.visibility / self.visible_at).clamp(0, 1)
        margin = max(8, warped.shape[-1] // 32)
        ghost = self._samples_face(inputs)
        # Hair, neck and background that the source does not show sample whatever hid them
        # there (often the face: a ghost of it): fill them from visible pixels of the same
        # kind. Face pixels without a source (a cheek or the side of the nose turning into
        # view) keep the warp, which stretches the nearby skin: more plausible than a blur,
        # and seam-free. The open mouth gets the mouth prior.
        for region in (Region.HEAD_SHELL, Region.BACKGROUND, Region.MOUTH_INTERIOR):
            mask = fields.region_mask(region)[None].float()
            hole = (1 - vis) * mask
            mouth = region == Region.MOUTH_INTERIOR
            if not mouth and ghost is not None:
                hole = hole * ghost  # hair sampling hidden hair still shows hair: keep the warp
            box = nonzero_box(hole > 0.25, margin=margin)
            if box is None:
                continue
            v0, v1, u0, u1 = box
            crop = (slice(None), slice(v0, v1), slice(u0, u1))
            fill = self._paint_mouth(inputs, box) if mouth else None
            if fill is None:
                source_w = vis[crop] if mouth else vis[crop] * mask[crop]  # fill from the same kind of pixels
                fill = push_pull_fill(warped[crop], source_w)
                if mouth:  # darker toward the inside of the cavity (low visibility = deep inside)
                    fill = fill * self.mouth_darkness * (0.6 + 0.4 * vis[crop])
            if face is warped:
                face = warped.clone()
            h = hole[crop]
            face[crop] = face[crop] * (1 - h) + fill * h
            alpha[crop] = torch.maximum(alpha[crop], h)
        return GeneratorOutput(face=face, alpha=alpha)

    def _paint_mouth(self, inputs: GeneratorInput, box: tuple[int, int, int, int]) -> torch.Tensor | None:
        """The mouth prior over the working-grid ``box`` in the source's skin tone, or None
        without a prior, landmarks or source labels."""
        if self.mouth_prior is None or inputs.landmarks is None or inputs.source_labels is None:
            return None
        skin_px = inputs.source[:, inputs.source_labels == int(Region.SKIN)]
        if skin_px.shape[1] == 0:
            return None
        tpl = self.template
        try:
            frame = mouth_frame(inputs.landmarks.detach().cpu().numpy(), tpl.group("inner_lip_upper"),
                                tpl.group("inner_lip_lower"), tpl.group("inner_mouth_corners"))
        except ValueError:  # a degenerate mouth has no interior to paint
            return None
        v0, v1, u0, u1 = box
        dev = inputs.warped.device
        ys = torch.arange(v0, v1, device=dev, dtype=torch.float32) + 0.5
        xs = torch.arange(u0, u1, device=dev, dtype=torch.float32) + 0.5
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return self.mouth_prior.paint(frame, x, y, skin_px.median(dim=1).values)

    @staticmethod
    def _samples_face(inputs: GeneratorInput) -> torch.Tensor | None:
        """(1, R, R) 1 where the flow samples a face pixel of the source, else 0."""
        if inputs.source_labels is None:
            return None
        labels = inputs.source_labels
        r = labels.shape[-1]
        base = torch.arange(r, device=labels.device, dtype=torch.float32) + 0.5
        flow = inputs.fields.flow
        u = (base[None, :] + flow[0]).floor().long().clamp(0, r - 1)
        v = (base[:, None] + flow[1]).floor().long().clamp(0, r - 1)
        sampled = labels[v, u]
        face = (sampled != int(Region.BACKGROUND)) & (sampled != int(Region.HEAD_SHELL))
        return face[None].float()
