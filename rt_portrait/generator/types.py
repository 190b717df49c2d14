"""The generator stage's interface: conditioning bundle -> face at working resolution.

Every generator takes a ``GeneratorInput`` and returns a ``GeneratorOutput``: the face and
the soft mask with which compose blends it into the full-resolution warp.

Coordinates: everything is on the working grid (R x R) of the window; ``landmarks`` are the
target head's 478 vertices in working pixels (x, y, z), the geometry behind the region masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.mouth import MouthPaint


@dataclass(frozen=True)
class GeneratorInput:
    warped: torch.Tensor  # (3, R, R) source warped by the flow
    source: torch.Tensor  # (3, R, R) the source window
    fields: FlowFields  # flow, visibility, encoding, depth, normal, labels
    history: torch.Tensor | None  # (3, R, R) previous output warped to now, or None
    source_labels: torch.Tensor | None = None  # (R, R) region labels of the source image
    landmarks: torch.Tensor | None = None  # (478, 3) target head vertices, working px
    # the flow from each target pixel to its left-right mirror partner in the source
    # (flow.scene.SceneBuilder.build_mirrored), computed on demand: a second flow pass, which
    # only a face the source shows badly needs. Only the warp fill reads it; not conditioning.
    mirror: Callable[[], FlowFields] | None = None

    def to(self, device: torch.device) -> GeneratorInput:
        """The tensors the conditioning reads (images, fields, history) on ``device``."""
        if self.warped.device == device:
            return self
        f = self.fields
        fields = replace(
            f,
            flow=f.flow.to(device),
            visibility=f.visibility.to(device),
            depth=f.depth.to(device),
            normal=f.normal.to(device),
            labels=f.labels.to(device),
            encoding=f.encoding.to(device),
        )
        return replace(
            self,
            warped=self.warped.to(device),
            source=self.source.to(device),
            fields=fields,
            history=None if self.history is None else self.history.to(device),
        )


@dataclass(frozen=True)
class GeneratorOutput:
    face: torch.Tensor  # (3, R, R)
    alpha: torch.Tensor  # (1, R, R) blend weight of ``face`` over the full-resolution warp
    # (2, R, R) working px, or None: the face was built on the warp displaced by this field
    # (each pixel sampling the warp at itself plus its displacement), so compose displaces the
    # full-resolution warp alike (the flow becomes the displaced flow, see compose.displace_flow)
    displacement: torch.Tensor | None = None
    # the mouth prior painted into the face (warp fill, or a model on a filled warp), for
    # compose to repaint at frame resolution; None when no mouth was painted
    mouth: MouthPaint | None = None


class Generator(Protocol):
    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput: ...
