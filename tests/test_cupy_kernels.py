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
