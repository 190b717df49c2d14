"""Per-frame cost of the 3D-flow stage: scene cloud + flow + K-candidate encoding.

Run: python -m pytest bench/bench_flow.py --benchmark-enable
The scene is the real head scene of the astronaut portrait (tracked once) with edited
target states (turn, open mouth, smile). Goals, CPU torch path at 1 thread
(``OMP_NUM_THREADS=1``, as ``rt-portrait --threads 1``): flow + encoding <= 8 ms at 256^2 and
<= 25 ms at 512^2 (the source cloud's point and background visibility are computed once per
session and passed in, as the pipeline does). The ``gpu`` benchmarks compare the
compiled Triton kernels with the torch twin on the same CUDA device (goal: <= 0.5 ms at
512^2 and >= 10x the twin).
"""

from __future__ import annotations

import pytest
import torch

from rt_portrait.compose import choose_window
from rt_portrait.core.assets import default_portrait
from rt_portrait.flow import FlowConfig, compute_flow, source_background_visibility, source_visibility
from rt_portrait.flow.scene import SceneBuilder
from rt_portrait.head import apply_edits, build_shell, fit_head, load_template
from rt_portrait.head.types import Edits
from rt_portrait.tracking import track_image

EDITS = [
    Edits(yaw=12.0, jaw_open=0.6),
    Edits(pitch=-8.0, smile=0.7),
    Edits(roll=6.0, blink_left=1.0, gaze_x=0.4),
]


@pytest.fixture(scope="module")
def head() -> dict[str, object]:
    img = default_portrait("astronaut")
    track = track_image(img)
    tpl = load_template()
    state = fit_head(track.landmarks, img.shape[:2], template=tpl)
    return {
        "image_size": img.shape[:2],
        "landmarks": track.landmarks,
        "template": tpl,
        "shell": build_shell(tpl),
        "state": state,
        "targets": [apply_edits(state, e, tpl) for e in EDITS],
    }


def _scene(head: dict, size: int, device: str = "cpu"):
    window = choose_window(head["landmarks"], head["image_size"], size)
    builder = SceneBuilder(
        head["template"],
        head["shell"],
        window,
        head["image_size"],
        device=device,
        head_scale=head["state"].pose.scale,
        anchor_pose=head["state"].pose,
    )
    source = builder(head["state"])
    targets = [builder(t) for t in head["targets"]]
    return builder, source, targets


def _cycle(items):
    state = {"i": 0}

    def nxt():
        state["i"] += 1
        return items[state["i"] % len(items)]

    return nxt


@pytest.mark.parametrize("size", [256, 512])
def test_flow_torch_cpu(benchmark, head, size: int) -> None:
    builder, source, targets = _scene(head, size)
    cfg = FlowConfig(size=size, backend="torch")
    vis = source_visibility(source, cfg)
    bg = source_background_visibility(source, cfg)
    nxt = _cycle(targets)
    benchmark.extra_info.update(points=builder.num_points, threads=torch.get_num_threads(), **builder.counts)
    fields = benchmark(lambda: compute_flow(nxt(), source, cfg, source_visible=vis, source_background=bg))
    assert fields.flow.shape == (2, size, size) and torch.isfinite(fields.encoding).all()


@pytest.mark.parametrize("size", [256, 512])
def test_source_visibility_torch_cpu(benchmark, head, size: int) -> None:
    """Once per session (the source cloud is fixed)."""
    _, source, _ = _scene(head, size)
    cfg = FlowConfig(size=size, backend="torch")
    vis = benchmark(lambda: (source_visibility(source, cfg), source_background_visibility(source, cfg)))
    assert vis[0].shape == (source.xyz.shape[0],) and vis[1].shape == (size, size)


@pytest.mark.parametrize("size", [256, 512])
def test_scene_build(benchmark, head, size: int) -> None:
    builder, _, _ = _scene(head, size)
    nxt = _cycle(head["targets"])
    cloud = benchmark(lambda: builder(nxt()))
    assert cloud.xyz.shape == (builder.num_points, 3)


def _cuda_ok() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("size", [256, 512])
def test_flow_cuda(benchmark, head, size: int, backend: str) -> None:
    _, source, targets = _scene(head, size, device="cuda")
    cfg = FlowConfig(size=size, backend=backend)
    vis = source_visibility(source, cfg)
    bg = source_background_visibility(source, cfg)
    nxt = _cycle(targets)

    def run():
        out = compute_flow(nxt(), source, cfg, source_visible=vis, source_background=bg)
        torch.cuda.synchronize()
        return out

    fields = benchmark(run)
    assert fields.flow.is_cuda
