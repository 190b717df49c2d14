"""Image and landmark metrics of the evaluation harness (numpy, vectorised).

Definitions (every number in the report follows these exactly)
----------------------------------------------------------------
Images are (H, W, 3) uint8 RGB, compared in [0, 1] units, per channel.

* **L1**: mean absolute difference over pixels and channels, in [0, 1] units.
* **PSNR** (dB): ``10 log10(1 / MSE)`` with the MSE over pixels and channels in [0, 1]
  units. Identical images would give +inf; the MSE is floored at ``1e-10`` so the PSNR is
  capped at :data:`PSNR_CAP_DB` (100 dB) and means stay finite.
* **SSIM**: the standard Gaussian-window SSIM (Wang et al. 2004: sigma 1.5, window
  truncated at 3.5 sigma = 11 px, K1 0.01, K2 0.03, population covariances), computed per
  RGB channel as a per-pixel map (borders replicated), averaged over channels. The full-frame
  SSIM is the map's mean over the whole frame; the face SSIM is its mean inside the mask.
* **Face region**: the filled polygon of the *target's* face-oval landmarks (the ordered
  36-point mediapipe loop :data:`FACE_OVAL`). All face metrics are means inside that mask.
* **Landmark error**: mean over the 478 landmarks of the 2D (x, y) Euclidean distance
  between the ground-truth (driver) landmarks and the landmarks re-tracked on the output,
  divided by the ground truth's inter-ocular distance (outer eye corners, landmarks 33 and
  263). Nothing else is removed: no alignment, no depth. In self-reenactment source and
  target share the identity, so the only normalisation needed is the face's scale.
* **Pose error** (degrees): the geodesic angle between the two head rotations,
  ``arccos((trace(R_gt^T R_out) - 1) / 2)``: the angle of the single rotation taking one
  head orientation to the other (independent of any Euler convention).
* **Jitter**: for a landmark sequence ``L_t`` (only triples of consecutive evaluated frames
  that all have a face), the mean over landmarks of ``||L_{t+1} - 2 L_t + L_{t-1}||``
  (2D, pixels), averaged over t and divided by the ground truth's median inter-ocular
  distance of the clip. It is the landmark acceleration in inter-ocular units per
  evaluated-frame step squared; compare an output's value with the driver's own value on
  the same frames (true motion has acceleration too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.draw import polygon as draw_polygon

PSNR_CAP_DB = 100.0
_MSE_FLOOR = 1e-10  # 10*log10(1/1e-10) = 100 dB

# mediapipe face mesh: the face-oval loop, ordered (checked against
# mediapipe's FACEMESH_FACE_OVAL edges in the tests).
FACE_OVAL: tuple[int, ...] = (
    10,
    109,
    67,
    103,
    54,
    21,
    162,
    127,
    234,
    93,
    132,
    58,
    172,
    136,
    150,
    149,
    176,
    148,
    152,
    377,
    400,
    378,
    379,
    365,
    397,
    288,
    361,
    323,
    454,
    356,
    389,
    251,
    284,
    332,
    297,
    338,
)
# outer eye corners (subject's right eye at image left, subject's left eye at image right)
EYE_OUTER: tuple[int, int] = (33, 263)


def _as_float(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = _as_float(a, "output"), _as_float(b, "target")
    if fa.shape != fb.shape:
        raise ValueError(f"output {fa.shape} and target {fb.shape} differ in shape")
    return fa, fb


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image {shape[:2]}")
    if not m.any():
        raise ValueError("mask is empty: no pixel to measure")
    return m


def l1(output: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error in [0, 1] units (inside ``mask`` when given)."""
    a, b = _pair(output, target)
    m = _check_mask(mask, a.shape)
    diff = np.abs(a - b)
    return float(diff.mean() if m is None else diff[m].mean())


