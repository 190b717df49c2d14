"""Smoothing runs on the driver frames' presentation times. Before: the One-Euro time
step was frame index / 30 fps, so when frames were dropped under load every step was too
short and the avatar lagged (over-smoothed) exactly when the server was busiest."""

from __future__ import annotations

import asyncio
import fractions
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from av import VideoFrame

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import face_frames

from rt_portrait.core.assets import default_portrait
from rt_portrait.generator import WarpFillGenerator
from rt_portrait.head.types import Edits, RetargetConfig
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.server.session import MediaClock, Session, SessionLimits
from rt_portrait.tracking import FaceTracker, TrackerConfig

RTP = fractions.Fraction(1, 90000)


def test_media_clock_follows_pts_across_drops_wraps_and_restarts() -> None:
    clock = MediaClock()
    # 30 fps, frames 2, 3 and 6 dropped; arrival times are jittery and do not matter
    kept = [0, 1, 4, 5, 7]
    times = [clock(k * 3000 * RTP, 100.0 + 0.04 * i) for i, k in enumerate(kept)]
    assert np.allclose(times, [k / 30 for k in kept])
    # a sender restart (a jump of hours), then the 32-bit RTP timestamp wrapping: both steps
    # come from the arrival times instead
    before = times[-1]
    t1 = clock((2**32 - 3000) * RTP, 200.0)
    assert abs((t1 - before) - (200.0 - 100.16)) < 1e-9
    t2 = clock(0 * RTP, 200.033)
    assert abs((t2 - t1) - 0.033) < 1e-9
    assert abs(clock(3000 * RTP, 200.2) - t2 - 1 / 30) < 1e-9  # and pts steps again after it
    # no pts at all: arrival times
    t0 = clock(None, 300.0)
    assert abs(clock(None, 300.1) - t0 - 0.1) < 1e-9


def test_session_passes_the_frame_pts_to_the_pipeline() -> None:
    seen: list[float | None] = []

    class Recorder:
        size = 64
        edits = Edits()
        retarget = RetargetConfig()
        source = np.zeros((64, 64, 3), np.uint8)

        def recalibrate(self) -> None:
            pass

        def close(self) -> None:
            pass

        def __call__(self, frame: np.ndarray, t: float | None = None) -> SimpleNamespace:
            seen.append(t)
            return SimpleNamespace(image=frame, face_found=True, timings_ms={})

    async def scenario() -> None:
        animator = SimpleNamespace(
            config=SimpleNamespace(size=64, device="cpu"),
            source=np.zeros((64, 64, 3), np.uint8),
            name="x",
            session=Recorder,
            generator=WarpFillGenerator(mouth_prior=None),
        )
        session = Session("whip", animator, SessionLimits(), on_closed=lambda s: None)  # type: ignore[arg-type]
        for i, k in enumerate([0, 1, 2, 5, 6, 9]):  # frames 3, 4, 7, 8 were dropped
            frame = VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = 1234 + k * 3000, RTP
            session._process(frame, 10.0 + i / 30)  # arrivals as if nothing had been dropped
        await session.close()

    asyncio.run(scenario())
    assert np.allclose(seen, [k / 30 for k in [0, 1, 2, 5, 6, 9]]), seen


def test_dropped_frames_smoothed_on_their_timestamps_stay_close_to_the_full_rate() -> None:
    """Every other frame dropped: smoothing on pts tracks the full-rate result; the old
    index-based clock (t=None) lags behind it."""
    frames = face_frames(256, 48, start=150)  # a talking clip with head motion
    with FaceTracker(TrackerConfig(static_image=False, max_faces=1)) as tracker:
        tracks = [tracker.track(f) for f in frames]
    animator = Animator(default_portrait(), AnimatorConfig(size=96, generator="warp"))

    def run(indices: list[int], use_pts: bool) -> dict[int, np.ndarray]:
        session = animator.session(fps=30.0)
        out = {}
        try:
            for k in indices:
                state, _, _ = session.drive_track(tracks[k], t=k / 30.0 if use_pts else None)
                out[k] = state.vertices()
        finally:
            session.close()
        return out

    full = run(list(range(len(tracks))), use_pts=True)
    half = list(range(0, len(tracks), 2))
    on_pts, on_index = run(half, use_pts=True), run(half, use_pts=False)
    err_pts = np.mean([np.abs(on_pts[k] - full[k]).mean() for k in half[4:]])
    err_index = np.mean([np.abs(on_index[k] - full[k]).mean() for k in half[4:]])
    assert err_pts < 0.8 * err_index, (err_pts, err_index)
