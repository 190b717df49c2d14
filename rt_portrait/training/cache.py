"""The conditioning cache: pairs of frames of one clip -> the runtime's GeneratorInput fields.

For each clip: a pool of frames is tracked (static-image mode), each fitted with the head
model; two sources are chosen (the most frontal frame and a random one) and, per source,
targets drawn with probability growing with their pose and expression difference from the
source (revealed regions and mouths). For each (source, target) pair the condition is
computed exactly as :meth:`rt_portrait.pipeline.Animator.render` computes it: the source's
scene, the target's head state from its own landmarks (identity of the source), the flow with
the elastic background and the window taper, the warped source. The ground truth is the
*target frame* cropped with the source's window. History: the frame ``history_gap`` frames
before the target, cropped the same way and warped by the flow between the two target head
states (the runtime warps its previous output the same way).

Storage, per clip, one ``.npz``-like folder of ``.npy`` arrays (memory-mapped at training):
uint8 images (warped, target, history, source per pair), uint8 visibility (x255) and labels,
float16 encoding, depth and normal; per source, its face's detail level (``source_detail``,
:mod:`rt_portrait.generator.source_detail`), whose median the trained weights record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from rt_portrait.tracking.types import TrackResult

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "rt-portrait" / "gen-cache"
DEFAULT_DATA = Path("/work/shared/data")
ARRAYS = (
    "warped",
    "target",
    "history",
    "source",
    "visibility",
    "labels",
    "encoding",
    "depth",
    "normal",
    "flow",
)


@dataclass
class CacheConfig:
    data: Path = DEFAULT_DATA
    out: Path = DEFAULT_CACHE
    split: str = "train"
    size: int = 256
    pool: int = 80  # frames tracked per clip to choose pairs from
    sources: int = 2  # sources per clip
    targets: int = 24  # targets per source, drawn with a bias toward large pose and expression changes
    # and per source the source frame itself plus its near - 1 closest frames as targets: with
    # the biased draw alone the model never sees a still head, and changed a face that did not move
    near: int = 0
    history_gap: int = 2  # frames between the history frame and the target
    # the residual base stored as ``warped`` (generator.diffusion.BASES): "warp", or the warp
    # with its holes filled by the learning-free generator ("warp_fill": hair and background by
    # push-pull, as before session 12; "warp_mirror": by reflection, today's fill)
    base: str = "warp"
    # the head shell's skin follow (flow.scene.SceneConfig) the pairs are rendered with; a model
    # trained on them records it and is served with it
    skin_follow: float = 0.25
    # how the base paints a mouth the source keeps shut (generator.mouth.MOUTH_STYLES); recorded
    # like the base, so a model trained on the pairs is served the same painting
    mouth: str = "teeth"
    # the skull behind the face (pipeline.AnimatorConfig.shell: "fitted" or "generic"); recorded
    # too: a model is served the skull it was trained on
    shell: str = "fitted"
    # the person's head beyond the fitted skull attached to it (AnimatorConfig.fringe), and
    # background that samples the source's head unseen (AnimatorConfig.background_seen), as the
    # runtime's warp fill has them since session 21; recorded, so a model is served them too
    fringe: bool = True
    background_seen: bool = True
    seed: int = 0
    max_clips: int | None = None


def clips_of(data: Path, split: str) -> list[Path]:
    rows = (data / "MANIFEST.tsv").read_text().splitlines()
    head = rows[0].split("\t")
    fi, si = head.index("file"), head.index("split")
    return [
        data / r.split("\t")[fi]
        for r in rows[1:]
        if r.split("\t")[si] == split and r.split("\t")[fi].startswith("clips/")
    ]


def _pose_expr_distance(a, b) -> float:  # HeadState, HeadState
    from scipy.spatial.transform import Rotation

    ang = np.degrees(Rotation.from_matrix(a.pose.rotation @ b.pose.rotation.T).magnitude())
    scale = abs(np.log(a.pose.scale / b.pose.scale)) * 100
    expr = (
        float(np.abs(a.expression - b.expression).mean()) / max(float(np.ptp(a.identity[:, 0])), 1e-6) * 1000
    )
    return float(ang + scale + expr)


def render_input(animator, target_state, size: int):  # Animator, HeadState -> GeneratorInput, points
    """The GeneratorInput exactly as Animator.render builds it (history None)."""
    return animator.generator_input(target_state, size)


def history_warp(
    animator, target_points, prev_state, prev_frame_working: torch.Tensor, size: int
) -> torch.Tensor:
    """The previous frame (working crop) warped to the target by the flow between the two
    target head states (target -> previous)."""
    from rt_portrait.compose import warp_working
    from rt_portrait.flow import compute_flow
    from rt_portrait.flow.elastic import elastic_background

    scene = animator.scene(size)
    prev_points = scene.builder(prev_state)
    fields = compute_flow(target_points, prev_points, scene.flow_config)
    flow = elastic_background(fields) * scene.taper
    return warp_working(prev_frame_working, flow)


def _u8(t: torch.Tensor) -> np.ndarray:
    return t.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def pool_indices(n: int, cfg: CacheConfig) -> np.ndarray:
    """The frames of an ``n``-frame clip that may become sources or targets."""
    gap = cfg.history_gap
    return np.unique(np.linspace(gap, n - 1, min(cfg.pool, n - gap)).round().astype(int))


def build_clip(path: Path, cfg: CacheConfig, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    from rt_portrait.core.video import read_frames
    from rt_portrait.tracking import FaceTracker, TrackerConfig

    frames = list(read_frames(path))
    n = len(frames)
    if n < 10:
        return None
    tracker = FaceTracker(TrackerConfig(static_image=True, max_faces=1))
    tracks: dict[int, TrackResult] = {}

    def track(i: int) -> TrackResult:
        if i not in tracks:
            tracks[i] = tracker.track(frames[i])
        return tracks[i]

    try:
        return render_clip(frames, track, pool_indices(n, cfg), frames[0].shape[:2], cfg, rng)
    finally:
        tracker.close()


def render_clip(
    frames: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    track: Callable[[int], TrackResult],
    pool: np.ndarray,
    image_size: tuple[int, int],
    cfg: CacheConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray] | None:
    """The cached pairs of one clip from its frames and a tracker (live, or :class:`ClipTracks`)."""
    from scipy.spatial.transform import Rotation

    from rt_portrait.compose import crop_window, to_tensor
    from rt_portrait.flow.scene import SceneConfig
    from rt_portrait.generator.diffusion import BASES, base_fill, fill_warp
    from rt_portrait.generator.source_detail import face_detail, face_mask
    from rt_portrait.head import fit_head
    from rt_portrait.pipeline import Animator, AnimatorConfig

    gap = cfg.history_gap
    if cfg.base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {cfg.base!r}")
    fill = base_fill(cfg.base, cfg.mouth)
    found = [int(i) for i in pool if track(int(i)).found]
    if len(found) < 6:
        return None
    states = {i: fit_head(track(i).landmarks, image_size) for i in found}
    # sources: the most frontal frame (smallest rotation) and random others
    ang = np.array([Rotation.from_matrix(states[i].pose.rotation).magnitude() for i in found])
    srcs = [found[int(np.argmin(ang))]]
    others = [i for i in found if i != srcs[0]]
    srcs += list(rng.choice(others, size=min(cfg.sources - 1, len(others)), replace=False))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    out["source_index"] = []
    out["source_detail"] = []  # per source: its face's detail level (generator.source_detail)
    out["meta"] = []
    for si, s in enumerate(srcs):
        s = int(s)
        animator = Animator(
            frames[s],
            AnimatorConfig(
                size=cfg.size,
                generator="warp",
                scene=SceneConfig(skin_follow=cfg.skin_follow),
                shell=cfg.shell,
                fringe=cfg.fringe,
                background_seen=cfg.background_seen,
            ),
            source_track=track(s),
        )
        scene = animator.scene(cfg.size)
        out["source"].append(_u8(scene.source_working))
        labels = scene.source_labels.reshape(cfg.size, cfg.size)
        out["source_detail"].append(
            np.array(face_detail(scene.source_working, face_mask(labels)), np.float32)
        )
        cands = [i for i in found if abs(i - s) > gap]
        d = np.array([_pose_expr_distance(states[i], states[s]) for i in cands])
        p = (d + 1e-3) ** 1.5
        p = p / p.sum()
        chosen = list(rng.choice(cands, size=min(cfg.targets, len(cands)), replace=False, p=p))
        if cfg.near > 0:
            closest = [cands[j] for j in np.argsort(d, kind="stable") if cands[j] not in chosen]
            chosen += [s, *closest[: cfg.near - 1]]
        for t in chosen:
            t = int(t)
            tstate = fit_head(
                track(t).landmarks,
                image_size,
                template=animator.template,
                identity=animator.source_state.identity,
            )
            inputs, tpoints = render_input(animator, tstate, cfg.size)
            if fill is not None:
                inputs = fill_warp(inputs, fill)
            gt = crop_window(to_tensor(frames[t]), scene.window)
            prev = track(t - gap)
            if prev.found:
                pstate = fit_head(
                    prev.landmarks,
                    image_size,
                    template=animator.template,
                    identity=animator.source_state.identity,
                )
                hist = history_warp(
                    animator,
                    tpoints,
                    pstate,
                    crop_window(to_tensor(frames[t - gap]), scene.window),
                    cfg.size,
                )
            else:
                hist = inputs.warped
            f = inputs.fields
            out["warped"].append(_u8(inputs.warped))
            out["target"].append(_u8(gt))
            out["history"].append(_u8(hist))
            out["visibility"].append(_u8(f.visibility))
            out["labels"].append(f.labels.to(torch.uint8).numpy())
            out["encoding"].append(f.encoding.half().numpy())
            out["depth"].append(f.depth.half().numpy())
            out["normal"].append(f.normal.half().numpy())
            out["flow"].append(f.flow.half().numpy())
            out["source_index"].append(np.array(si, np.int32))
            out["meta"].append(
                np.array([s, t, _pose_expr_distance(tstate, animator.source_state)], np.float32)
            )
    if not out["warped"]:
        return None
    return {k: np.stack(v) for k, v in out.items()}


def _save_config(root: Path, cfg: CacheConfig) -> None:
    (root / "config.json").write_text(json.dumps({k: str(v) for k, v in vars(cfg).items()}, indent=1))


def _cache_config(root: Path) -> dict[str, str]:
    """A cache's config.json ({} for a cache written before it had one)."""
    config = Path(root) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


