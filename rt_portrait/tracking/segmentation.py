"""Person segmentation of a source portrait: where the image shows the person, where the background.

The head model covers the head with a generic skull (``head.shell``); a real head with ears
or full hair is wider, a narrow one narrower. The segmentation says where the person ends,
so that the skull can be fitted to it (``head.shell.fit_shell``).

mediapipe's selfie-segmentation model (bundled with mediapipe 0.10.21, 256 x 256 input) gives a
per-pixel probability that the pixel shows a person (head, hair, body). It runs once per
source portrait (a few tens of milliseconds), never per driver frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rt_portrait.core.image import ImageLimits, check_size, to_rgb
from rt_portrait.tracking.tracker import _filtered_native_stderr

SEGMENTATION_MODELS = {"general": 0, "landscape": 1}  # mediapipe's model_selection


@dataclass(frozen=True)
class SegmentationConfig:
    """``model``: "general" (256 x 256 input, the better edges) or "landscape" (144 x 256,
    faster); ``quiet`` hides mediapipe's native start-up lines."""

    model: str = "general"
    quiet: bool = True
    limits: ImageLimits = field(default_factory=ImageLimits)

    def validate(self) -> None:
        if self.model not in SEGMENTATION_MODELS:
            raise ValueError(
                f"unknown segmentation model {self.model!r}; expected one of {tuple(SEGMENTATION_MODELS)}"
            )


def segment_person(rgb: np.ndarray, config: SegmentationConfig | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the probability that each pixel of an RGB image shows a person.

    A malformed image raises ``ImageError`` (as the tracker does); an image without a person
    gives a mask near 0 everywhere."""
    cfg = config or SegmentationConfig()
    cfg.validate()
    image = to_rgb(rgb, name="image")
    check_size(image, cfg.limits, "image")
    # imported here: mediapipe takes ~1 s to import
    from mediapipe.python.solutions import selfie_segmentation

    with (
        _filtered_native_stderr(cfg.quiet),
        selfie_segmentation.SelfieSegmentation(model_selection=SEGMENTATION_MODELS[cfg.model]) as graph,
    ):
        mask = graph.process(np.ascontiguousarray(image)).segmentation_mask
    if mask is None:
        raise RuntimeError("selfie segmentation returned no mask")
    return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
