"""Typed state of the parametric head model.

Frames
------
* camera frame: the image's pixel frame, x right, y down, z away from the camera
  (right-handed, OpenCV convention), unit = pixels of the image the state belongs to.
* canonical frame: the template's frame, same axis directions, centred on the head,
  unit-free (the template has unit RMS radius). ``camera = scale * canonical @ R.T + t``.

Euler angles (degrees) are reported in the head-facing convention users expect:
positive yaw turns the face to its own left (toward the image's right), positive pitch
tilts the face down (nose toward the chin), positive roll rotates the head
counter-clockwise in the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class Pose:
    rotation: np.ndarray  # (3, 3) float64, canonical -> camera
    translation: np.ndarray  # (3,) pixels
    scale: float  # pixels per canonical unit

    def apply(self, canonical: np.ndarray) -> np.ndarray:
        return self.scale * canonical @ self.rotation.T + self.translation


@dataclass(frozen=True)
class HeadState:
    """Identity + expression in the canonical frame, placed by a similarity pose."""

    pose: Pose
    identity: np.ndarray  # (478, 3) the subject's neutral shape, canonical frame
    expression: np.ndarray  # (478, 3) offsets from identity, canonical frame
    image_size: tuple[int, int]  # (height, width) of the image the pose refers to

    def canonical(self) -> np.ndarray:
        return self.identity + self.expression

    def vertices(self) -> np.ndarray:
        """(478, 3) vertices in the camera frame (pixels)."""
        return self.pose.apply(self.canonical())


@dataclass
class Edits:
    """User edits applied on top of any driven pose and expression. 0 = no change.

    Ranges: yaw, pitch, roll in degrees [-45, 45]; gaze_x, gaze_y in [-1, 1]; the others in
    [0, 1] except smile and brow_raise, which accept [-1, 1] (negative = frown / lower).
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    jaw_open: float = 0.0
    smile: float = 0.0
    blink_left: float = 0.0
    blink_right: float = 0.0
    brow_raise: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def is_identity(self) -> bool:
        return all(getattr(self, f.name) == 0.0 for f in fields(self))


@dataclass
class Strengths:
    """Per-channel gains of driver motion when retargeting (1 = follow the driver)."""

    pose: float = 1.0
    expression: float = 1.0
    eyes: float = 1.0
    mouth: float = 1.0


RETARGET_MODES = ("relative", "absolute")
REFERENCES = ("first", "frontal", "median")


@dataclass
class RetargetConfig:
    mode: str = "relative"  # "relative" (to the driver reference frame) or "absolute"
    strengths: Strengths = field(default_factory=Strengths)
    # Relative mode: which driver frame is the neutral reference. "first": the first frame;
    # "frontal": the most frontal frame of the first ``reference_window_s`` seconds (a driver
    # that starts looking down or away then does not tilt the avatar for the whole stream);
    # "median": the driver's typical face over that window (per-vertex median shape, medoid
    # rotation, median placement), so a first frame with a hand over the mouth, a blink or a
    # word does not become everyone's neutral. A live stream starts wherever the connection
    # does, so the server and ``cam`` use "median".
    reference: str = "first"
    # None: 1 s for "frontal", 2 s for "median" (a transient must be under half of it)
    reference_window_s: float | None = None
    # Bounds on the relative placement (so a driver moving toward the camera or across the
    # frame keeps the avatar in frame): the translation change is at most ``max_shift`` head
    # radii (pose.scale), the scale change within [1 / max_zoom, max_zoom], and the head centre
    # stays at least ``frame_margin`` head radii inside the frame. None disables a bound.
    max_shift: float | None = 1.0
    max_zoom: float | None = 1.25
    frame_margin: float | None = 0.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming a bad setting (the fields may also change live)."""
        if self.mode not in RETARGET_MODES:
            raise ValueError(f"retarget mode must be one of {RETARGET_MODES}, got {self.mode!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"retarget reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.reference_window_s is not None and not self.reference_window_s >= 0:
            raise ValueError(f"reference_window_s must be >= 0 seconds, got {self.reference_window_s}")
