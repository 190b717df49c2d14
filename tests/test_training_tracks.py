"""The training cache rendered from exported tracks (a machine without mediapipe or PyAV)
against the cache built with live tracking, on a real registry clip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rt_portrait.core.assets import pyfeat_file
from rt_portrait.core.video import read_frames
from rt_portrait.training.cache import (
    LANDMARK_STEP,
    CacheConfig,
    ClipTracks,
    build_clip,
    load_tracks,
    pool_indices,
    read_frames_cv2,
    render_clip,
    track_clip,
)

CLIP = "WolfgangLanger_Pexels.mp4"


@pytest.fixture(scope="module")
def clip() -> Path:
    return pyfeat_file(CLIP)


@pytest.fixture(scope="module")
def cfg(clip: Path) -> CacheConfig:
    # every candidate becomes a target, so the pairs do not hinge on sampling weights that the
    # landmarks' 1/16 px storage could nudge
    return CacheConfig(data=clip.parent, size=128, pool=8, sources=1, targets=100)


@pytest.fixture(scope="module")
def tracks(clip: Path, cfg: CacheConfig) -> ClipTracks:
    t = track_clip(clip, clip.parent, cfg)
    assert t is not None
    return t


def test_tracks_cover_the_pool_and_the_history_frames(tracks: ClipTracks, cfg: CacheConfig) -> None:
    pool = pool_indices(tracks.frame_count, cfg)
    assert np.array_equal(tracks.pool, pool)
    assert set(pool) | set(pool - cfg.history_gap) == set(tracks.indices)
    assert tracks.found.mean() > 0.8  # a real face, tracked
    with pytest.raises(KeyError, match="not tracked"):
        tracks.track(int(pool[0]) + 1)


def test_tracks_round_trip_through_the_file(tracks: ClipTracks, tmp_path: Path) -> None:
    path = tmp_path / "tracks.npz"
    np.savez_compressed(path, **tracks.pack())
    (back,) = load_tracks(path)
    assert back.name == tracks.name and back.frame_count == tracks.frame_count
    assert back.image_size == tracks.image_size
    assert np.array_equal(back.found, tracks.found)
    err = np.abs(back.landmarks - tracks.landmarks)[tracks.found].max()
    assert err <= LANDMARK_STEP / 2 + 1e-3  # rounding to the storage step, nothing more
    row = int(np.argmax(tracks.found))
    i = int(tracks.indices[row])
    assert np.allclose(back.track(i).landmarks, tracks.landmarks[row], atol=LANDMARK_STEP)


def test_opencv_frames_are_the_decoders_frames(clip: Path, tracks: ClipTracks) -> None:
    wanted = tracks.indices[:4]
    got = read_frames_cv2(clip, wanted, tracks.frame_count)
    ref = list(read_frames(clip))
    for i in wanted:
        assert np.abs(got[int(i)].astype(int) - ref[int(i)]).mean() < 0.5
    with pytest.raises(ValueError, match=r"decoded \d+ frames, the tracker saw"):
        read_frames_cv2(clip, wanted, tracks.frame_count + 1)


def test_cache_from_tracks_matches_the_live_cache(clip: Path, tracks: ClipTracks, cfg: CacheConfig) -> None:
    live = build_clip(clip, cfg, np.random.default_rng(7))
    frames = read_frames_cv2(clip, tracks.indices, tracks.frame_count)
    (stored,) = _round_trip(tracks)
    offline = render_clip(frames, stored.track, stored.pool, stored.image_size, cfg, np.random.default_rng(7))
    assert live is not None and offline is not None
    assert np.array_equal(live["meta"][:, :2], offline["meta"][:, :2])  # the same pairs
    # the window follows the source's landmarks, so the crops move by a fraction of a pixel
    for k in ("target", "warped", "history"):
        diff = np.abs(live[k].astype(np.float32) - offline[k].astype(np.float32)).mean()
        assert diff < 1.0, (k, diff)  # uint8 levels: landmark storage moves a few edge pixels
    assert (live["labels"] != offline["labels"]).mean() < 0.01


def test_more_sources_give_more_pairs_of_the_same_tracks(
    tracks: ClipTracks, clip: Path, cfg: CacheConfig
) -> None:
    frames = read_frames_cv2(clip, tracks.indices, tracks.frame_count)
    one = render_clip(
        frames,
        tracks.track,
        tracks.pool,
        tracks.image_size,
        replace(cfg, targets=2),
        np.random.default_rng(0),
    )
    two = render_clip(
        frames,
        tracks.track,
        tracks.pool,
        tracks.image_size,
        replace(cfg, sources=2, targets=2),
        np.random.default_rng(0),
    )
    assert one is not None and two is not None
    assert len(one["warped"]) == 2 and len(two["warped"]) == 4
    assert len(set(two["meta"][:, 0].tolist())) == 2  # two distinct sources


def _round_trip(tracks: ClipTracks) -> list[ClipTracks]:
    packed = tracks.pack()
    return [ClipTracks.unpack(packed, tracks.name)]


def test_near_pairs_are_the_still_source_and_its_closest_frames(
    clip: Path, tracks: ClipTracks, cfg: CacheConfig
) -> None:
    """``near``: per source, the source frame itself (no motion: the warp is the target) and
    the next-closest frames by pose and expression, whatever the biased draw took."""
    near = replace(cfg, targets=0, near=3)
    frames = read_frames_cv2(clip, tracks.indices, tracks.frame_count)
    arrays = render_clip(frames, tracks.track, tracks.pool, tracks.image_size, near, np.random.default_rng(0))
    assert arrays is not None and len(arrays["warped"]) == 3
    # per source, its face's detail level, as the runtime measures it (a real video frame)
    assert arrays["source_detail"].shape == (1,) and 0.001 < float(arrays["source_detail"][0]) < 0.1
    source, target, dist = arrays["meta"].T
    assert target[0] == source[0] and dist[0] < 1e-6
    assert np.array_equal(arrays["warped"][0], arrays["target"][0])  # nothing moved, nothing to fix
    assert dist[1] > 0 and dist[2] > 0
    # the two closest candidates by the sampler's own measure
    from rt_portrait.head import fit_head
    from rt_portrait.training.cache import _pose_expr_distance

    s0 = int(source[0])
    state = {
        int(i): fit_head(tracks.track(int(i)).landmarks, tracks.image_size)
        for i in tracks.pool
        if tracks.track(int(i)).found
    }
    cands = [i for i in state if abs(i - s0) > near.history_gap]
    closest = sorted(cands, key=lambda i: _pose_expr_distance(state[i], state[s0]))[:2]
    assert [int(t) for t in target[1:]] == closest
    # with the biased draw too, the near pairs come on top
    both = render_clip(
        frames, tracks.track, tracks.pool, tracks.image_size, replace(cfg, near=3), np.random.default_rng(0)
    )
    plain = render_clip(frames, tracks.track, tracks.pool, tracks.image_size, cfg, np.random.default_rng(0))
    assert both is not None and plain is not None
    assert len(both["warped"]) == len(plain["warped"]) + 1  # targets=100 took every candidate already


def test_a_warp_fill_cache_stores_the_filled_warp_of_the_same_pairs(
    clip: Path, tracks: ClipTracks, cfg: CacheConfig
) -> None:
    """``base="warp_fill"``: the same pairs and targets, with the warp's holes filled by the
    learning-free generator (the residual base a warp_fill model is trained and run on)."""
    frames = read_frames_cv2(clip, tracks.indices, tracks.frame_count)

    def render(base: str = "warp") -> dict[str, np.ndarray] | None:
        c = replace(cfg, targets=3, base=base)
        return render_clip(frames, tracks.track, tracks.pool, tracks.image_size, c, np.random.default_rng(0))

    raw, filled = render(), render(base="warp_fill")
    assert raw is not None and filled is not None
    assert np.array_equal(raw["meta"], filled["meta"]) and np.array_equal(raw["target"], filled["target"])
    visible = raw["visibility"][:, 0] >= 255 * 0.75  # (N, R, R): sampled from the source
    hidden = raw["visibility"][:, 0] < 255 * 0.25
    diff = np.abs(raw["warped"].astype(int) - filled["warped"].astype(int)).max(1)  # (N, R, R)
    assert hidden.any() and (diff[hidden] > 0).any()  # the holes are filled
    assert (diff[visible] == 0).mean() > 0.95  # the warp stays where the source shows it
    with pytest.raises(ValueError, match="base must be one of"):
        render(base="x")
