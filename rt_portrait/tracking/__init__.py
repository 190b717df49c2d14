"""Tracking stage: frames -> 478 face-mesh landmarks in pixels, plus online smoothing; a
source portrait's person segmentation."""

from rt_portrait.core.image import ImageError, ImageLimits, check_size, fit_long_side, load_image, to_rgb
from rt_portrait.tracking.segmentation import SegmentationConfig, segment_person
from rt_portrait.tracking.smoothing import (
    LandmarkSmoother,
    OneEuroConfig,
    OneEuroFilter,
    SmoothingConfig,
)
from rt_portrait.tracking.tracker import FaceTracker, TrackerConfig, track_image
from rt_portrait.tracking.types import NUM_LANDMARKS, FaceObservation, TrackResult

__all__ = [
    "NUM_LANDMARKS",
    "FaceObservation",
    "FaceTracker",
    "ImageError",
    "ImageLimits",
    "LandmarkSmoother",
    "OneEuroConfig",
    "OneEuroFilter",
    "SegmentationConfig",
    "SmoothingConfig",
    "TrackResult",
    "TrackerConfig",
    "check_size",
    "fit_long_side",
    "load_image",
    "segment_person",
    "to_rgb",
    "track_image",
]
