"""Typed outputs of the tracking stage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt_portrait.core.types import NUM_LANDMARKS

__all__ = ["NUM_LANDMARKS", "FaceObservation", "TrackResult"]


@dataclass(frozen=True)
class FaceObservation:
    """One tracked face.

    ``landmarks`` is (478, 3) float32 in the image's pixel frame: x to the right, y down,
    z away from the camera (mediapipe's relative depth scaled by the image width, so the
    three axes share one unit). Together these axes form a right-handed camera frame
    (OpenCV convention).
    """

    landmarks: np.ndarray
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float = 1.0


@dataclass(frozen=True)
class TrackResult:
    """What the tracker saw in one frame. Callers check ``found`` before using ``face``."""

    found: bool
    face: FaceObservation | None
    image_size: tuple[int, int]  # (height, width)
    num_faces: int = 0
    message: str = ""  # why no face was found, for logs and the UI
    # boxes (x0, y0, x1, y1, pixels) of all faces seen, as the detector or tracker reported
    # them; ``face`` is the one chosen by the selection rule (for UIs and checks)
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, image_size: tuple[int, int]) -> TrackResult:
        """A found face from landmarks tracked elsewhere (a stored track, packaged landmarks);
        its box is the landmarks' bounds."""
        x0, y0 = landmarks[:, :2].min(0)
        x1, y1 = landmarks[:, :2].max(0)
        face = FaceObservation(landmarks, (float(x0), float(y0), float(x1), float(y1)))
        return cls(True, face, image_size, num_faces=1)

    @property
    def landmarks(self) -> np.ndarray:
        if self.face is None:
            raise ValueError(f"no face in this frame: {self.message or 'not found'}")
        return self.face.landmarks
