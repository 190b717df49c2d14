"""Per-frame fitting: similarity pose (weighted Umeyama), identity and expression."""
from __future__ import annotations

import numpy as np

from ..tracking.types import NUM_LANDMARKS
from .rotation import euler_from_rotation
from .template import Template, load_template
from .types import HeadState, Pose


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> Pose:
    """Weighted Umeyama: the similarity minimising sum_i w_i |s R src_i + t - dst_i|^2.

    ``src``, ``dst``: (N, 3); ``weights``: (N,) non-negative (None = uniform). Returns the
    Pose mapping src to dst (a proper rotation, det = +1, and a positive scale).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"fit_similarity needs two (N, 3) arrays of one shape, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be (N,), non-negative, with a positive sum")
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    a = src - mu_s
    b = dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    d = np.array([1.0, 1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rot = (u * d) @ vt
    var = float(w @ np.einsum("ij,ij->i", a, a))
    if var <= 0:
        raise ValueError("source points are degenerate (all coincide)")
    scale = float((sig * d).sum() / var)
    return Pose(rotation=rot, translation=mu_d - scale * rot @ mu_s, scale=scale)


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
