"""Retargeting a driver whose first frame is not neutral: bounded placement, frontal reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rt_portrait.eval.metrics import rotation_angle_deg
from rt_portrait.head import Retargeter, load_template
from rt_portrait.head.retarget import off_axis_deg
from rt_portrait.head.types import HeadState, Pose, RetargetConfig


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
