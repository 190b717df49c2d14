"""One-Euro smoothing: filter properties, and jitter / lag on a real talking-face video.

Definitions used here (pixels, the video's own resolution):

* jitter: mean over frames and landmarks of the norm of the second difference
  ``|x[t+1] - 2 x[t] + x[t-1]|`` of the image-plane (x, y) landmark positions. Noise makes it
  large; smooth real motion barely contributes.
* lag to a step: a displacement is added to the real track from frame ``k`` on. The response
  is the smoothed track with the step minus the smoothed track without it, projected on the
  displacement, as a fraction of the step. The raw response reaches 1/2 at frame ``k``; the
  lag is how many frames later the smoothed response first reaches 1/2. Measured at several
  ``k`` along the clip, the worst case counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import av
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rt_portrait.core.assets import pyfeat_file
from rt_portrait.core.geometry import umeyama
from rt_portrait.head import HeadStateSmoother
from rt_portrait.head.types import HeadState, Pose
from rt_portrait.tracking import (
    FaceTracker,
    LandmarkSmoother,
    OneEuroConfig,
    OneEuroFilter,
    SmoothingConfig,
    TrackerConfig,
)
from rt_portrait.tracking.smoothing import face_size

FRAMES = 144  # 6 s of the 24 fps clip: tracked in about a second
STEP_FRAMES = (30, 60, 90, 120)


@pytest.fixture(scope="module")
def talking_track() -> tuple[np.ndarray, float]:
    """(T, 478, 3) raw landmarks (pixels) of the real clip, and its frame rate."""
    points = []
    with av.open(str(pyfeat_file("WolfgangLanger_Pexels.mp4"))) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        with FaceTracker(TrackerConfig(max_faces=1)) as tracker:
            for index, frame in enumerate(container.decode(stream)):
                if index >= FRAMES:
                    break
                result = tracker.track(frame.to_ndarray(format="rgb24"))
                assert result.found, f"frame {index}: {result.message}"
                points.append(result.landmarks.astype(np.float64))
    return np.stack(points), fps


def jitter(track: np.ndarray) -> float:
    xy = track[..., :2]
    return float(np.linalg.norm(xy[2:] - 2 * xy[1:-1] + xy[:-2], axis=-1).mean())


def step_lag(
    run: Callable[[np.ndarray], np.ndarray], track: np.ndarray, step: np.ndarray, ks: Sequence[int]
) -> int:
    """Worst lag (frames) of the smoothed response to ``step`` (added from frame k on)."""
    base = run(track)
    worst = -1
    for k in ks:
        stepped = track.copy()
        stepped[k:] += step
        response = ((run(stepped) - base) * step).sum(-1).mean(-1) / float((step * step).sum(-1).mean())
        assert response[k - 1] == pytest.approx(0.0, abs=1e-9), "causal: nothing moves before the step"
        crossed = np.nonzero(response[k:] >= 0.5)[0]
        assert crossed.size, "the smoothed signal must follow the step"
        worst = max(worst, int(crossed[0]))
    return worst


# -- the filter itself ----------------------------------------------------------------------
def test_constant_input_stays_constant() -> None:
    value = np.random.default_rng(0).normal(size=(5, 4, 3))
    filt = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.5))
    outputs = [filt(value) for _ in range(20)]
    assert all(np.array_equal(out, value) for out in outputs)


def test_first_sample_passes_and_reset_forgets() -> None:
    filt = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0))
    assert filt(np.array([3.0]))[0] == 3.0
    moved = filt(np.array([5.0]))[0]
    assert 3.0 < moved < 5.0  # smoothed toward the new value, without overshoot
    filt.reset()
    assert filt(np.array([-7.0]))[0] == -7.0  # no memory of the old values
    with pytest.raises(ValueError, match="shape"):
        filt(np.zeros(2))


def test_step_converges_monotonically_and_speed_opens_the_cutoff() -> None:
    calm = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=0.0), fps=30)
    eager = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=1.0), fps=30)
    for filt in (calm, eager):
        filt(np.zeros(1))
    calm_out = np.array([calm(np.ones(1))[0] for _ in range(60)])
    eager_out = np.array([eager(np.ones(1))[0] for _ in range(60)])
    assert np.all(np.diff(calm_out) > 0) and calm_out[-1] < 1.0 and calm_out[-1] > 0.99
    assert eager_out[0] > calm_out[0]  # a fast change gets a higher cutoff: less lag


def test_timestamps_match_the_assumed_rate() -> None:
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(30, 6))
    implicit = OneEuroFilter(OneEuroConfig(1.0, 0.3), fps=24.0)
    explicit = OneEuroFilter(OneEuroConfig(1.0, 0.3), fps=24.0)  # fps: only for repeated stamps
    a = [implicit(x) for x in samples]
    b = [explicit(x, t=10.0 + i / 24.0) for i, x in enumerate(samples)]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # a timestamp that does not advance counts as one nominal period (no division by zero)
    repeated = explicit(samples[0], t=10.0 + 29 / 24.0)
    np.testing.assert_allclose(repeated, implicit(samples[0]), rtol=1e-9, atol=1e-12)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroConfig(min_cutoff=0.0, beta=1.0)
    filt = OneEuroFilter(OneEuroConfig(1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        filt(np.array([np.nan]))


# -- landmarks on the real video ------------------------------------------------------------
def smooth_landmarks(track: np.ndarray, fps: float, config: SmoothingConfig | None = None) -> np.ndarray:
    smoother = LandmarkSmoother(config, fps=fps)
    return np.stack([smoother(points) for points in track])


def test_landmark_smoothing_halves_jitter(talking_track: tuple[np.ndarray, float]) -> None:
    track, fps = talking_track
    raw, smoothed = jitter(track), jitter(smooth_landmarks(track, fps))
    assert raw > 0.2  # the raw track does jitter (pixels)
    assert smoothed <= 0.5 * raw, f"jitter {raw:.3f} px -> {smoothed:.3f} px"


@pytest.mark.parametrize("fraction", [0.02, 0.05, 0.1])
def test_landmark_smoothing_adds_at_most_one_frame_of_lag(
    talking_track: tuple[np.ndarray, float], fraction: float
) -> None:
    track, fps = talking_track
    size = face_size(track[0])
    step = np.array([fraction * size * 0.8, fraction * size * 0.6, 0.0])  # an oblique head move
    assert step_lag(lambda x: smooth_landmarks(x, fps), track, step, STEP_FRAMES) <= 1


def test_landmark_smoothing_is_scale_aware(talking_track: tuple[np.ndarray, float]) -> None:
    """The same motion of a face twice as large (in pixels) is smoothed identically."""
    track, fps = talking_track
    small = smooth_landmarks(track[:48], fps)
    large = smooth_landmarks(2.0 * track[:48], fps)
    np.testing.assert_allclose(large, 2.0 * small, rtol=1e-9, atol=1e-6)


def test_disabled_smoothing_passes_through(talking_track: tuple[np.ndarray, float]) -> None:
    track, fps = talking_track
    np.testing.assert_array_equal(
        smooth_landmarks(track[:10], fps, SmoothingConfig(enabled=False)), track[:10]
    )


# -- head states on the real video ----------------------------------------------------------
def similarity_fit(canonical: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares rotation, scale, translation with observed ~ s R canonical + t."""
    scale, rotation, translation = umeyama(canonical, observed)
    return rotation, scale, translation


