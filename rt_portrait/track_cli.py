"""``rt-portrait track``: per-frame face found, head pose, scale and expression magnitude."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt_portrait.core.video import MediaError, read_frames
from rt_portrait.head import fit_head, head_euler, load_template
from rt_portrait.tracking import FaceTracker, TrackerConfig, TrackResult, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def describe(track: TrackResult, frame: int) -> dict:
    """One JSON row: pose in degrees (see head/types.py for the convention), scale in pixels
    per template unit, and the mean distance of the fitted shape from the neutral template
    (template units)."""
    if not track.found:
        return {"frame": frame, "found": False, "message": track.message}
    template = load_template()
    state = fit_head(track.landmarks, track.image_size, template=template)
    yaw, pitch, roll = head_euler(state)
    expression = float(np.linalg.norm(state.canonical() - template.vertices, axis=1).mean())
    return {
        "frame": frame,
        "found": True,
        "yaw": round(float(yaw), 3),
        "pitch": round(float(pitch), 3),
        "roll": round(float(roll), 3),
        "scale": round(float(state.pose.scale), 3),
        "expression": round(expression, 5),
    }


def track_file(path: Path, every: int = 1, max_frames: int | None = None) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        with FaceTracker(TrackerConfig(static_image=True)) as tracker:
            return [describe(tracker.track(load_image(path)), 0)]
    rows = []
    try:
        frames = read_frames(path, every=every, max_frames=max_frames)
        with FaceTracker(TrackerConfig(static_image=False)) as tracker:
            for i, frame in enumerate(frames):
                rows.append(describe(tracker.track(frame), i * every))
    except MediaError as e:
        raise ValueError(f"{path}: not a readable image or video ({e})") from e
    return rows
