"""Generator stage: the conditioning bundle -> the output face at working resolution.

Laid out as diffusers lays out models, schedulers and pipelines:

- :mod:`.types`: the ``Generator`` protocol, ``GeneratorInput`` and ``GeneratorOutput``;
- :mod:`.warp_fill`: the learning-free generator (the warp, holes filled), fallback and baseline;
- :mod:`.mouth`: the mouth-interior prior used by the warp fill.
"""

from rt_portrait.generator.types import Generator, GeneratorInput, GeneratorOutput
from rt_portrait.generator.warp_fill import WarpFillGenerator, iris_discs, label_irises

__all__ = [
    "Generator",
    "GeneratorInput",
    "GeneratorOutput",
    "WarpFillGenerator",
    "iris_discs",
    "label_irises",
]
