"""One animator serves every live session from the sessions' own threads, and the server
shares one generator between portraits. Four sessions driven at once (two portraits, two
working sizes, frames interleaved by a barrier) must produce exactly what each produces
alone. Before: the scene cache and the generator's skin-colour cache (keyed by data_ptr)
were mutated from several threads without a lock."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import face_frames

from rt_portrait.core.assets import default_portrait
from rt_portrait.generator import WarpFillGenerator
from rt_portrait.pipeline import Animator, AnimatorConfig

FRAMES = 16
# (portrait, working size, clip, first frame): different heads, sizes and motion per session
SESSIONS = [
    ("astronaut", 128, "WolfgangLanger_Pexels.mp4", 150),
    ("astronaut", 96, "WolfgangLanger_Pexels.mp4", 200),
    ("grace_hopper", 128, "single_face.mp4", 0),
    ("grace_hopper", 96, "WolfgangLanger_Pexels.mp4", 250),
]


def animators() -> dict[str, Animator]:
    generator = WarpFillGenerator()  # shared across portraits, as in the server
    return {
        name: Animator(
            default_portrait(name), AnimatorConfig(size=128, generator="warp"), name=name, generator=generator
        )
        for name in ("astronaut", "grace_hopper")
    }


def drive(anims: dict[str, Animator], index: int, barrier: threading.Barrier | None, out: list) -> None:
    name, size, clip, start = SESSIONS[index]
    frames = face_frames(256, FRAMES, video=clip, start=start)
    session = anims[name].session()
    session.size = size
    try:
        for i, frame in enumerate(frames):
            if barrier is not None:
                barrier.wait(60)
            out.append(session(frame, t=i / 30.0).image)
    finally:
        session.close()


def test_four_sessions_at_once_match_the_same_sessions_alone() -> None:
    alone: list[list[np.ndarray]] = []
    for index in range(len(SESSIONS)):
        images: list[np.ndarray] = []
        drive(animators(), index, None, images)  # fresh animators: nothing cached from others
        alone.append(images)

    anims = animators()
    together: list[list[np.ndarray]] = [[] for _ in SESSIONS]
    barrier = threading.Barrier(len(SESSIONS))
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            drive(anims, index, barrier, together[index])
        except BaseException as exc:  # reported below with the session that failed
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(SESSIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for index, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert len(a) == len(b) == FRAMES
        worst = max(int(np.abs(x.astype(np.int16) - y).max()) for x, y in zip(a, b, strict=True))
        assert worst <= 1, f"session {SESSIONS[index]}: outputs differ by up to {worst} when run together"


def test_skin_cache_is_keyed_by_identity_not_address() -> None:
    """Two label maps at the same address with the same shape (a transposed view; after a
    free, a new tensor can land there too) are different sources."""
    import torch

    from rt_portrait.core.types import Region

    generator = WarpFillGenerator(mouth_prior=None)
    x = torch.arange(32, dtype=torch.float32) / 31
    source = x.expand(3, 32, 32).contiguous()  # brightness grows to the right
    labels = torch.zeros(32, 32, dtype=torch.int64)
    labels[:, :8] = int(Region.SKIN)  # skin on the left: dark
    left = generator._skin_colour(source, labels)
    top = labels.t()  # same data_ptr and shape, skin along the top: every column
    assert top.data_ptr() == labels.data_ptr()
    across = generator._skin_colour(source, top)
    assert left is not None and across is not None
    assert float(left[0]) < 0.25 < float(across[0]), (float(left[0]), float(across[0]))
