"""Parametric head model on real faces (rt_portrait.core.assets; no ../shared needed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.flow.types import Region
from rt_portrait.head import (
    Edits,
    HeadState,
    RetargetConfig,
    Retargeter,
    Strengths,
    apply_edits,
    background_anchors,
    build_shell,
    euler_from_rotation,
    fit_head,
    fit_similarity,
    head_euler,
    load_template,
    rotation_from_euler,
)
from rt_portrait.head.shell import ShellFit, fit_fringe, fit_shell, shell_geometry
from rt_portrait.head.types import Pose
from rt_portrait.tracking import FaceTracker, TrackerConfig


def track_landmarks(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    with FaceTracker(TrackerConfig(static_image=True)) as tracker:
        res = tracker.track(np.ascontiguousarray(rgb))
    assert res.found, res.message
    return res.landmarks, res.image_size


def fit_image(rgb: np.ndarray) -> HeadState:
    lm, size = track_landmarks(rgb)
    return fit_head(lm, size)


@pytest.fixture(scope="module")
def template():
    return load_template()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return default_portrait("astronaut")


@pytest.fixture(scope="module")
def source(astronaut) -> HeadState:
    return fit_image(astronaut)


@pytest.fixture(scope="module")
def video_frames() -> list[np.ndarray]:
    """One frame per second of the real talking-face clip (first 19 s)."""
    import av

    frames = []
    with av.open(str(pyfeat_file("WolfgangLanger_Pexels.mp4"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 24 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= 19:
                break
    return frames


@pytest.fixture(scope="module")
def turned_frame(video_frames) -> np.ndarray:
    """The frame of the clip whose head is farthest from frontal in both yaw and roll."""
    best, score = None, -1.0
    with FaceTracker(TrackerConfig(static_image=True)) as tracker:
        for f in video_frames:
            res = tracker.track(f)
            if res.found:
                yaw, _, roll = head_euler(fit_head(res.landmarks, res.image_size))
                if min(abs(yaw), abs(roll)) > score:
                    best, score = f, min(abs(yaw), abs(roll))
    assert best is not None and score > 4.0, "the clip has no clearly turned and rolled head"
    return best


# --------------------------------------------------------------------------- template


def test_template_sanity(template):
    v, tri = template.vertices, template.triangles
    assert v.shape == (478, 3)
    assert tri.ndim == 2 and tri.shape[1] == 3 and tri.min() >= 0 and tri.max() < 478
    assert len(np.unique(np.sort(tri, axis=1), axis=0)) == len(tri)
    np.testing.assert_allclose(np.sqrt((v**2).sum(1).mean()), 1.0, atol=1e-5)
    np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)
    # left/right symmetric about x = 0
    np.testing.assert_allclose(v[template.mirror] * [-1, 1, 1], v, atol=1e-5)
    # manifold-ish: no edge in more than two triangles; normals mostly face the camera (-z)
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() <= 2
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    assert (n[:, 2] < 0).mean() > 0.98
    # face looks along -z: nose tip in front of the eye corners; forehead above the chin
    assert v[1, 2] < v[33, 2] and v[10, 1] < v[152, 1]


def test_template_regions_and_groups(template):
    g, v = template.groups, template.vertices
    # the subject's left is the image right (+x) on the frontal template
    assert v[g["left_iris"][0], 0] > 0 > v[g["right_iris"][0], 0]
    assert v[g["left_brow"], 0].min() > 0 and v[g["right_brow"], 0].max() < 0
    for side in ("left", "right"):
        up, lo = g[f"{side}_eye_upper"], g[f"{side}_eye_lower"]
        assert len(up) == len(lo) and (v[up, 1] < v[lo, 1]).all()  # upper lid above the lower
        assert (template.regions[g[f"{side}_iris"]] == Region.EYES).all()
    assert len(g["inner_lip_upper"]) == len(g["inner_lip_lower"])
    assert (template.regions[g["outer_lip_loop"]] == Region.LIPS).all()
    assert template.regions[1] == Region.NOSE
    used = set(np.unique(template.regions))
    assert used <= {int(r) for r in (Region.SKIN, Region.EYES, Region.BROWS, Region.NOSE, Region.LIPS)}
    assert len(used) == 5
    w = g["jaw_weights"]
    assert (w[g["lower_lip"]] >= 0.5).all() and w[152] == 1.0
    # the upper lip stays (0 at its centre, tapering to the hinge value 0.5 at the corners)
    assert (w[g["inner_lip_upper"]] < w[g["inner_lip_lower"]]).all() and w[g["inner_lip_upper"]].min() == 0
    assert g["rigid"][g["inner_lip_lower"]].max() == 0 and g["rigid"][g["left_eye_upper"]].max() == 0


# --------------------------------------------------------------------------- rotation


def test_euler_round_trip():
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in zip(
        rng.uniform(-89, 89, 200), rng.uniform(-179, 179, 200), rng.uniform(-179, 179, 200), strict=False
    ):
        r = rotation_from_euler(yaw, pitch, roll)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(euler_from_rotation(r), (yaw, pitch, roll), atol=1e-8)
        np.testing.assert_allclose(rotation_from_euler(*euler_from_rotation(r)), r, atol=1e-12)


def test_slerp_of_a_near_identity_rotation_is_finite():
    # Regression (#10): retargeting with pose strength 0 slerps driver @ reference.T, which is
    # R @ R.T on the reference frame itself: the identity up to rounding, with a zero skew
    # part. The hand-written axis-angle slerp divided that zero by sin(~1e-8) and returned NaN
    # for about a third of such rotations, one non-finite head per session.
    from rt_portrait.head.rotation import slerp_to_identity

    rng = np.random.default_rng(0)
    for yaw, pitch, roll in zip(
        rng.uniform(-89, 89, 300), rng.uniform(-179, 179, 300), rng.uniform(-179, 179, 300), strict=False
    ):
        r = rotation_from_euler(yaw, pitch, roll)
        for t in (0.0, 0.5, 1.0):
            out = slerp_to_identity(r @ r.T, t)
            assert np.isfinite(out).all(), (yaw, pitch, roll, t)
            np.testing.assert_allclose(out, np.eye(3), atol=1e-9)
        half = slerp_to_identity(r, 0.5)
        np.testing.assert_allclose(half @ half, r, atol=1e-9)


def test_euler_directions():
    nose = np.array([0.0, 0.0, -1.0])  # the face looks at the camera
    assert (rotation_from_euler(30, 0, 0) @ nose)[0] > 0.4  # turns toward the image right
    assert (rotation_from_euler(0, 30, 0) @ nose)[1] > 0.4  # tilts down (y down)
    right = rotation_from_euler(0, 0, 30) @ np.array([1.0, 0.0, 0.0])
    assert right[1] < -0.4  # +x end goes up on screen: counter-clockwise


# --------------------------------------------------------------------------- fitting


def test_fit_similarity_recovers_transform(template):
    rot = rotation_from_euler(20, -10, 5)
    dst = 37.0 * template.vertices @ rot.T + np.array([100.0, 50.0, 3.0])
    pose = fit_similarity(template.vertices, dst, template.groups["rigid"])
    np.testing.assert_allclose(pose.rotation, rot, atol=1e-9)
    assert pose.scale == pytest.approx(37.0)
    np.testing.assert_allclose(pose.apply(template.vertices), dst, atol=1e-8)


def test_fit_head_frontal_and_errors(source, astronaut):
    yaw, pitch, roll = head_euler(source)
    assert abs(yaw) < 5 and abs(roll) < 5 and abs(pitch) < 12
    np.testing.assert_allclose(source.vertices(), track_landmarks(astronaut)[0], atol=1e-3)
    assert np.abs(source.expression).max() == 0
    with pytest.raises(ValueError, match="landmarks"):
        fit_head(np.zeros((468, 3)), (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        fit_head(np.full((478, 3), np.nan), (10, 10))


def test_mirror_flips_yaw_and_roll(turned_frame):
    yaw, pitch, roll = head_euler(fit_image(turned_frame))
    myaw, mpitch, mroll = head_euler(fit_image(np.fliplr(turned_frame)))
    assert np.sign(myaw) == -np.sign(yaw) and np.sign(mroll) == -np.sign(roll)
    assert myaw == pytest.approx(-yaw, abs=3.0)
    assert mroll == pytest.approx(-roll, abs=3.0)
    assert mpitch == pytest.approx(pitch, abs=3.0)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_image_rotation_changes_roll(name):
    from skimage.transform import rotate

    img = default_portrait(name)
    # skimage rotates counter-clockwise for a positive angle: roll must grow by that much
    rot = (rotate(img, 20.0, resize=True, mode="edge") * 255).astype(np.uint8)
    roll0 = head_euler(fit_image(img))[2]
    roll1 = head_euler(fit_image(rot))[2]
    assert roll1 - roll0 == pytest.approx(20.0, abs=1.5)


# --------------------------------------------------------------------------- edits


def lip_gap(state: HeadState, template) -> float:
    v = state.vertices()
    return float(
        np.linalg.norm(
            v[template.groups["inner_lip_upper"]] - v[template.groups["inner_lip_lower"]], axis=1
        ).mean()
    )


def lid_gap(state: HeadState, template, side: str) -> float:
    v = state.vertices()
    g = template.groups
    return float(np.linalg.norm(v[g[f"{side}_eye_upper"]] - v[g[f"{side}_eye_lower"]], axis=1).mean())


def test_jaw_open_opens_the_mouth(source, template):
    opened = apply_edits(source, Edits(jaw_open=1.0), template)
    mouth_w = np.linalg.norm(np.subtract(*source.vertices()[template.groups["mouth_corners"]]))
    assert lip_gap(opened, template) > lip_gap(source, template) + 0.15 * mouth_w
    # the upper face does not move
    v0, v1 = source.vertices(), opened.vertices()
    upper = template.groups["rigid"] > 0
    assert np.abs(v1[upper] - v0[upper]).max() < 1e-9
    half = apply_edits(source, Edits(jaw_open=0.5), template)
    assert lip_gap(source, template) < lip_gap(half, template) < lip_gap(opened, template)


@pytest.mark.parametrize("side", ["left", "right"])
def test_blink_closes_the_lid(source, template, side):
    other = "right" if side == "left" else "left"
    closed = apply_edits(source, Edits(**{f"blink_{side}": 1.0}), template)
    assert lid_gap(closed, template, side) < 0.2 * lid_gap(source, template, side)
    assert lid_gap(closed, template, other) == pytest.approx(lid_gap(source, template, other))


def test_yaw_edit_measured_by_refit(source, template):
    rng = np.random.default_rng(1)
    edited = apply_edits(source, Edits(yaw=15.0), template)
    # what a tracker would report: 2D + depth of every vertex, with sub-pixel noise
    seen = edited.vertices() + rng.normal(0.0, 0.3, (478, 3))
    refit = fit_head(seen, source.image_size, template)
    assert head_euler(refit)[0] - head_euler(source)[0] == pytest.approx(15.0, abs=2.0)
    assert head_euler(refit)[2] == pytest.approx(head_euler(source)[2], abs=2.0)


@pytest.mark.parametrize("control", ["yaw", "pitch", "roll"])
def test_turn_edits_pivot_about_the_skull_centre(source, template, control):
    """A neck turns a head about the skull: the skull's centre stays where it was in the
    image and the face swings toward the turn (about the face's own centre, the skull would
    swing the other way and open a gap of background beside the turned-away cheek)."""
    centre = shell_geometry(template).centre[None]
    edited = apply_edits(source, Edits(**{control: 30.0}), template)
    np.testing.assert_allclose(edited.pose.apply(centre), source.pose.apply(centre), atol=1e-6)
    swing = edited.vertices().mean(0) - source.vertices().mean(0)
    assert np.linalg.norm(swing[:2]) > 0.1 * np.ptp(source.vertices()[:, 0])
    if control == "yaw":  # the measured turn is the edit's, and the face moves the way it turns
        yaw = head_euler(edited)[0] - head_euler(source)[0]
        assert yaw == pytest.approx(30.0, abs=1e-6)
        nose = [1]  # mediapipe's nose tip
        moved = edited.vertices()[nose, 0].mean() - source.vertices()[nose, 0].mean()
        mirrored = apply_edits(source, Edits(yaw=-30.0), template)
        back = mirrored.vertices()[nose, 0].mean() - source.vertices()[nose, 0].mean()
        assert np.sign(moved) == -np.sign(back) != 0


def _disc_mask(pose: Pose, template, radius_scale: float, size: tuple[int, int]) -> np.ndarray:
    """A person mask: a disc around the skull's image centre, ``radius_scale`` generic
    skull widths wide, and a wide body below it."""
    geo = shell_geometry(template)
    cx, cy = pose.apply(geo.centre[None])[0, :2]
    r = radius_scale * geo.axes[0] * pose.scale
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return (((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) | (yy > cy + 2.5 * r)).astype(np.float32)


@pytest.mark.parametrize(("radius_scale", "expected"), [(1.25, 1.25), (0.9, 0.9), (3.0, 1.5)])
def test_shell_fit_meets_the_person_outline(template, radius_scale, expected):
    """A frontal head whose person mask is a disc k skull widths wide gets side scales ~k
    (clipped to the fit's limits), measured where the mask ends."""
    pose = Pose(np.eye(3), np.array([400.0, 380.0, 0.0]), 80.0)
    mask = _disc_mask(pose, template, radius_scale, (900, 800))
    fit = fit_shell(template, pose, mask)
    assert fit.left == pytest.approx(expected, rel=0.06)
    assert fit.right == pytest.approx(expected, rel=0.06)
    ax, ay = shell_geometry(template).axes[:2]  # the disc's top against the skull's crown
    assert fit.top == pytest.approx(np.clip(radius_scale * ax / ay, 0.85, 1.5), rel=0.06)
    side = (fit.left + fit.right) / 2  # the back, which the photo does not show: as thick
    assert fit.back == pytest.approx(max(1.0, 1.0 + (side - 1.0) * ax / shell_geometry(template).axes[2]))


def test_shell_fit_keeps_the_generic_skull_without_a_person(template):
    pose = Pose(np.eye(3), np.array([400.0, 380.0, 0.0]), 80.0)
    assert fit_shell(template, pose, np.zeros((900, 800), np.float32)) == ShellFit()
    with pytest.raises(ValueError, match="person mask"):
        fit_shell(template, pose, np.zeros((900, 800, 3), np.float32))


def test_fitted_shell_is_wider_on_its_side_only_and_meets_the_face(template):
    generic = build_shell(template)
    wide = build_shell(template, fit=ShellFit(left=1.3, right=1.0, top=1.2))
    c = shell_geometry(template).centre
    g, w = generic.points - c, wide.points - c
    # canonical -x (left) reaches ~1.3x as far; the blend into the face oval takes a little back
    assert 1.15 < w[:, 0].min() / g[:, 0].min() <= 1.3 + 1e-6
    assert w[:, 0].max() == pytest.approx(g[:, 0].max(), rel=0.02)
    assert w[:, 1].min() / g[:, 1].min() == pytest.approx(1.2, rel=0.03)  # the crown rises
    oval = template.vertices[template.groups["face_oval"]]
    assert np.linalg.norm(oval[:, None] - wide.points[None], axis=-1).min(1).max() < 1.5 * 0.08  # no seam gap
    with pytest.raises(ValueError, match="left"):
        build_shell(template, fit=ShellFit(left=0.0))


def test_a_skull_as_thick_behind_as_beside_carries_its_hair_round_a_turn(template):
    """Big hair (sides at 1.5x): with the back scaled as :func:`fit_shell` scales it, the skull
    is as much thicker behind as beside, and at a 40-degree turn the side turning away reaches
    further out than with the generic back, so the hair that showed there turns with the head."""
    from scipy.spatial.transform import Rotation

    geo = shell_geometry(template)
    c = geo.centre
    back = 1.0 + 0.5 * geo.axes[0] / geo.axes[2]
    generic = build_shell(template).points - c
    full = build_shell(template, fit=ShellFit(left=1.5, right=1.5, back=back)).points - c
    flat = build_shell(template, fit=ShellFit(left=1.5, right=1.5)).points - c
    behind = full[:, 2].max() - generic[:, 2].max()  # canonical +z: away from the face
    assert behind == pytest.approx(0.5 * geo.axes[0], rel=0.05)  # the sides' extra half width
    assert full[:, 2].min() == pytest.approx(flat[:, 2].min(), rel=1e-6)  # the front stays
    turn = Rotation.from_euler("y", 40, degrees=True).as_matrix()
    away, away_flat = (float(np.abs((p @ turn.T)[:, 0]).max()) for p in (full, flat))
    assert away > 1.1 * away_flat
    with pytest.raises(ValueError, match="back"):
        build_shell(template, fit=ShellFit(back=0.0))


@pytest.mark.parametrize("yaw", [0.0, 25.0])
def test_fringe_is_the_head_beyond_the_skull_and_nothing_else(template, yaw):
    """A person mask with a hat brim sticking out beside the skull, a body below the chin and
    a raised hand apart from the head: the fringe is the brim alone, on the plane through the
    skull's centre that faces the camera, so it projects back onto the brim's pixels."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("y", yaw, degrees=True).as_matrix()
    pose = Pose(rot, np.array([400.0, 380.0, 0.0]), 80.0)
    geo = shell_geometry(template)
    cx, cy, cz = pose.apply(geo.centre[None])[0]
    r = geo.axes[0] * pose.scale  # the generic skull's half width in pixels
    yy, xx = np.mgrid[0:900, 0:800]
    head = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.95 * r) ** 2
    brim = (np.abs(yy - (cy - 0.5 * r)) < 0.12 * r) & (np.abs(xx - cx) < 1.45 * r)
    body = yy > cy + 2.5 * r
    hand = (xx - (cx + 2.6 * r)) ** 2 + (yy - cy) ** 2 < (0.3 * r) ** 2
    mask = (head | brim | body | hand).astype(np.float32)
    fringe = fit_fringe(template, pose, mask)
    assert len(fringe.points) > 20
    px = pose.apply(fringe.points)
    np.testing.assert_allclose(px[:, 2], cz, atol=1e-6)  # through the skull's centre
    xi, yi = np.round(px[:, 0]).astype(int), np.round(px[:, 1]).astype(int)
    assert brim[yi, xi].all()  # only the brim: not the body, the hand or the wall
    assert not head[yi, xi].any()  # beyond the skull (wider than the disc), on both sides
    assert (px[:, 0] < cx).any() and (px[:, 0] > cx).any()
    np.testing.assert_allclose(fringe.normals @ rot.T, np.tile([0.0, 0.0, -1.0], (len(px), 1)), atol=1e-9)
    # the shell carries it: its points are the skull's plus the fringe's
    shell = build_shell(template, fringe=fringe)
    assert len(shell.points) == len(build_shell(template).points) + len(fringe.points)
    assert len(fit_fringe(template, pose, np.zeros((900, 800), np.float32)).points) == 0
    with pytest.raises(ValueError, match="person mask"):
        fit_fringe(template, pose, mask[..., None])


def test_other_edits_move_the_right_way(source, template):
    g = template.groups
    v0 = source.vertices()
    eye_w = np.linalg.norm(np.subtract(*v0[g["left_eye_corners"]]))
    smile = apply_edits(source, Edits(smile=1.0), template).vertices()
    lc, rc = g["mouth_corners"][1], g["mouth_corners"][0]  # subject's left corner is image right
    assert smile[lc, 0] > v0[lc, 0] and smile[rc, 0] < v0[rc, 0]  # out
    assert smile[lc, 1] < v0[lc, 1] and smile[rc, 1] < v0[rc, 1]  # up
    frown = apply_edits(source, Edits(smile=-1.0), template).vertices()
    assert frown[lc, 1] > v0[lc, 1]
    brow = apply_edits(source, Edits(brow_raise=1.0), template).vertices()
    assert (brow[g["left_brow"], 1] < v0[g["left_brow"], 1]).all()
    gaze = apply_edits(source, Edits(gaze_x=1.0, gaze_y=-0.5), template).vertices()
    d = gaze[g["left_iris"][0]] - v0[g["left_iris"][0]]
    assert d[0] == pytest.approx(0.3 * eye_w, rel=0.15) and d[1] < 0
    assert np.abs(gaze[:468] - v0[:468]).max() < 1e-9  # only the irises move


def test_edits_compose(source, template):
    def verts(state, *edits):
        for e in edits:
            state = apply_edits(state, e, template)
        return state.vertices()

    a = verts(source, Edits(yaw=12.0), Edits(smile=0.7))
    b = verts(source, Edits(smile=0.7), Edits(yaw=12.0))
    c = verts(source, Edits(yaw=12.0, smile=0.7))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    d = verts(source, Edits(blink_left=1.0, gaze_x=0.5, pitch=-8.0))
    e = verts(source, Edits(pitch=-8.0), Edits(gaze_x=0.5), Edits(blink_left=1.0))
    np.testing.assert_allclose(d, e, atol=1e-6)
    # angle edits add up exactly
    y0 = head_euler(source)[0]
    assert head_euler(apply_edits(apply_edits(source, Edits(yaw=10.0)), Edits(yaw=5.0)))[0] == pytest.approx(
        y0 + 15
    )
    assert apply_edits(source, Edits(), template) is source


@pytest.mark.parametrize(
    "control,value",
    [("jaw_open", 1.5), ("jaw_open", -0.1), ("yaw", 60.0), ("smile", -1.2), ("gaze_y", float("nan"))],
)
def test_edit_range_errors(source, control, value):
    with pytest.raises(ValueError, match=control):
        apply_edits(source, Edits(**{control: value}))


# --------------------------------------------------------------------------- retargeting


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_retarget_identity_driver_reproduces_source(source, mode):
    rt = Retargeter(source, RetargetConfig(mode=mode))
    out = rt(fit_head(source.vertices(), source.image_size))
    assert np.abs(out.vertices() - source.vertices()).max() < 1.0
    again = rt(source)
    assert np.abs(again.vertices() - source.vertices()).max() < 1.0


def test_retarget_transfers_relative_motion(astronaut, video_frames):
    src = fit_image(astronaut)
    with FaceTracker(TrackerConfig(static_image=True)) as tracker:
        drivers = [fit_head(r.landmarks, r.image_size) for r in map(tracker.track, video_frames) if r.found]
    assert len(drivers) > 10
    rt = Retargeter(src, RetargetConfig())
    first = rt(drivers[0])  # the first frame is the reference: no motion yet
    assert np.abs(first.vertices() - src.vertices()).max() < 1e-6
    # pick the driver frame that turned most from the reference; its yaw change transfers
    dyaw = [head_euler(d)[0] - head_euler(drivers[0])[0] for d in drivers]
    k = int(np.argmax(np.abs(dyaw)))
    out = rt(drivers[k])
    assert head_euler(out)[0] - head_euler(src)[0] == pytest.approx(dyaw[k], abs=3.0)
    np.testing.assert_allclose(out.identity, src.identity)
    # half pose strength: about half the turn; zero expression strength: source expression
    rt.config = RetargetConfig(strengths=Strengths(pose=0.5, expression=0.0))
    half = rt(drivers[k])
    assert head_euler(half)[0] - head_euler(src)[0] == pytest.approx(dyaw[k] / 2, abs=2.0)
    np.testing.assert_allclose(half.expression, src.expression, atol=1e-12)
    # recalibrate: the next driver frame becomes the neutral reference
    rt.config = RetargetConfig()
    rt.set_reference(None)
    recal = rt(drivers[k])
    assert np.abs(recal.vertices() - src.vertices()).max() < 1e-6


def test_retarget_channel_strengths(source, template):
    driver0 = fit_head(source.vertices(), source.image_size)
    blinked = apply_edits(apply_edits(driver0, Edits(blink_left=1.0, jaw_open=1.0)), Edits())
    driver1 = replace(blinked, identity=driver0.identity)
    cfg = RetargetConfig(strengths=Strengths(eyes=0.0))
    rt = Retargeter(source, cfg)
    rt(driver0)
    out = rt(driver1)
    assert lid_gap(out, template, "left") == pytest.approx(lid_gap(source, template, "left"))
    assert lip_gap(out, template) > lip_gap(source, template) + 1.0
    rt.config = RetargetConfig(strengths=Strengths(mouth=0.0))
    out = rt(driver1)
    assert lip_gap(out, template) == pytest.approx(lip_gap(source, template), abs=0.05)
    assert lid_gap(out, template, "left") < 0.2 * lid_gap(source, template, "left")
    with pytest.raises(ValueError, match="mode"):
        Retargeter(source, RetargetConfig(mode="sideways"))(driver0)


# --------------------------------------------------------------------------- shell


def test_head_shell_covers_the_head(template):
    shell = build_shell(template, density=0.08)
    p = shell.points
    assert p.shape[1] == 3 and len(p) == len(shell.normals) == len(shell.labels)
    assert (shell.labels == Region.HEAD_SHELL).all()
    np.testing.assert_allclose(np.linalg.norm(shell.normals, axis=1), 1.0, atol=1e-9)
    v = template.vertices
    oval = v[template.groups["face_oval"]]
    face_h = np.ptp(oval[:, 1])
    assert p[:, 1].min() < oval[:, 1].min() - 0.2 * face_h  # hair cap above the forehead
    assert p[:, 1].max() > oval[:, 1].max() + 1.4 * face_h  # neck
    assert p[:, 2].max() > v[:, 2].max() + 1.0  # back of the skull
    assert np.abs(p[:, 0]).max() > np.abs(oval[:, 0]).max()  # sides/ears
    # continuous with the face oval: every oval vertex has a shell point nearby
    gap = np.linalg.norm(oval[:, None] - p[None], axis=-1).min(1)
    assert gap.max() < 1.5 * 0.08
    # no shell point in front of the face inside its outline (the mesh covers that)
    front = p[:, 2] < np.percentile(v[:, 2], 50)
    from matplotlib.path import Path as MplPath

    assert not MplPath(oval[:, :2] * 0.9).contains_points(p[front, :2]).any()
    assert len(build_shell(template, density=0.04).points) > 3 * len(p)
    with pytest.raises(ValueError, match="density"):
        build_shell(template, density=0.0)


def test_background_anchors():
    a = background_anchors(360, 640, 32.0)
    assert a.shape[1] == 2
    assert a[:, 0].min() == 0 and a[:, 0].max() == 639 and a[:, 1].min() == 0 and a[:, 1].max() == 359
    assert np.diff(np.unique(a[:, 0])).max() <= 32.0
    with pytest.raises(ValueError):
        background_anchors(0, 10, 4.0)
