"""The one data path: driver frame -> tracking -> head -> flow -> generator -> compose.

``Animator`` holds what is computed once per source portrait; ``AnimatorSession`` holds
the per-driver state that must persist across frames (smoothing filters, the driver
reference frame, the previous output). The offline CLI, the benchmark and the live server
all drive this same object.

NOTE (integration in progress): the stage implementations are being filled in; until
then ``AnimatorSession.__call__`` returns the source unchanged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rt_portrait.head.types import Edits, HeadState, RetargetConfig


class NoFaceError(ValueError):
    """The source portrait has no detectable face."""


@dataclass
class AnimatorConfig:
    size: int = 256  # working resolution of the flow
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    edits: Edits = field(default_factory=Edits)
    device: str = "cpu"
    flow_backend: str = "auto"


@dataclass
class AnimatedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB at the source's resolution
    face_found: bool  # whether the driver frame had a face (False: motion held/eased)
    timings_ms: dict[str, float]  # per stage: track, fit, flow, warp, total
    head: HeadState | None = None


class Animator:
    def __init__(self, source: np.ndarray, config: AnimatorConfig | None = None, name: str = "source") -> None:
        self.config = config or AnimatorConfig()
        self.source = np.ascontiguousarray(source[..., :3])
        self.name = name

    def session(self) -> "AnimatorSession":
        return AnimatorSession(self)


class AnimatorSession:
    def __init__(self, animator: Animator) -> None:
        self.animator = animator
        self.edits = Edits(**vars(animator.config.edits))
        self.retarget = RetargetConfig(animator.config.retarget.mode, animator.config.retarget.strengths)
        self.size = animator.config.size

    def recalibrate(self) -> None:
        """Make the next driver frame the neutral reference (relative mode)."""

    def __call__(self, frame: np.ndarray) -> AnimatedFrame:
        t0 = time.perf_counter()
        out = self.animator.source.copy()
        return AnimatedFrame(out, True, {"total": (time.perf_counter() - t0) * 1e3})
