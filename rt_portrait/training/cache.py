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
float16 encoding, depth and normal.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

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
    targets: int = 24  # targets per source
    history_gap: int = 2  # frames between the history frame and the target
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


def render_input(animator, target_state, size: int):  # Animator, HeadState -> GeneratorInput, fields
    """The GeneratorInput exactly as Animator.render builds it (history None)."""
    from rt_portrait.compose import warp_working
    from rt_portrait.flow import compute_flow
    from rt_portrait.flow.elastic import elastic_background
    from rt_portrait.generator import GeneratorInput

    scene = animator.scene(size)
    target_points = scene.builder(target_state)
    fields = compute_flow(
        target_points,
        scene.source_points,
        scene.flow_config,
        source_visible=scene.source_visible,
        source_background=scene.source_background,
    )
    fields = replace(fields, flow=elastic_background(fields) * scene.taper)
    warped = warp_working(scene.source_working, fields.flow)
    landmarks = animator._working_landmarks(target_state, scene.window)
    return (
        GeneratorInput(
            warped=warped,
            source=scene.source_working,
            fields=fields,
            history=None,
            source_labels=scene.source_labels,
            landmarks=landmarks,
        ),
        target_points,
    )


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


def build_clip(path: Path, cfg: CacheConfig, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    from rt_portrait.compose import crop_window, to_tensor
    from rt_portrait.core.video import read_frames
    from rt_portrait.head import fit_head
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking import FaceTracker, TrackerConfig, TrackResult

    frames = list(read_frames(path))
    n = len(frames)
    if n < 10:
        return None
    gap = cfg.history_gap
    pool = np.unique(np.linspace(gap, n - 1, min(cfg.pool, n - gap)).round().astype(int))
    tracker = FaceTracker(TrackerConfig(static_image=True, max_faces=1))
    tracks: dict[int, TrackResult] = {}

    def track(i: int) -> TrackResult:
        if i not in tracks:
            tracks[i] = tracker.track(frames[i])
        return tracks[i]

    try:
        found = [i for i in pool if track(int(i)).found]
        if len(found) < 6:
            return None
        image_size = frames[0].shape[:2]
        states = {i: fit_head(tracks[i].landmarks, image_size) for i in found}
        # sources: the most frontal frame (smallest rotation) and random others
        from scipy.spatial.transform import Rotation

        ang = np.array([Rotation.from_matrix(states[i].pose.rotation).magnitude() for i in found])
        srcs = [found[int(np.argmin(ang))]]
        others = [i for i in found if i != srcs[0]]
        srcs += list(rng.choice(others, size=min(cfg.sources - 1, len(others)), replace=False))
        out: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
        out["source_index"] = []
        out["meta"] = []
        for si, s in enumerate(srcs):
            s = int(s)
            animator = Animator(frames[s], AnimatorConfig(size=cfg.size), source_track=tracks[s])
            scene = animator.scene(cfg.size)
            out["source"].append(_u8(scene.source_working))
            cands = [i for i in found if abs(i - s) > gap]
            d = np.array([_pose_expr_distance(states[i], states[s]) for i in cands])
            p = (d + 1e-3) ** 1.5
            p = p / p.sum()
            chosen = rng.choice(cands, size=min(cfg.targets, len(cands)), replace=False, p=p)
            for t in chosen:
                t = int(t)
                lm = tracks[t].landmarks
                tstate = fit_head(
                    lm, image_size, template=animator.template, identity=animator.source_state.identity
                )
                inputs, tpoints = render_input(animator, tstate, cfg.size)
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
    finally:
        tracker.close()
    if not out["warped"]:
        return None
    return {k: np.stack(v) for k, v in out.items()}


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
        dest.mkdir(exist_ok=True)
        for k, v in arrays.items():
            np.save(dest / f"{k}.npy", v)
        (dest / "done").write_text(json.dumps({"pairs": len(arrays["warped"])}))
        done += 1
    (root / "config.json").write_text(json.dumps({k: str(v) for k, v in vars(cfg).items()}, indent=1))
    log.info("cache %s: %d clips in %.0f s", root, done, time.time() - t0)
    return root
