"""Per-frame cost of tracking (video mode) on consecutive real frames, CPU.

Run: ``python -m pytest bench/bench_tracking.py --benchmark-enable``. Goal: median <= 6 ms.
Frames are the real talking-face clip resized so that the longest side is 256 or 512 px;
each benchmark round tracks the next frame of the loop, so the tracker stays in tracking
mode as on a live stream. ``max_faces=1`` is the webcam setting; the default (4) keeps the
detector running too, and is measured as well.
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import cv2
import numpy as np
import pytest

from rt_portrait.core.assets import pyfeat_file
from rt_portrait.tracking import FaceTracker, LandmarkSmoother, TrackerConfig

N_FRAMES = 96  # 4 s of video, looped


def clip_frames(longest_side: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(pyfeat_file("WolfgangLanger_Pexels.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= N_FRAMES:
                break
            rgb = frame.to_ndarray(format="rgb24")
            height, width = rgb.shape[:2]
            factor = longest_side / max(height, width)
            size = (round(width * factor), round(height * factor))
            frames.append(np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)))
    return frames


class FrameLoop:
    """Yields consecutive frames forever (the wrap-around is one jump every 4 s)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.index = 0

    def next(self) -> np.ndarray:
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        return frame


@pytest.fixture(scope="module", params=[256, 512], ids=lambda side: f"{side}px")
def frames(request: pytest.FixtureRequest) -> list[np.ndarray]:
    return clip_frames(request.param)


@pytest.fixture(params=[1, 4], ids=lambda n: f"max_faces={n}")
def tracker(request: pytest.FixtureRequest) -> Iterator[FaceTracker]:
    with FaceTracker(TrackerConfig(max_faces=request.param)) as tracker:
        yield tracker


def test_track_frame(benchmark, frames: list[np.ndarray], tracker: FaceTracker) -> None:  # type: ignore[no-untyped-def]
    loop = FrameLoop(frames)
    for _ in range(10):  # warm up: graph start-up and the first detection
        tracker.track(loop.next())
    result = benchmark.pedantic(lambda: tracker.track(loop.next()), rounds=300, iterations=1, warmup_rounds=5)
    assert result.found


def test_track_and_smooth_frame(benchmark, frames: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    loop = FrameLoop(frames)
    smoother = LandmarkSmoother()
    with FaceTracker(TrackerConfig(max_faces=1)) as tracker:
        for _ in range(10):
            tracker.track(loop.next())

        def step() -> np.ndarray:
            return smoother(tracker.track(loop.next()).landmarks)

        out = benchmark.pedantic(step, rounds=300, iterations=1, warmup_rounds=5)
    assert out.shape == (478, 3)
