"""User edits: documented geometric operations on any head state.

Shape edits act on the canonical shape (identity + expression) and change only the
expression; angle edits change only the pose. All are exact functions of the state, so
they compose with each other and with driven motion (apply them last, on the retargeted
state). Lengths below are in canonical units (the template has unit RMS radius, the
template's mouth width ``W_m`` is about 0.9 and eye width ``W_e`` about 0.6).

======================  ==========  ========================================================
control                 range       operation
======================  ==========  ========================================================
yaw, pitch, roll        [-45, 45]   degrees added to the pose's Euler angles (the measured
                                    angle changes by exactly that; see rotation.py), about
                                    the skull's centre, where a neck turns a head: the face
                                    swings toward the turn and the skull stays in place
jaw_open                [0, 1]      jaw, chin and lower lip rotate about the hinge axis
                                    (the two face-oval points in front of the ears) by
                                    up to 18 degrees, per-vertex weights from the
                                    template (1 below the mouth, 0 above, smooth cheeks)
smile                   [-1, 1]     mouth corners move out by 0.10 W_m and up by
                                    0.12 W_m per unit (negative: in and down), Gaussian
                                    falloff (sigma 0.35 W_m) around each corner
blink_left/right        [0, 1]      the upper lid line moves toward the lower one by 95%
                                    per unit (gap at 1 = 5% of the open gap); the eyelid
                                    skin above follows by half; the iris stays
brow_raise              [-1, 1]     brows move up by 0.12 canonical units per unit (down if
                                    negative), the forehead above follows with a wide
                                    falloff, the skin between brow and lid with a narrow one
gaze_x, gaze_y          [-1, 1]     both irises translate by 0.3 W_e per unit (x: toward
                                    the image's right = the subject's left, y: down)
======================  ==========  ========================================================

"left" is the subject's left (image right on a frontal face), as in mediapipe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np

from .rotation import euler_from_rotation, rotation_from_euler
from .shell import shell_geometry
from .template import Template, load_template
from .types import Edits, HeadState, Pose

RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-45.0, 45.0),
    "pitch": (-45.0, 45.0),
    "roll": (-45.0, 45.0),
    "jaw_open": (0.0, 1.0),
    "smile": (-1.0, 1.0),
    "blink_left": (0.0, 1.0),
    "blink_right": (0.0, 1.0),
    "brow_raise": (-1.0, 1.0),
    "gaze_x": (-1.0, 1.0),
    "gaze_y": (-1.0, 1.0),
}
JAW_MAX_DEG = 18.0
BLINK_CLOSURE = 0.95
SMILE_OUT, SMILE_UP, SMILE_SIGMA = 0.10, 0.12, 0.35  # x W_m
BROW_LIFT = 0.12
GAZE_RANGE = 0.3  # x W_e


def validate_edits(edits: Edits) -> None:
    """Raise ValueError naming the first control that is not a finite number in its range."""
    for f in fields(edits):
        v = getattr(edits, f.name)
        lo, hi = RANGES[f.name]
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"edit {f.name!r} must be a number, got {v!r}") from None
        if not np.isfinite(x) or x < lo or x > hi:
            raise ValueError(f"edit {f.name!r} = {v!r} is outside its range [{lo:g}, {hi:g}]")


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class _Rig:
    """Per-template weights of the edit operators (computed once per template)."""

    jaw_w: np.ndarray  # (N,)
    jaw_idx: np.ndarray
    hinge: np.ndarray  # (2,) vertex indices
    smile_idx: np.ndarray
    smile_disp: np.ndarray  # (len(smile_idx), 3) displacement per unit smile
    brow_idx: np.ndarray
    brow_w: np.ndarray  # (len(brow_idx),)
    lids: dict[
        str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    ]  # upper, lower, eyelid, eyelid->upper
    irises: np.ndarray  # (10,) both irises
    eye_width: float


@functools.lru_cache(maxsize=8)
def _rig(tpl: Template) -> _Rig:
    v = tpl.vertices
    g = tpl.groups
    jaw_w = np.asarray(g["jaw_weights"], dtype=np.float64)
    jaw_idx = np.flatnonzero(jaw_w > 1e-4)
    mouth_w = float(np.ptp(v[g["outer_lip_loop"], 0]))
    # smile: Gaussian bumps around both corners, each moving its own corner out and up
    disp = np.zeros_like(v)
    sigma = SMILE_SIGMA * mouth_w
    for c in g["mouth_corners"]:
        d2 = ((v[:, :2] - v[c, :2]) ** 2).sum(1)
        w = np.exp(-d2 / (2 * sigma**2))
        out = np.sign(v[c, 0])
        disp[:, 0] += w * out * SMILE_OUT * mouth_w
        disp[:, 1] -= w * SMILE_UP * mouth_w
    eye_idx = np.concatenate(
        [g[f"{s}_eye_loop"] for s in ("left", "right")] + [g["left_iris"], g["right_iris"]]
    )
    disp[eye_idx] = 0.0
    smile_idx = np.flatnonzero(np.abs(disp).max(1) > 1e-5 * mouth_w)
    # brows: 1 on the brows, wide falloff above (forehead), narrow below (toward the lids)
    brows = np.concatenate([g["left_brow"], g["right_brow"]])
    d = np.min(np.linalg.norm(v[:, None, :2] - v[None, brows, :2], axis=-1), axis=1)
    brow_y = np.interp(v[:, 0], np.sort(v[brows, 0]), v[brows, 1][np.argsort(v[brows, 0])])
    above = v[:, 1] < brow_y
    bw = np.where(above, np.exp(-((d / 0.45) ** 2)), np.exp(-((d / 0.1) ** 2)))
    bw[brows] = 1.0
    bw[eye_idx] = 0.0
    for s in ("left", "right"):
        bw[g[f"{s}_eyelid"]] *= 0.3
    brow_idx = np.flatnonzero(bw > 1e-3)
    lids = {}
    for s in ("left", "right"):
        up, lo, lid = g[f"{s}_eye_upper"], g[f"{s}_eye_lower"], g[f"{s}_eyelid"]
        nearest = np.argmin(np.linalg.norm(v[lid, None, :2] - v[None, up, :2], axis=-1), axis=1)
        lids[s] = (up, lo, lid, nearest)
    eye_w = float(
        np.mean([np.linalg.norm(np.subtract(*v[g[f"{s}_eye_corners"]])) for s in ("left", "right")])
    )
    return _Rig(
        jaw_w=jaw_w,
        jaw_idx=jaw_idx,
        hinge=np.asarray(g["jaw_hinge"]),
        smile_idx=smile_idx,
        smile_disp=disp[smile_idx],
        brow_idx=brow_idx,
        brow_w=bw[brow_idx],
        lids=lids,
        irises=np.concatenate([g["left_iris"], g["right_iris"]]),
        eye_width=eye_w,
    )


def apply_edits(state: HeadState, edits: Edits, template: Template | None = None) -> HeadState:
    """The state with ``edits`` applied on top (see the module table for each control)."""
    validate_edits(edits)
    if edits.is_identity():
        return state
    tpl = template or load_template()
    rig = _rig(tpl)
    x = state.canonical().copy()
    if edits.jaw_open:
        # rotate about the hinge axis (x-ish, through both hinge points); positive angle about
        # +x moves the chin down (+y) and back (+z)
        a, b = x[rig.hinge]
        axis = b - a
        axis /= np.linalg.norm(axis)
        idx = rig.jaw_idx
        ang = np.radians(JAW_MAX_DEG * edits.jaw_open) * rig.jaw_w[idx]
        p = x[idx] - a
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        # Rodrigues per vertex with its own angle
        x[idx] = a + p * cos + np.cross(axis, p) * sin + np.outer(p @ axis, axis) * (1.0 - cos)
    if edits.smile:
        x[rig.smile_idx] += edits.smile * rig.smile_disp
    if edits.brow_raise:
        x[rig.brow_idx, 1] -= edits.brow_raise * BROW_LIFT * rig.brow_w
    for side, amount in (("left", edits.blink_left), ("right", edits.blink_right)):
        if amount:
            up, lo, lid, nearest = rig.lids[side]
            move = BLINK_CLOSURE * amount * (x[lo] - x[up])
            x[up] += move
            x[lid] += 0.5 * move[nearest]
    if edits.gaze_x or edits.gaze_y:
        x[rig.irises, 0] += edits.gaze_x * GAZE_RANGE * rig.eye_width
        x[rig.irises, 1] += edits.gaze_y * GAZE_RANGE * rig.eye_width
    pose = state.pose
    if edits.yaw or edits.pitch or edits.roll:
        yaw, pitch, roll = euler_from_rotation(pose.rotation)
        rot = rotation_from_euler(yaw + edits.yaw, pitch + edits.pitch, roll + edits.roll)
        # Turning about the canonical origin (the face's centre) would swing the skull behind
        # the face sideways and open a gap of background beside the turned-away cheek
        pivot = shell_geometry(tpl).centre
        shift = pose.scale * (pose.rotation - rot) @ pivot
        pose = Pose(rotation=rot, translation=pose.translation + shift, scale=pose.scale)
    return HeadState(
        pose=pose, identity=state.identity, expression=x - state.identity, image_size=state.image_size
    )
