"""Rotations <-> head-facing Euler angles (degrees).

Convention (see ``rt_portrait.head.types``): camera frame x right, y down, z away from
the camera; the face looks along -z. Positive yaw turns the face to its own left (toward
the image's right), positive pitch tilts it down (nose toward the chin), positive roll
rotates it counter-clockwise in the image. The rotation is composed as

    R = Rz(-roll) @ Ry(-yaw) @ Rx(pitch)

with the right-handed elementary rotations Rx, Ry, Rz. Roll is outermost, so rotating the
image about the optical axis changes only roll, and mirroring the image (x -> -x) flips
exactly yaw and roll.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation (canonical -> camera) from yaw, pitch, roll in degrees."""
    # intrinsic "ZYX" composes Rz @ Ry @ Rx
    return Rotation.from_euler("ZYX", [-roll, -yaw, pitch], degrees=True).as_matrix()


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation built as in :func:`rotation_from_euler`.

    Yaw is in [-90, 90]; at |yaw| = 90 (gimbal lock) pitch is set to 0 and the remaining
    rotation goes to roll.
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be (3, 3), got {r.shape}")
    rot = Rotation.from_matrix(r)
    if abs(r[2, 0]) < 1.0 - 1e-6:
        c, b, a = rot.as_euler("ZYX", degrees=True)
    else:
        with warnings.catch_warnings():  # gimbal lock: scipy warns and zeroes the last angle (pitch)
            warnings.simplefilter("ignore", UserWarning)
            c, b, a = rot.as_euler("ZYX", degrees=True)
    return float(-b), float(a), float(-c)


def slerp_to_identity(rotation: np.ndarray, t: float) -> np.ndarray:
    """exp(t * log(R)): t = 0 -> identity, t = 1 -> R (shortest path)."""
    rotvec = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_rotvec()
    return Rotation.from_rotvec(t * rotvec).as_matrix()
