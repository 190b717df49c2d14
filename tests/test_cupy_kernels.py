"""CuPy frame kernels: their NumPy twins everywhere (against swscale and the torch compose), the
kernels against the twins where a GPU and CuPy are present."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from rt_portrait.engines import cupy_kernels as ck


@pytest.fixture(scope="module")
def rgb(astronaut) -> np.ndarray:
    return np.ascontiguousarray(astronaut[:254, :198])  # even sides, not multiples of 16


def test_rgb_to_i420_twin_matches_swscale(rgb) -> None:
    want = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    got = ck.rgb_to_i420_numpy(rgb)
    assert got.shape == want.shape == (254 * 3 // 2, 198)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_i420_to_rgb_twin_matches_swscale(rgb) -> None:
    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    want = av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray(format="rgb24")
    got = ck.i420_to_rgb_numpy(yuv, *rgb.shape[:2])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 4 and diff.mean() < 2.0, (diff.max(), diff.mean())
    # and the round trip keeps the picture
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 4


def test_twins_reject_bad_shapes(rgb) -> None:
    with pytest.raises(ValueError, match="even"):
        ck.rgb_to_i420_numpy(rgb[:253])
    with pytest.raises(ValueError, match="uint8 values"):
        ck.i420_to_rgb_numpy(np.zeros(10, np.uint8), 4, 4)


def test_compose_twin_matches_the_torch_blend() -> None:
    g = np.random.default_rng(0)
    frame = g.random((3, 40, 50), dtype=np.float32)
    face = g.random((3, 16, 20), dtype=np.float32)
    alpha = g.random((1, 16, 20), dtype=np.float32)
    want = torch.from_numpy(frame.copy())
    y0, x0 = 30, -5  # partly outside the frame: clipped
    region = want[:, 30:40, 0:15]
    a = torch.from_numpy(alpha)[:, :10, 5:20]
    want[:, 30:40, 0:15] = region * (1 - a) + torch.from_numpy(face)[:, :10, 5:20] * a
    got = ck.compose_into_numpy(frame, face, alpha, y0, x0)
    assert np.allclose(got, want.numpy(), atol=1e-6)


def test_gpu_path_is_off_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert not ck.gpu_available()


gpu = pytest.mark.skipif(not ck.gpu_available(), reason="needs CuPy and a CUDA GPU")


@gpu
@pytest.mark.gpu
def test_i420_kernels_match_their_twins(rgb) -> None:
    dev = torch.device("cuda")
    yuv = ck.rgb_to_i420_cuda(torch.from_numpy(rgb).to(dev))
    assert np.array_equal(yuv.cpu().numpy(), ck.rgb_to_i420_numpy(rgb))
    back = ck.i420_to_rgb_cuda(yuv, *rgb.shape[:2])
    assert np.array_equal(back.cpu().numpy(), ck.i420_to_rgb_numpy(yuv.cpu().numpy(), *rgb.shape[:2]))
    conv = ck.FrameConverter(dev)
    assert np.array_equal(conv.to_i420(rgb), ck.rgb_to_i420_numpy(rgb))


@gpu
@pytest.mark.gpu
def test_compose_kernel_matches_its_twin() -> None:
    g = np.random.default_rng(1)
    frame = g.random((3, 300, 200), dtype=np.float32)
    face = g.random((3, 128, 128), dtype=np.float32)
    alpha = g.random((1, 128, 128), dtype=np.float32)
    want = ck.compose_into_numpy(frame.copy(), face, alpha, 200, 100)
    got = ck.compose_into_cuda(
        torch.from_numpy(frame).cuda(),
        torch.from_numpy(face).cuda(),
        torch.from_numpy(alpha).cuda(),
        200,
        100,
    )
    assert np.allclose(got.cpu().numpy(), want, atol=1e-6)


def test_cpu_frames_are_pyav_and_gpu_frames_need_a_gpu(rgb) -> None:
    from rt_portrait.engines.frames import CpuFrames, frame_converter

    conv = frame_converter("cpu")
    assert isinstance(conv, CpuFrames) and conv.name == "cpu"
    frame = conv.encode(rgb)
    assert frame.format.name == "yuv420p" and (frame.height, frame.width) == rgb.shape[:2]
    want = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert np.array_equal(frame.to_ndarray(), want)
    back = conv.decode(frame)
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb.astype(int)).mean() < 4
    if not ck.gpu_available():
        assert frame_converter("cuda").name == "cpu"  # falls back, with the reason logged


@gpu
@pytest.mark.gpu
def test_gpu_frames_match_the_twins(rgb) -> None:
    from rt_portrait.engines.frames import frame_converter

    conv = frame_converter("cuda")
    assert conv.name == "cupy"
    frame = conv.encode(rgb)
    assert np.array_equal(frame.to_ndarray(), ck.rgb_to_i420_numpy(rgb))
    assert np.array_equal(conv.decode(frame), ck.i420_to_rgb_numpy(frame.to_ndarray(), *rgb.shape[:2]))


# ---------------------------------------------------------------- the CUDA source, emulated on the CPU

_HARNESS = r"""
#include <cstdint>
struct Dim3 { int x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
%(src)s
// every block and thread of a 2-D grid, one after another (the kernels share no memory)
#define LAUNCH(gx, gy, call)                                                          \
    blockDim = Dim3{16, 16, 1};                                                       \
    for (int by = 0; by < (gy); ++by) for (int bx = 0; bx < (gx); ++bx)               \
    for (int ty = 0; ty < 16; ++ty) for (int tx = 0; tx < 16; ++tx) {                 \
        blockIdx = Dim3{bx, by, 0}; threadIdx = Dim3{tx, ty, 0}; call; }
extern "C" void run_i420_to_rgb(const unsigned char* yuv, unsigned char* rgb, int h, int w) {
    LAUNCH((w + 15) / 16, (h + 15) / 16, i420_to_rgb(yuv, rgb, h, w)) }
extern "C" void run_rgb_to_i420(const unsigned char* rgb, unsigned char* yuv, int h, int w) {
    LAUNCH((w / 2 + 15) / 16, (h / 2 + 15) / 16, rgb_to_i420(rgb, yuv, h, w)) }
extern "C" void run_compose_into(float* frame, const float* face, const float* alpha, int fh, int fw,
                                 int h, int w, int y0, int x0) {
    LAUNCH((w + 15) / 16, (h + 15) / 16, compose_into(frame, face, alpha, fh, fw, h, w, y0, x0)) }
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The kernels' CUDA C compiled as C++ for the CPU (CUDA's built-ins as plain globals), so
    their indexing and arithmetic are checked against the twins on machines without a GPU."""
    import ctypes
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("kernels")
    (d / "k.cpp").write_text(_HARNESS % {"src": ck._SRC})
    subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.cpp")], check=True)
    return ctypes.CDLL(str(d / "k.so"))


def _ptr(a: np.ndarray):
    import ctypes

    return a.ctypes.data_as(ctypes.c_void_p)


def test_emulated_kernels_match_their_twins(emulated, rgb) -> None:
    h, w = rgb.shape[:2]
    yuv = np.zeros((h * 3 // 2, w), np.uint8)
    emulated.run_rgb_to_i420(_ptr(rgb), _ptr(yuv), h, w)
    assert np.array_equal(yuv, ck.rgb_to_i420_numpy(rgb))
    back = np.zeros_like(rgb)
    emulated.run_i420_to_rgb(_ptr(yuv), _ptr(back), h, w)
    assert np.array_equal(back, ck.i420_to_rgb_numpy(yuv, h, w))
    g = np.random.default_rng(2)
    frame = g.random((3, 60, 50), dtype=np.float32)
    face = g.random((3, 32, 24), dtype=np.float32)
    alpha = g.random((1, 32, 24), dtype=np.float32)
    for y0, x0 in ((10, 5), (40, 35), (-6, -4)):  # inside, over the far edges, over the near ones
        want = ck.compose_into_numpy(frame.copy(), face, alpha, y0, x0)
        got = frame.copy()
        emulated.run_compose_into(_ptr(got), _ptr(face), _ptr(alpha), 60, 50, 32, 24, y0, x0)
        assert np.allclose(got, want, atol=1e-6), (y0, x0)
