"""Frame conversions around the pipeline in the live server: decoded WebRTC frames to RGB, and
RGB back to the I420 frames the encoder takes.

:func:`frame_converter` picks, once per session, :class:`CpuFrames` (PyAV / swscale) or, on a
CUDA device with CuPy, :class:`GpuFrames` (the RawKernels of :mod:`.cupy_kernels`, BT.601
limited range like swscale). Frames that are not I420 with even sides take the CPU path.
"""

from __future__ import annotations

import logging

import numpy as np
from av import VideoFrame

from rt_portrait.engines import cupy_kernels

log = logging.getLogger(__name__)


class CpuFrames:
    """PyAV's own conversions (swscale)."""

    name = "cpu"

    def decode(self, frame: VideoFrame) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a decoded frame."""
        return frame.to_ndarray(format="rgb24")

    def encode(self, rgb: np.ndarray) -> VideoFrame:
        """An I420 frame of an (H, W, 3) uint8 RGB image."""
        return VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24").reformat(
            format="yuv420p"
        )


class GpuFrames(CpuFrames):
    """The colour conversions as CuPy kernels on a CUDA device (host arrays in and out)."""

    name = "cupy"

    def __init__(self, device: str = "cuda") -> None:
        self.converter = cupy_kernels.FrameConverter(device)

    def decode(self, frame: VideoFrame) -> np.ndarray:
        h, w = frame.height, frame.width
        if frame.format.name != "yuv420p" or h % 2 or w % 2:
            return super().decode(frame)
        return self.converter.to_rgb(frame.to_ndarray(format="yuv420p"), h, w)

    def encode(self, rgb: np.ndarray) -> VideoFrame:
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            return super().encode(rgb)
        return VideoFrame.from_ndarray(self.converter.to_i420(rgb), format="yuv420p")


def frame_converter(device: str) -> CpuFrames:
    """GpuFrames on a CUDA device when CuPy is installed, else CpuFrames (the reason logged)."""
    if not device.startswith("cuda"):
        return CpuFrames()
    if not cupy_kernels.gpu_available():
        log.info(
            "frame conversions on the CPU: CuPy or the CUDA device is missing (pip install 'rt-portrait[gpu]')"
        )
        return CpuFrames()
    return GpuFrames(device)
