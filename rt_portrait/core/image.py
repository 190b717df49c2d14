"""Image loading and normalisation for the tracker.

Everything downstream works on one format: (H, W, 3) uint8 RGB, C-contiguous. ``to_rgb``
converts the formats users and libraries actually hand us (gray, gray+alpha, RGB, RGBA;
uint8, uint16, other integers, floats in [0, 1], bool) and refuses the rest with a message
that names the problem. Transparent pixels are composited over mid-gray (128): a neutral
background keeps contrast for both dark and bright hair, where white or black would merge
with one of them and confuse the face detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALPHA_BACKGROUND = 128  # mid-gray, see the module docstring
_FLOAT_TOLERANCE = 1e-3  # float images may overshoot [0, 1] by rounding; more is a unit error


class ImageError(ValueError):
    """An input that is not a usable image; the message names the input and the problem."""


@dataclass(frozen=True)
class ImageLimits:
    """Sizes the tracker accepts. Smaller faces than ~32 px cannot be meshed; very large
    images are refused before they cost memory (decoding bombs, mistaken inputs)."""

    min_side: int = 32
    max_side: int = 8192
    max_pixels: float = 40e6


def check_size(rgb: np.ndarray, limits: ImageLimits | None = None, name: str = "image") -> None:
    """Raise ImageError if ``rgb`` (H, W, ...) is smaller or larger than ``limits`` allow."""
    limits = limits or ImageLimits()
    if rgb.ndim < 2:
        raise ImageError(f"{name}: expected an (H, W[, C]) array, got shape {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    _check_dims(height, width, limits, name)


def _check_dims(height: int, width: int, limits: ImageLimits, name: str) -> None:
    if min(height, width) < limits.min_side:
        raise ImageError(
            f"{name}: image too small ({width}x{height} px); each side needs at least "
            f"{limits.min_side} px for face tracking"
        )
    if max(height, width) > limits.max_side or height * width > limits.max_pixels:
        raise ImageError(
            f"{name}: image too large ({width}x{height} px = {height * width / 1e6:.1f} Mpx); "
            f"the limit is {limits.max_side} px per side and {limits.max_pixels / 1e6:.0f} Mpx, "
            "downscale it first"
        )


def to_rgb(arr: Any, *, name: str = "image") -> np.ndarray:
    """Convert an image array (or PIL image) to (H, W, 3) uint8 RGB, C-contiguous.

    Accepted: (H, W), (H, W, 1) gray; (H, W, 2) gray+alpha; (H, W, 3) RGB; (H, W, 4) RGBA.
    dtypes: uint8; uint16 (full 16-bit range); other integers with values in [0, 255];
    floats in [0, 1]; bool. Alpha is composited over mid-gray.
    """
    if isinstance(arr, Image.Image):
        arr = _pil_to_array(arr)
    if not isinstance(arr, np.ndarray):
        try:
            arr = np.asarray(arr)
        except Exception as exc:  # ragged lists and the like
            raise ImageError(f"{name}: cannot read as an array ({exc})") from exc
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        if 0 in arr.shape:
            raise ImageError(f"{name}: empty image (shape {arr.shape})")
        return np.ascontiguousarray(arr)  # the common case: no copy if already contiguous
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageError(f"{name}: expected an (H, W) or (H, W, C) image, got {arr.ndim}-D shape {arr.shape}")
    if arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"{name}: expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, "
            f"got {arr.shape[2]} (shape {arr.shape}; channels-first arrays must be transposed)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: empty image (shape {arr.shape})")
    unit = _to_unit_float(arr, name)  # (H, W, C) float32 in [0, 1]
    channels = unit.shape[2]
    if channels in (2, 4):
        color, alpha = unit[:, :, :-1], unit[:, :, -1:]
        unit = color * alpha + (ALPHA_BACKGROUND / 255.0) * (1.0 - alpha)
    if unit.shape[2] == 1:
        unit = np.repeat(unit, 3, axis=2)
    return np.ascontiguousarray(np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8))


def _to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{name}: integer image of dtype {arr.dtype} has values in [{lo}, {hi}]; "
                "expected [0, 255] (or pass uint16 for 16-bit data)"
            )
        return arr.astype(np.float32) / 255.0
    if kind == "f":
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ImageError(f"{name}: float image contains {bad} NaN or infinite values")
        flo, fhi = float(arr.min()), float(arr.max())
        if flo < -_FLOAT_TOLERANCE or fhi > 1.0 + _FLOAT_TOLERANCE:
            hint = " (looks like 0..255 data: divide by 255)" if fhi > 1.5 else ""
            raise ImageError(
                f"{name}: float image values must be in [0, 1], got [{flo:.4g}, {fhi:.4g}]{hint}"
            )
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ImageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16, float in [0, 1] or bool")


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL modes -> an array to_rgb understands (keeping alpha and 16-bit depth)."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "1"):
        return np.asarray(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":  # 32-bit ints; 16-bit gray PNGs decode to this
        data = np.asarray(img)
        if data.size and data.min() >= 0 and 255 < data.max() <= 65535:
            return data.astype(np.uint16)  # 16-bit data: scale by the full 16-bit range
        return data  # to_rgb checks the range
    if mode == "P" and "transparency" in img.info:
        return np.asarray(img.convert("RGBA"))
    if mode in ("PA", "La", "RGBa"):
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))  # P, CMYK, YCbCr, LAB, HSV, F (float) ...


def load_image(path: str | Path, limits: ImageLimits | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB with its EXIF orientation applied.

    ``limits`` (optional) is checked on the header size before decoding, so that a huge
    file is refused without spending memory on it. Raises ImageError naming the file and
    the reason (missing, not a file, not an image, truncated or corrupt).
    """
    path = Path(path)
    label = str(path)
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if not path.is_file():
        raise ImageError(f"{label}: not a regular file")
    try:
        with Image.open(path) as img:
            if limits is not None:
                _check_dims(img.height, img.width, limits, label)
            img.load()  # decode now, so truncated data fails here and not later
            arr = _pil_to_array(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt payloads
        raise ImageError(f"{label}: cannot decode image ({exc})") from exc
    return to_rgb(arr, name=label)


def resize(rgb: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """``rgb`` resized to ``size`` = (height, width): area averaging when shrinking (no
    aliasing), bilinear when enlarging, or nearest-neighbour (exact pixel copies) on request."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive, got {size}")
    if rgb.shape[:2] == (h, w):
        return rgb
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif h <= rgb.shape[0] and w <= rgb.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (w, h), interpolation=interpolation))


def fit_long_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most ``max_side`` (None: unchanged)."""
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    s = max_side / max(h, w)
    return resize(rgb, (max(1, round(h * s)), max(1, round(w * s))))