def cache_base(root: Path) -> str:
    """The residual base a cache was rendered with ("warp" before caches recorded it)."""
    return str(_cache_config(root).get("base", "warp"))


def cache_mouth(root: Path) -> str:
    """The mouth style a cache's base was painted with ("strips" before caches recorded it)."""
    return str(_cache_config(root).get("mouth", "strips"))


def cache_skin_follow(root: Path) -> float:
    """The head shell's skin follow a cache was rendered with (0: a rigid shell, before session 12)."""
    return float(_cache_config(root).get("skin_follow", 0.0))


def cache_shell(root: Path) -> str:
    """The skull a cache's pairs were rendered on ("generic" before caches recorded it; the
    teeth cache of sessions 15-16 was rendered on the fitted skull before it did, and its
    config.json was given the key by hand)."""
    return str(_cache_config(root).get("shell", "generic"))


def _cache_flag(root: Path, key: str) -> bool:
    """A boolean of a cache's config.json (written as "True"/"False"); False when absent."""
    return str(_cache_config(root).get(key, False)) == "True"


def cache_fringe(root: Path) -> bool:
    """Whether a cache's fitted skulls carry the person's head beyond them (not before session 21)."""
    return _cache_flag(root, "fringe")


def cache_background_seen(root: Path) -> bool:
    """Whether a cache's background that samples the source's head is unseen (not before session 21)."""
    return _cache_flag(root, "background_seen")