def mse(output: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    a, b = _pair(output, target)
    m = _check_mask(mask, a.shape)
    sq = (a - b) ** 2
    return float(sq.mean() if m is None else sq[m].mean())


def psnr_from_mse(value: float) -> float:
    return float(10.0 * np.log10(1.0 / max(value, _MSE_FLOOR)))


def psnr(output: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB for [0, 1] images, capped at :data:`PSNR_CAP_DB`."""
    return psnr_from_mse(mse(output, target, mask))


def ssim_map(output: np.ndarray, target: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """(H, W) SSIM map: Gaussian-window SSIM per RGB channel, averaged over channels."""
    a, b = _pair(output, target)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2  # (K * data_range)^2 with data_range 1

    def blur(x: np.ndarray) -> np.ndarray:
        # sigma 0 on the channel axis: each channel filtered on its own, in one call
        return gaussian_filter(x, sigma=(sigma, sigma, 0.0), truncate=3.5, mode="nearest")

    mu_a, mu_b = blur(a64), blur(b64)
    var_a = blur(a64 * a64) - mu_a * mu_a
    var_b = blur(b64 * b64) - mu_b * mu_b
    cov = blur(a64 * b64) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=2)


def ssim(output: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the frame, or over ``mask`` when given."""
    smap = ssim_map(output, target)
    m = _check_mask(mask, smap.shape)
    return float(smap.mean() if m is None else smap[m].mean())


def face_mask(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask: the filled face-oval polygon of ``landmarks`` (pixels)."""
    pts = _check_landmarks(landmarks, "landmarks")
    h, w = image_size
    oval = pts[list(FACE_OVAL), :2]
    rr, cc = draw_polygon(oval[:, 1], oval[:, 0], shape=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[rr, cc] = True
    return mask


# the mouth opening: the inner-lip loop (corner, upper lip left to right, corner, lower lip right
# to left), mediapipe indices as the head template groups them; scored where it covers at least
# MIN_MOUTH_PIXELS (an open mouth)
INNER_LIPS: tuple[int, ...] = (
    78,
    191,
    80,
    81,
    82,
    13,
    312,
    311,
    310,
    415,
    308,
    324,
    318,
    402,
    317,
    14,
    87,
    178,
    88,
    95,
)
MIN_MOUTH_PIXELS = 20


def mouth_mask(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask: the filled inner-lip polygon of ``landmarks`` (pixels): the mouth opening."""
    h, w = image_size
    pts = _check_landmarks(landmarks, "landmarks")
    loop = pts[list(INNER_LIPS), :2]
    rr, cc = draw_polygon(loop[:, 1], loop[:, 0], shape=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[rr, cc] = True
    return mask


def _check_landmarks(landmarks: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] <= max(max(FACE_OVAL), max(EYE_OUTER)) or arr.shape[1] < 2:
        raise ValueError(f"{name} must be (478, 2 or 3) face-mesh landmarks, got shape {arr.shape}")
    return arr


def interocular(landmarks: np.ndarray) -> float:
    """Distance in pixels between the outer eye corners (landmarks 33 and 263)."""
    pts = _check_landmarks(landmarks, "landmarks")
    d = float(np.linalg.norm(pts[EYE_OUTER[0], :2] - pts[EYE_OUTER[1], :2]))
    if d <= 0:
        raise ValueError("degenerate landmarks: the outer eye corners coincide")
    return d


def landmark_error(output_landmarks: np.ndarray, target_landmarks: np.ndarray) -> float:
    """Mean 2D landmark distance divided by the target's inter-ocular distance."""
    out = _check_landmarks(output_landmarks, "output landmarks")
    gt = _check_landmarks(target_landmarks, "target landmarks")
    if out.shape[0] != gt.shape[0]:
        raise ValueError(f"landmark counts differ: {out.shape[0]} vs {gt.shape[0]}")
    dist = np.linalg.norm(out[:, :2] - gt[:, :2], axis=1)
    return float(dist.mean() / interocular(gt))


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Geodesic angle in degrees between two rotation matrices."""
    ra, rb = np.asarray(r_a, dtype=np.float64), np.asarray(r_b, dtype=np.float64)
    if ra.shape != (3, 3) or rb.shape != (3, 3):
        raise ValueError(f"rotations must be (3, 3), got {ra.shape} and {rb.shape}")
    cos = (np.trace(ra.T @ rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def jitter(sequence: list[np.ndarray | None], scale: float) -> float:
    """Mean landmark acceleration (see module doc) divided by ``scale`` (pixels).

    ``sequence`` holds one (478, 2+) array per evaluated frame, ``None`` where no face was
    found; only triples of consecutive frames that all have a face count. NaN when there is
    no such triple.
    """
    if scale <= 0:
        raise ValueError(f"jitter scale must be positive, got {scale}")
    valid = np.array([s is not None for s in sequence], dtype=bool)
    if len(sequence) < 3:
        return float("nan")
    ok = valid[:-2] & valid[1:-1] & valid[2:]
    if not ok.any():
        return float("nan")
    shape = next(np.asarray(s).shape for s in sequence if s is not None)
    stack = np.stack(
        [
            np.asarray(s, dtype=np.float64)[:, :2] if s is not None else np.zeros((shape[0], 2))
            for s in sequence
        ]
    )
    acc = stack[2:] - 2.0 * stack[1:-1] + stack[:-2]  # (T-2, N, 2)
    per_step = np.linalg.norm(acc, axis=2).mean(axis=1)  # (T-2,)
    return float(per_step[ok].mean() / scale)


def laplacian_variance(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the grey image's 4-neighbour Laplacian (inside ``mask`` when given): the
    sharpness measure (a blurred image has less, a noisy one more)."""
    grey = _as_float(image, "image").mean(axis=2)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    m = _check_mask(mask, grey.shape)
    return float(lap.var() if m is None else lap[m[1:-1, 1:-1]].var())


def sharpness_ratio(output: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The output's Laplacian variance over the target's (1 = as sharp as the real frame)."""
    a, b = _pair(output, target)
    return laplacian_variance(a, mask) / max(laplacian_variance(b, mask), 1e-12)


@dataclass(frozen=True)
class ImageScores:
    face_l1: float
    face_psnr: float
    face_ssim: float
    face_sharpness: float  # Laplacian variance inside the face mask, / the target's
    full_l1: float
    full_psnr: float
    full_ssim: float


def image_scores(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> ImageScores:
    """All image metrics of one output frame against its ground truth, SSIM map computed once."""
    a, b = _pair(output, target)
    m = _check_mask(mask, a.shape)
    assert m is not None
    diff = a - b
    absd, sq = np.abs(diff), diff * diff
    smap = ssim_map(a, b)
    return ImageScores(
        face_l1=float(absd[m].mean()),
        face_psnr=psnr_from_mse(float(sq[m].mean())),
        face_ssim=float(smap[m].mean()),
        face_sharpness=sharpness_ratio(a, b, m),
        full_l1=float(absd.mean()),
        full_psnr=psnr_from_mse(float(sq.mean())),
        full_ssim=float(smap.mean()),
    )
