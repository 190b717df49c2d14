"""CuPy RawKernels for the frame conversions around the network, with their NumPy twins.

- ``i420_to_rgb``: a decoded WebRTC frame (I420 / yuv420p, one ``H*3/2 x W`` plane buffer as
  PyAV's ``to_ndarray(format="yuv420p")`` gives it) -> (H, W, 3) uint8 RGB;
- ``rgb_to_i420``: (H, W, 3) uint8 RGB -> the I420 buffer the encoder takes;
- ``compose_into``: the final soft-mask compose, ``frame[:, y0:y0+h, x0:x0+w] = frame * (1 - a)
  + face * a`` in place on a (3, H, W) float32 frame.

Colour: BT.601 limited range in 8-bit fixed point (what FFmpeg's swscale uses by default for
yuv420p <-> rgb24, so the server's output does not change colour when the GPU path is on).
The NumPy twins compute the same integers: GPU and CPU agree exactly, and the twins are
checked against swscale itself on every machine.

Tensors move between torch and CuPy through DLPack (no copies), and the kernels are
launched on torch's current CUDA stream. ``cupy`` is imported lazily (``pip install
'rt-portrait[gpu]'``); without it (or without a GPU), :func:`gpu_available` is False and the
callers keep their CPU paths.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

_SRC = r"""
__device__ __forceinline__ unsigned char clip255(int v) { return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

extern "C" __global__ void i420_to_rgb(const unsigned char* __restrict__ yuv, unsigned char* __restrict__ rgb,
                                       const int h, const int w) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const unsigned char* u_plane = yuv + h * w;
    const unsigned char* v_plane = u_plane + (h / 2) * (w / 2);
    const int c = (int)yuv[y * w + x] - 16;
    const int d = (int)u_plane[(y / 2) * (w / 2) + x / 2] - 128;
    const int e = (int)v_plane[(y / 2) * (w / 2) + x / 2] - 128;
    unsigned char* p = rgb + 3 * (y * w + x);
    p[0] = clip255((298 * c + 409 * e + 128) >> 8);
    p[1] = clip255((298 * c - 100 * d - 208 * e + 128) >> 8);
    p[2] = clip255((298 * c + 516 * d + 128) >> 8);
}

extern "C" __global__ void rgb_to_i420(const unsigned char* __restrict__ rgb, unsigned char* __restrict__ yuv,
                                       const int h, const int w) {
    // one thread per 2x2 block: four luma samples and one chroma pair from the block's mean
    const int bx = blockIdx.x * blockDim.x + threadIdx.x;
    const int by = blockIdx.y * blockDim.y + threadIdx.y;
    if (bx >= w / 2 || by >= h / 2) return;
    int rs = 0, gs = 0, bs = 0;
    for (int dy = 0; dy < 2; ++dy) {
        for (int dx = 0; dx < 2; ++dx) {
            const int y = 2 * by + dy, x = 2 * bx + dx;
            const unsigned char* p = rgb + 3 * (y * w + x);
            const int r = p[0], g = p[1], b = p[2];
            yuv[y * w + x] = clip255(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16);
            rs += r; gs += g; bs += b;
        }
    }
    const int r = (rs + 2) >> 2, g = (gs + 2) >> 2, b = (bs + 2) >> 2;
    unsigned char* u_plane = yuv + h * w;
    unsigned char* v_plane = u_plane + (h / 2) * (w / 2);
    u_plane[by * (w / 2) + bx] = clip255(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128);
    v_plane[by * (w / 2) + bx] = clip255(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128);
}