def cache_source_detail(root: Path) -> float | None:
    """The median detail level of the cache's sources (the level a model trained on it is
    shown, ``DiffusionConfig.source_detail``), or None for a cache from before session 19,
    which does not record it."""
    levels = [np.load(f) for f in sorted(root.glob("**/source_detail.npy"))]
    return float(np.median(np.concatenate(levels))) if levels else None


def _save_clip(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(dest / f"{k}.npy", v)
    (dest / "done").write_text(json.dumps({"pairs": len(arrays["warped"])}))


def build_cache(cfg: CacheConfig) -> Path:
    from tqdm import tqdm

    torch.set_grad_enabled(False)
    clips = clips_of(cfg.data, cfg.split)
    if cfg.max_clips:
        clips = clips[: cfg.max_clips]
    root = cfg.out / f"{cfg.split}-{cfg.size}"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    done = 0
    for clip in tqdm(clips, desc=f"cache {cfg.split}", unit="clip"):
        dest = root / clip.stem
        if (dest / "done").exists():
            done += 1
            continue
        try:
            arrays = build_clip(clip, cfg, np.random.default_rng(rng.integers(1 << 31)))
        except Exception as e:  # a broken clip must not stop the cache
            log.warning("%s: skipped (%s)", clip.name, e)
            continue
        if arrays is None:
            log.warning("%s: skipped (too few tracked frames)", clip.name)
            continue
        _save_clip(dest, arrays)
        done += 1
    _save_config(root, cfg)
    log.info("cache %s: %d clips in %.0f s", root, done, time.time() - t0)
    return root


# --- tracks: the tracker's output, so another machine (no mediapipe, no PyAV) renders the pairs

LANDMARK_STEP = 1 / 16  # px: landmarks are stored as int16 offsets from each frame's mean


@dataclass(frozen=True)
class ClipTracks:
    """The tracked frames of one clip: every pool frame and the frame ``history_gap`` before
    it. Stored compactly (int16 landmark offsets at 1/16 px) because it travels with the
    clip's video to a machine that renders the cache but cannot track."""

    name: str
    video: str  # the clip's path relative to the data folder
    frame_count: int
    image_size: tuple[int, int]
    pool: np.ndarray  # (P,) frame indices that may become sources or targets
    indices: np.ndarray  # (M,) tracked frame indices
    found: np.ndarray  # (M,) bool
    landmarks: np.ndarray  # (M, 478, 3) float32 (zeros where not found)

    def track(self, i: int) -> TrackResult:
        from rt_portrait.tracking.types import TrackResult

        row = np.searchsorted(self.indices, i)
        if row >= len(self.indices) or self.indices[row] != i:
            raise KeyError(f"{self.name}: frame {i} was not tracked")
        if not self.found[row]:
            return TrackResult(False, None, self.image_size, message="no face (tracks file)")
        return TrackResult.from_landmarks(self.landmarks[row], self.image_size)

    def pack(self) -> dict[str, np.ndarray]:
        centre = self.landmarks.mean(1, keepdims=True).astype(np.float32)
        offsets = np.round((self.landmarks - centre) / LANDMARK_STEP)
        if np.abs(offsets).max(initial=0) > np.iinfo(np.int16).max:
            raise ValueError(f"{self.name}: landmarks too far from their mean for int16 storage")
        p = self.name + "."
        return {
            p + "meta": np.array([self.frame_count, *self.image_size], np.int64),
            p + "video": np.array(self.video),
            p + "pool": self.pool.astype(np.int32),
            p + "indices": self.indices.astype(np.int32),
            p + "found": self.found,
            p + "centre": centre,
            p + "offsets": offsets.astype(np.int16),
        }

    @classmethod
    def unpack(cls, d: Mapping[str, np.ndarray], name: str) -> ClipTracks:
        p = name + "."
        n, h, w = (int(x) for x in d[p + "meta"])
        lm = d[p + "centre"] + d[p + "offsets"].astype(np.float32) * LANDMARK_STEP
        lm[~d[p + "found"]] = 0
        return cls(name, str(d[p + "video"]), n, (h, w), d[p + "pool"], d[p + "indices"], d[p + "found"], lm)


def load_tracks(path: Path) -> list[ClipTracks]:
    with np.load(path) as d:
        names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in d.files))  # the export's order
        return [ClipTracks.unpack(d, n) for n in names]


