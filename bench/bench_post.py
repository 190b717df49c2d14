"""The generator post-processes on the working grid (256², one face, one thread): the texture
match (on by default, ``DiffusionConfig.texture_gain``) and the warp-detail low-pass (off by
default), each a few separable blurs, and the chroma clamp (``AnimatorConfig.chroma_clamp``, on
for every generator) on a colour source and on a grey one (where every pixel is pulled in). Their share of the 1-step generator's ~30 ms is
``rt-portrait bench --generator diffusion --texture-gain 1`` against the default.

    python -m pytest bench/bench_post.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from rt_portrait.core.fill import gaussian_blur
from rt_portrait.generator.colour import CHROMA_CLAMP, keep_source_chroma, source_chroma
from rt_portrait.generator.diffusion import keep_warp_detail
from rt_portrait.generator.texture import TEXTURE_GAIN, match_warp_texture

R = 256


@pytest.fixture(scope="module")
def images(one_thread) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    warped = (0.5 + 0.1 * torch.randn(1, 3, R, R, generator=g)).clamp(0, 1)
    face = gaussian_blur(warped, 0.8)
    visibility = torch.zeros(1, R, R)
    visibility[:, :, : R * 3 // 4] = 1
    return face, warped, visibility


def test_texture_match(benchmark, images) -> None:
    face, warped, visibility = images
    out = benchmark(match_warp_texture, face, warped, visibility, TEXTURE_GAIN)
    assert out.shape == face.shape


def test_warp_detail(benchmark, images) -> None:
    face, warped, visibility = images
    out = benchmark(keep_warp_detail, face, warped, visibility, 2.0)
    assert out.shape == face.shape


@pytest.mark.parametrize("source", ["colour", "grey"])
def test_chroma_clamp(benchmark, images, source: str) -> None:
    face, warped, visibility = (x[0] for x in images)
    if source == "grey":
        warped = warped.mean(0, keepdim=True).expand(3, -1, -1)
    stats = source_chroma(warped, torch.ones(R, R, dtype=torch.long))
    out = benchmark(keep_source_chroma, face, stats, CHROMA_CLAMP, warped, visibility)
    assert out.shape == face.shape
