"""A live session over its frame budget degrades the generator first (2 sampling steps -> 1 ->
the warp fill), then the working size, and climbs back in the reverse order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rt_portrait.generator import WarpFillGenerator
from rt_portrait.generator.diffusion import save_weights
from rt_portrait.generator.select import generator_steps
from rt_portrait.generator.unet import ConditionalUNet, UNetConfig
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.server.session import Session, SessionLimits, generator_ladder
from rt_portrait.tracking import fit_long_side


@pytest.fixture(scope="module")
def animator(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Animator:
    torch.manual_seed(0)
    path: Path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(ConditionalUNet(UNetConfig(channels=8, time_dim=16)), path, residual_scale=4.0)
    cfg = AnimatorConfig(size=256, generator="diffusion", steps=2, generator_weights=str(path))
    return Animator(fit_long_side(astronaut, 256), cfg)


def test_generator_ladder(animator: Animator) -> None:
    ladder = generator_ladder(animator)
    assert [label for label, _ in ladder] == ["diffusion 2 steps", "diffusion 1 step", "warp"]
    assert ladder[0][1] is animator.generator
    assert generator_steps(ladder[1][1]) == 1 and generator_steps(animator.generator) == 2  # a view
    assert isinstance(ladder[2][1], WarpFillGenerator)
    warp = Animator(animator.source, AnimatorConfig(size=256, generator="warp"))
    assert [label for label, _ in generator_ladder(warp)] == ["warp"]


def test_degrades_generator_then_size_and_recovers(animator: Animator) -> None:
    session = Session("whip", animator, SessionLimits(fps=30.0, min_size=128), lambda s: None)
    try:
        st = session.stats
        # per ladder level: the generator's ms (the rest of the frame costs 20 ms at 256)
        gen_cost = {"diffusion 2 steps": 40.0, "diffusion 1 step": 20.0, "warp": 2.0}

        def frame() -> None:
            st.frames_out += 10  # ten frames later: past the settling wait
            size = session._anim.size
            g = load * gen_cost[st.generator] * (size / 256) ** 2
            st.stage_ms["generator"] = g
            st.stage_ms["server_total"] = load * 20.0 * (size / 256) ** 2 + g
            session._degrade(session._anim, st.stage_ms["server_total"])

        assert (st.generator, session._anim.size) == ("diffusion 2 steps", 256)
        assert session._anim.generator is animator.generator
        seen = []
        load = 2.5  # a slow machine: even the warp at 256 is over budget
        for _ in range(4):
            frame()
            seen.append((st.generator, session._anim.size, st.degrade_level))
        assert seen == [
            ("diffusion 1 step", 256, 1),
            ("warp", 256, 2),
            ("warp", 192, 3),
            ("warp", 128, 4),
        ]
        assert isinstance(session._anim.generator, WarpFillGenerator)
        load = 0.5  # lighter: size first, then the generator, as far as it fits (2 steps: 30 ms)
        for _ in range(6):
            frame()
        assert (st.generator, session._anim.size, st.degrade_level) == ("diffusion 1 step", 256, 1)
        load = 0.3  # light: back to the top (2 steps: 18 ms)
        for _ in range(3):
            frame()
        assert (st.generator, session._anim.size, st.degrade_level) == ("diffusion 2 steps", 256, 0)
        assert session.snapshot(private=False)["generator"] == "diffusion 2 steps"
    finally:
        session._executor.shutdown(wait=False)
        session._anim.close()
