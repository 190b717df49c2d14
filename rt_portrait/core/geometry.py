"""Point-set geometry shared by the head fit, the template builder and the tests."""

from __future__ import annotations

import numpy as np


def umeyama(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama: ``(s, R, t)`` minimising sum_i w_i |s R src_i + t - dst_i|^2.

    ``src``, ``dst``: (N, 3); ``weights``: (N,) non-negative (None = uniform). ``R`` is a proper
    rotation (det = +1) and ``s`` positive for non-degenerate input.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama needs two (N, 3) arrays of one shape, got {src.shape} and {dst.shape}")
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
    # a reflection in the best orthogonal fit is turned into the nearest rotation
    d = np.array([1.0, 1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rot = (u * d) @ vt
    var = float(w @ np.einsum("ij,ij->i", a, a))
    if var <= 0:
        raise ValueError("source points are degenerate (all coincide)")
    scale = float((sig * d).sum() / var)
    return scale, rot, mu_d - scale * rot @ mu_s