def track_clip(path: Path, data: Path, cfg: CacheConfig) -> ClipTracks | None:
    """Track (static-image mode, like :func:`build_clip`) every pool frame of one clip and the
    frame ``history_gap`` before each."""
    from rt_portrait.core.video import read_frames
    from rt_portrait.tracking import FaceTracker, TrackerConfig

    frames = list(read_frames(path))
    n = len(frames)
    if n < 10:
        return None
    pool = pool_indices(n, cfg)
    indices = np.unique(np.concatenate([pool, pool - cfg.history_gap]))
    indices = indices[indices >= 0]
    tracker = FaceTracker(TrackerConfig(static_image=True, max_faces=1))
    found = np.zeros(len(indices), bool)
    landmarks = np.zeros((len(indices), 478, 3), np.float32)
    try:
        for row, i in enumerate(indices):
            r = tracker.track(frames[int(i)])
            if r.found:
                found[row] = True
                landmarks[row] = r.landmarks
    finally:
        tracker.close()
    return ClipTracks(
        path.stem, str(path.relative_to(data)), n, frames[0].shape[:2], pool, indices, found, landmarks
    )


def export_tracks(cfg: CacheConfig, dest: Path) -> Path:
    """Track every clip of ``cfg.split`` into one ``.npz`` (written atomically)."""
    from tqdm import tqdm

    packed: dict[str, np.ndarray] = {}
    clips = clips_of(cfg.data, cfg.split)[: cfg.max_clips]
    for clip in tqdm(clips, desc=f"track {cfg.split}", unit="clip"):
        try:
            tracks = track_clip(clip, cfg.data, cfg)
        except Exception as e:  # a broken clip must not stop the export
            log.warning("%s: skipped (%s)", clip.name, e)
            continue
        if tracks is not None:
            packed.update(tracks.pack())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez_compressed(tmp, allow_pickle=False, **packed)
    tmp.replace(dest)
    return dest