def head_states(track: np.ndarray, image_size: tuple[int, int]) -> list[HeadState]:
    """Head states of the real track: identity = first frame, unit RMS radius, expression =
    the rest of each frame in that canonical frame (independent of the head-model code)."""
    identity = track[0] - track[0].mean(0)
    identity /= np.sqrt((identity**2).sum(1).mean())
    states = []
    for points in track:
        rotation, scale, translation = similarity_fit(identity, points)
        canonical = (points - translation) @ rotation / scale
        states.append(
            HeadState(Pose(rotation, translation, scale), identity, canonical - identity, image_size)
        )
    return states


def smooth_states(
    states: Sequence[HeadState], fps: float, config: SmoothingConfig | None = None
) -> list[HeadState]:
    smoother = HeadStateSmoother(config, fps=fps)
    return [smoother(state) for state in states]


def vertices(states: Sequence[HeadState]) -> np.ndarray:
    return np.stack([s.vertices() for s in states])


def test_head_state_round_trip(talking_track: tuple[np.ndarray, float]) -> None:
    track, _ = talking_track
    np.testing.assert_allclose(vertices(head_states(track[:5], (360, 640))), track[:5], atol=1e-6)


def test_head_state_smoothing_halves_jitter(talking_track: tuple[np.ndarray, float]) -> None:
    track, fps = talking_track
    states = head_states(track, (360, 640))
    smoothed = smooth_states(states, fps)
    assert jitter(vertices(smoothed)) <= 0.5 * jitter(vertices(states))
    for state in smoothed:
        rotation = state.pose.rotation
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert state.identity is states[0].identity  # identity is not filtered


@pytest.mark.parametrize(("yaw_deg", "shift"), [(5.0, 0.0), (10.0, 0.0), (0.0, 0.02), (0.0, 0.05)])
def test_head_state_smoothing_adds_at_most_one_frame_of_lag(
    talking_track: tuple[np.ndarray, float], yaw_deg: float, shift: float
) -> None:
    """A step in head pose (a yaw turn about the head centre, or a sideways move) on top of
    the real motion; the response is measured on the posed vertices."""
    track, fps = talking_track
    states = head_states(track, (360, 640))
    turn = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix()
    offset = np.array([shift * face_size(track[0]), 0.0, 0.0])

    def stepped_from(k: int) -> list[HeadState]:
        out = list(states)
        for i in range(k, len(out)):
            pose = out[i].pose
            out[i] = HeadState(
                Pose(pose.rotation @ turn, pose.translation + offset, pose.scale),
                out[i].identity,
                out[i].expression,
                out[i].image_size,
            )
        return out

    base = vertices(smooth_states(states, fps))
    worst = -1
    for k in STEP_FRAMES:
        stepped = stepped_from(k)
        step = vertices(stepped) - vertices(states)  # per vertex, per frame (the raw response)
        response = ((vertices(smooth_states(stepped, fps)) - base) * step).sum(-1).mean(-1)
        response /= (step * step).sum(-1).mean(-1) + 1e-12
        assert abs(response[k - 1]) < 1e-9
        worst = max(worst, int(np.nonzero(response[k:] >= 0.5)[0][0]))
    assert worst <= 1


def test_head_state_smoother_reset_and_disable(talking_track: tuple[np.ndarray, float]) -> None:
    track, fps = talking_track
    states = head_states(track[:20], (360, 640))
    smoother = HeadStateSmoother(fps=fps)
    for state in states[:10]:
        smoother(state)
    smoother.reset()
    first = smoother(states[15])
    np.testing.assert_array_equal(first.vertices(), states[15].vertices())
    off = HeadStateSmoother(SmoothingConfig(enabled=False))
    assert off(states[3]) is states[3]
