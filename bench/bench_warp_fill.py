"""Per-call cost of the learning-free generator (the warp fill) at 256², one thread.

Run:  python -m pytest bench/bench_warp_fill.py --benchmark-enable -s

The embedded portrait turned by yaw edits (0, 25 and 40 degrees: nothing, some and much of
the side of the head revealed), filled by today's warp fill and by the session-15 one (no
refill of hair that shows a stretched sliver of the face, reflections from any visible pixel
of the kind). The inputs are built once per angle, outside the timing. ``test_interleaved``
alternates the two fills call by call and prints the ratio of their medians, measured in one
run (the timings above are separate runs, so load changes between them).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rt_portrait.core.assets import default_portrait
from rt_portrait.core.image import fit_long_side
from rt_portrait.generator import GeneratorInput, GeneratorOutput, WarpFillGenerator
from rt_portrait.head.types import Edits
from rt_portrait.pipeline import Animator, AnimatorConfig

YAWS = (0, 25, 40)
FILLS = {
    "today": WarpFillGenerator,
    "session15": lambda: WarpFillGenerator(own_kind_donors=False, stretch_at=0.0),
}


pytestmark = pytest.mark.usefixtures("one_thread")


class _Capture:
    """A generator that keeps the inputs it is given (the pipeline builds them)."""

    uses_history = False

    def __init__(self) -> None:
        self.fill = WarpFillGenerator()
        self.inputs: GeneratorInput | None = None

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        self.inputs = inputs
        return self.fill(inputs)


@pytest.fixture(scope="module")
def turned() -> dict[int, GeneratorInput]:
    capture = _Capture()
    animator = Animator(
        fit_long_side(default_portrait("astronaut"), 512), AnimatorConfig(size=256, generator="warp")
    )
    animator.generator = capture
    out = {}
    for yaw in YAWS:
        animator.render_edits(Edits(yaw=yaw))
        assert capture.inputs is not None
        out[yaw] = capture.inputs
    return out


@pytest.mark.parametrize("fill", list(FILLS))
@pytest.mark.parametrize("yaw", YAWS)
def test_warp_fill(benchmark, turned, yaw: int, fill: str) -> None:
    generator = FILLS[fill]()
    inputs = turned[yaw]
    out = benchmark.pedantic(lambda: generator(inputs), rounds=40, warmup_rounds=3)
    assert out.face.shape == inputs.warped.shape


def test_interleaved(turned) -> None:
    today, before = FILLS["today"](), FILLS["session15"]()
    for yaw in YAWS:
        inputs = turned[yaw]
        times: dict[str, list[float]] = {"today": [], "session15": []}
        for _ in range(40):
            for name, generator in (("today", today), ("session15", before)):
                t0 = time.perf_counter()
                generator(inputs)
                times[name].append((time.perf_counter() - t0) * 1e3)
        a, b = np.median(times["today"]), np.median(times["session15"])
        print(f"\nyaw {yaw:2d}: today {a:.2f} ms, session 15 {b:.2f} ms, ratio {a / b:.2f}")
        assert a > 0 and b > 0


def test_aside_interleaved() -> None:
    """A source that looks 35° aside (the portrait turned by an edit) turned back to the
    camera: the fill with the face's mirror side (its second flow pass included, since the
    fill asks for it) against the fill without, alternated call by call."""
    source = Animator(fit_long_side(default_portrait("astronaut"), 512), AnimatorConfig(size=256))
    aside = source.render_edits(Edits(yaw=35)).image
    capture = _Capture()
    animator = Animator(aside, AnimatorConfig(size=256, generator="warp"))
    animator.generator = capture
    animator.render_edits(Edits(yaw=-35))
    inputs = capture.inputs
    assert inputs is not None and inputs.mirror is not None
    fills = {"mirror": WarpFillGenerator(), "no mirror": WarpFillGenerator(mirror_face=False)}
    times: dict[str, list[float]] = {name: [] for name in fills}
    for _ in range(30):
        for name, generator in fills.items():
            t0 = time.perf_counter()
            generator(inputs)
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"\naside source turned back: mirror {med['mirror']:.2f} ms, no mirror {med['no mirror']:.2f} ms")
