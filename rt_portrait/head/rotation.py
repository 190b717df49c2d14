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

import numpy as np


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation (canonical -> camera) from yaw, pitch, roll in degrees."""
    y, p, r = np.radians([yaw, pitch, roll])
    return _rz(-r) @ _ry(-y) @ _rx(p)


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation built as in :func:`rotation_from_euler`.

    Yaw is in [-90, 90]; at |yaw| = 90 (gimbal lock) pitch is set to 0 and the remaining
    rotation goes to roll.
    """
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be (3, 3), got {r.shape}")
    # R = Rz(c) Ry(b) Rx(a) with a = pitch, b = -yaw, c = -roll:
    # R[2,0] = -sin b, R[2,1] = cos b sin a, R[2,2] = cos b cos a, R[1,0] = sin c cos b, R[0,0] = cos c cos b
    sb = -r[2, 0]
    sb = min(1.0, max(-1.0, sb))
    b = np.arcsin(sb)
    if abs(sb) < 1.0 - 1e-9:
        a = np.arctan2(r[2, 1], r[2, 2])
        c = np.arctan2(r[1, 0], r[0, 0])
    else:
        a = 0.0
        c = np.arctan2(-r[0, 1], r[1, 1])
    return float(np.degrees(-b)), float(np.degrees(a)), float(np.degrees(-c))


def slerp_to_identity(rotation: np.ndarray, t: float) -> np.ndarray:
    """exp(t * log(R)): t = 0 -> identity, t = 1 -> R (shortest path, via axis-angle)."""
    r = np.asarray(rotation, dtype=np.float64)
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.eye(3)
    if np.pi - angle < 1e-6:  # axis from the symmetric part when sin(angle) ~ 0
        axis = np.sqrt(np.maximum((np.diag(r) + 1.0) / 2.0, 0.0))
        k = int(np.argmax(axis))
        axis = r[:, k] + np.eye(3)[k]
        axis /= np.linalg.norm(axis)
    else:
        axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return axis_angle(axis, t * angle)


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: rotation by ``angle`` radians about the unit ``axis``."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)