def read_frames_cv2(
    path: Path, wanted: Sequence[int] | np.ndarray, frame_count: int
) -> dict[int, np.ndarray]:
    """The wanted frames (RGB uint8) decoded with OpenCV, for machines without PyAV. The clip
    must decode to ``frame_count`` frames, as it did for the tracker (else the indices would
    name other frames)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"{path}: OpenCV cannot open it")
    keep = {int(i) for i in wanted}
    out: dict[int, np.ndarray] = {}
    i = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i in keep:
                out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    if i != frame_count:
        raise ValueError(f"{path}: OpenCV decoded {i} frames, the tracker saw {frame_count}")
    return out


def _render_tracked(args: tuple[ClipTracks, Path, CacheConfig, int, Path]) -> tuple[str, int, str]:
    tracks, data, cfg, seed, dest = args
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    try:
        frames = read_frames_cv2(data / tracks.video, tracks.indices, tracks.frame_count)
        for i, f in frames.items():
            if f.shape[:2] != tracks.image_size:
                raise ValueError(f"frame {i} is {f.shape[:2]}, the tracker saw {tracks.image_size}")
        arrays = render_clip(
            frames, tracks.track, tracks.pool, tracks.image_size, cfg, np.random.default_rng(seed)
        )
    except Exception as e:  # a broken clip must not stop the cache
        return tracks.name, 0, str(e)
    if arrays is None:
        return tracks.name, 0, "too few tracked frames"
    _save_clip(dest, arrays)
    return tracks.name, len(arrays["warped"]), ""


def build_cache_from_tracks(cfg: CacheConfig, tracks_file: Path, workers: int = 1) -> Path:
    """:func:`build_cache` from an :func:`export_tracks` file and the clips' videos under
    ``cfg.data`` (decoded with OpenCV), rendered in ``workers`` processes. ``cfg.pool`` is
    the file's; ``sources`` and ``targets`` may differ from the export's (more pairs of the
    same tracked frames)."""
    from tqdm import tqdm

    torch.set_grad_enabled(False)
    clips = load_tracks(tracks_file)[: cfg.max_clips]
    root = cfg.out / f"{cfg.split}-{cfg.size}"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    jobs = [(c, cfg.data, cfg, int(rng.integers(1 << 31)), root / c.name) for c in clips]
    jobs = [j for j in jobs if not (j[4] / "done").exists()]
    t0 = time.time()
    pairs = 0
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_render_tracked, j) for j in jobs]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="render", unit="clip"):
            name, n, err = fut.result()
            if err:
                log.warning("%s: skipped (%s)", name, err)
            pairs += n
    _save_config(root, cfg)
    log.info("cache %s from %s: %d new pairs in %.0f s", root, tracks_file.name, pairs, time.time() - t0)
    return root
