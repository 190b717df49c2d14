"""Per-frame fitting: similarity pose (weighted Umeyama), identity and expression."""

from __future__ import annotations

import numpy as np

from rt_portrait.core.geometry import umeyama
from rt_portrait.core.types import NUM_LANDMARKS

from .rotation import euler_from_rotation
from .template import Template, load_template
from .types import HeadState, Pose


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Pose:
    """Weighted Umeyama: the similarity minimising sum_i w_i |s R src_i + t - dst_i|^2.

    ``src``, ``dst``: (N, 3); ``weights``: (N,) non-negative (None = uniform). Returns the
    Pose mapping src to dst (a proper rotation, det = +1, and a positive scale).
    """
    scale, rot, translation = umeyama(src, dst, weights)
    return Pose(rotation=rot, translation=translation, scale=scale)


def invert_pose(pose: Pose, points: np.ndarray) -> np.ndarray:
    """Camera-frame points -> canonical frame (the inverse of ``pose.apply``)."""
    return (np.asarray(points, dtype=np.float64) - pose.translation) @ pose.rotation / pose.scale


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"landmarks must be ({NUM_LANDMARKS}, 3) pixels (x, y, z), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return lm


def fit_head(
    landmarks: np.ndarray,
    image_size: tuple[int, int],
    template: Template | None = None,
    identity: np.ndarray | None = None,
) -> HeadState:
    """Fit a HeadState to (478, 3) camera-frame landmarks (pixels, z away from the camera).

    The pose is the similarity mapping the template's rigid points onto the landmarks; the
    canonical shape is the landmarks brought back by the inverse pose. With ``identity``
    None, the face is its own identity (expression = 0), as for a source portrait;
    otherwise expression = canonical - identity, as for a driver frame of a known subject.
    """
    tpl = template or load_template()
    lm = _check_landmarks(landmarks)
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be a positive (height, width), got {image_size}")
    rigid = tpl.groups["rigid"]
    sel = np.flatnonzero(rigid > 0)
    pose = fit_similarity(tpl.vertices[sel], lm[sel], rigid[sel])
    canonical = invert_pose(pose, lm)
    if identity is None:
        ident = canonical
        expr = np.zeros_like(canonical)
    else:
        ident = np.asarray(identity, dtype=np.float64)
        if ident.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"identity must be ({NUM_LANDMARKS}, 3), got {ident.shape}")
        expr = canonical - ident
    return HeadState(pose=pose, identity=ident, expression=expr, image_size=(h, w))


def head_euler(state: HeadState | Pose) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a head state's (or pose's) rotation."""
    pose = state.pose if isinstance(state, HeadState) else state
    return euler_from_rotation(pose.rotation)