extern "C" __global__ void compose_into(float* __restrict__ frame, const float* __restrict__ face,
                                        const float* __restrict__ alpha, const int fh, const int fw,
                                        const int h, const int w, const int y0, const int x0) {
    // frame (3, fh, fw); face (3, h, w) and alpha (h, w) land at (y0, x0)
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    const int fy = y0 + y, fx = x0 + x;
    if (fy < 0 || fy >= fh || fx < 0 || fx >= fw) return;
    const float a = alpha[y * w + x];
    for (int c = 0; c < 3; ++c) {
        float* p = frame + (c * fh + fy) * fw + fx;
        *p = *p * (1.0f - a) + face[(c * h + y) * w + x] * a;
    }
}
"""


# ---------------------------------------------------------------- NumPy twins


def _check_i420(yuv: np.ndarray, h: int, w: int) -> None:
    if h % 2 or w % 2:
        raise ValueError(f"I420 needs an even width and height, got {w}x{h}")
    if yuv.dtype != np.uint8 or yuv.size != h * w * 3 // 2:
        raise ValueError(
            f"I420 buffer of {h}x{w} must hold {h * w * 3 // 2} uint8 values, got {yuv.size} {yuv.dtype}"
        )


def i420_to_rgb_numpy(yuv: np.ndarray, h: int, w: int) -> np.ndarray:
    """The NumPy twin of the ``i420_to_rgb`` kernel: (H*W*3/2,) or (H*3/2, W) uint8 -> (H, W, 3) uint8."""
    _check_i420(yuv, h, w)
    flat = yuv.reshape(-1)
    y = flat[: h * w].reshape(h, w).astype(np.int32)
    q = (h // 2) * (w // 2)
    u = flat[h * w : h * w + q].reshape(h // 2, w // 2).astype(np.int32)
    v = flat[h * w + q :].reshape(h // 2, w // 2).astype(np.int32)
    c = y - 16
    d = np.repeat(np.repeat(u - 128, 2, axis=0), 2, axis=1)
    e = np.repeat(np.repeat(v - 128, 2, axis=0), 2, axis=1)
    rgb = np.stack(
        [
            (298 * c + 409 * e + 128) >> 8,
            (298 * c - 100 * d - 208 * e + 128) >> 8,
            (298 * c + 516 * d + 128) >> 8,
        ],
        axis=-1,
    )
    return np.clip(rgb, 0, 255).astype(np.uint8)


def rgb_to_i420_numpy(rgb: np.ndarray) -> np.ndarray:
    """The NumPy twin of the ``rgb_to_i420`` kernel: (H, W, 3) uint8 -> (H*3/2, W) uint8 I420."""
    h, w = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb_to_i420 takes (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if h % 2 or w % 2:
        raise ValueError(f"I420 needs an even width and height, got {w}x{h}")
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = np.clip(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16, 0, 255)
    blocks = x.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
    m = (blocks + 2) >> 2
    r, g, b = m[..., 0], m[..., 1], m[..., 2]
    u = np.clip(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128, 0, 255)
    v = np.clip(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128, 0, 255)
    out = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).astype(np.uint8)
    return out.reshape(h * 3 // 2, w)


def compose_into_numpy(
    frame: np.ndarray, face: np.ndarray, alpha: np.ndarray, y0: int, x0: int
) -> np.ndarray:
    """The NumPy twin of ``compose_into`` (in place on ``frame`` (3, H, W) float32; returns it)."""
    _, fh, fw = frame.shape
    h, w = alpha.shape[-2:]
    ys, xs = slice(max(y0, 0), min(y0 + h, fh)), slice(max(x0, 0), min(x0 + w, fw))
    fy, fx = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
    a = alpha.reshape(h, w)[fy, fx].astype(np.float32)
    region = frame[:, ys, xs]
    frame[:, ys, xs] = region * (np.float32(1) - a) + face[:, fy, fx] * a
    return frame


# ---------------------------------------------------------------- CuPy


def import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise ImportError(
            "the GPU frame kernels need CuPy: pip install 'rt-portrait[gpu]' (cupy-cuda12x)"
        ) from e
    return cupy


@functools.cache  # a fact of the process: asked per frame, a failed import must not be retried
def gpu_available() -> bool:
    """CuPy importable and a CUDA device present (the condition for the GPU frame path)."""
    if not torch.cuda.is_available():
        return False
    try:
        import_cupy()
    except ImportError:
        return False
    return True


@functools.cache
def _kernels(device_index: int) -> dict[str, Any]:
    cp = import_cupy()
    with cp.cuda.Device(device_index):
        module = cp.RawModule(code=_SRC)
        return {name: module.get_function(name) for name in ("i420_to_rgb", "rgb_to_i420", "compose_into")}


_BLOCK = (16, 16, 1)


def _grid(w: int, h: int) -> tuple[int, int, int]:
    return ((w + _BLOCK[0] - 1) // _BLOCK[0], (h + _BLOCK[1] - 1) // _BLOCK[1], 1)


def _launch(name: str, device: torch.device, grid: tuple[int, int, int], args: tuple[Any, ...]) -> None:
    cp = import_cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _kernels(index)[name]
    stream = cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, index)
    with cp.cuda.Device(index), stream:
        kernel(grid, _BLOCK, args)


def _cp(t: torch.Tensor) -> Any:
    return import_cupy().from_dlpack(t)


def i420_to_rgb_cuda(yuv: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """I420 uint8 CUDA tensor (H*3/2, W) -> (H, W, 3) uint8 CUDA tensor."""
    if yuv.dtype != torch.uint8 or yuv.numel() != h * w * 3 // 2 or h % 2 or w % 2:
        raise ValueError(
            f"I420 {h}x{w} needs {h * w * 3 // 2} uint8 values and even sides, got {yuv.numel()} {yuv.dtype}"
        )
    yuv = yuv.contiguous()
    rgb = torch.empty(h, w, 3, dtype=torch.uint8, device=yuv.device)
    _launch("i420_to_rgb", yuv.device, _grid(w, h), (_cp(yuv), _cp(rgb), np.int32(h), np.int32(w)))
    return rgb


def rgb_to_i420_cuda(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 CUDA tensor -> (H*3/2, W) uint8 I420 CUDA tensor."""
    h, w = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != torch.uint8 or h % 2 or w % 2:
        raise ValueError(
            f"rgb_to_i420 takes (H, W, 3) uint8 with even sides, got {tuple(rgb.shape)} {rgb.dtype}"
        )
    rgb = rgb.contiguous()
    yuv = torch.empty(h * 3 // 2, w, dtype=torch.uint8, device=rgb.device)
    _launch("rgb_to_i420", rgb.device, _grid(w // 2, h // 2), (_cp(rgb), _cp(yuv), np.int32(h), np.int32(w)))
    return yuv


def compose_into_cuda(
    frame: torch.Tensor, face: torch.Tensor, alpha: torch.Tensor, y0: int, x0: int
) -> torch.Tensor:
    """In place on ``frame`` (3, H, W) float32 CUDA: the soft-mask blend of ``face`` (3, h, w)
    with ``alpha`` ((1,) h, w) at (y0, x0). Returns ``frame``."""
    if frame.dtype != torch.float32 or not frame.is_contiguous():
        raise ValueError("compose_into needs a contiguous float32 (3, H, W) frame")
    _, fh, fw = frame.shape
    h, w = alpha.shape[-2:]
    face = face.float().contiguous()
    alpha = alpha.float().contiguous()
    args = (
        _cp(frame),
        _cp(face),
        _cp(alpha),
        np.int32(fh),
        np.int32(fw),
        np.int32(h),
        np.int32(w),
        np.int32(y0),
        np.int32(x0),
    )
    _launch("compose_into", frame.device, _grid(w, h), args)
    return frame


class FrameConverter:
    """Host frames in and out, the colour conversion on the GPU (the server's CUDA path):
    ``to_rgb(i420 ndarray, h, w)`` and ``to_i420(rgb ndarray)``."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        import_cupy()
        if self.device.type != "cuda":
            raise ValueError(f"FrameConverter runs on CUDA, got {self.device}")

    def to_rgb(self, yuv: np.ndarray, h: int, w: int) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(yuv)).to(self.device, non_blocking=True)
        return i420_to_rgb_cuda(t, h, w).cpu().numpy()

    def to_i420(self, rgb: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device, non_blocking=True)
        return rgb_to_i420_cuda(t).cpu().numpy()
