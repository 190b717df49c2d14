"""Self-reenactment evaluation: ``rt-portrait eval`` and its Python API.

Protocol
--------
For each video: the source is frame ``source_frame``; the targets are the frames
``source_frame + k * every`` for k = 1, 2, ... (at most ``max_frames`` of them). Every
method animates the source with each target as the driver, in order, and its output is
compared with the target frame itself (the ground truth). Metrics are defined in
:mod:`rt_portrait.eval.metrics`; the ground-truth landmarks and the re-tracked output
landmarks both come from the same tracker in static-image mode (no temporal filter, so the
jitter measured is the output's, not a tracker's smoothing). The methods themselves are all
driven by the same landmarks: each clip is tracked once with the live session's video-mode
tracker (source frame first, then the targets in order) and that track is handed to every
method, so a baseline never sees the ground-truth tracks that score it.

* Targets without a face are fed to the methods (they are stateful) but not scored.
* An output without a face counts in ``retrack_fail`` (fraction of scored frames) and is
  left out of the landmark, pose and jitter means (so read those next to ``retrack_fail``).
* Per-clip values are means over the clip's scored frames (PSNR: mean of per-frame dB).
  A method's summary is the mean of its per-clip values, each clip weighted equally.
* Clips whose source frame has no face are skipped with a message; an unreadable video
  stops the run before any work with an error naming the file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rt_portrait.core import video
from rt_portrait.eval import metrics as M
from rt_portrait.eval.baselines import GENERATOR_METHODS, METHOD_NAMES, Method, make_method
from rt_portrait.generator.colour import CHROMA_CLAMP
from rt_portrait.generator.select import STILL_SIGMA
from rt_portrait.generator.texture import TEXTURE_GAIN
from rt_portrait.tracking.types import TrackResult

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")

# table columns: (key, True when higher is better)
SUMMARY_METRICS: tuple[tuple[str, bool], ...] = (
    ("face_l1", False),
    ("face_psnr", True),
    ("face_ssim", True),
    ("face_sharpness", True),
    ("full_psnr", True),
    ("full_ssim", True),
    ("landmark_err", False),
    ("pose_err_deg", False),
    ("jitter", False),
)
EXTRA_METRICS: tuple[str, ...] = ("full_l1", "mouth_l1", "retrack_fail", "jitter_driver", "ms_per_frame")
# ratios to the real frame, summarised over clips by their geometric mean: an arithmetic mean
# lets one clip at 3x (a warp sharper than a soft real video) outweigh several at 0.8x
RATIO_METRICS: tuple[str, ...] = ("face_sharpness",)


VideoReadError = video.MediaError  # a video that cannot be read; the message names the file


class Tracker(Protocol):
    def track(self, rgb: np.ndarray) -> TrackResult: ...


PoseFn = Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # landmarks, (H, W) -> (3, 3) rotation
MethodFactory = Callable[[], Method]


@dataclass
class EvalConfig:
    videos: list[Path] | Path  # video files, or a folder searched recursively for videos
    methods: tuple[str, ...] = METHOD_NAMES
    every: int = 1  # evaluate every N-th frame after the source
    max_frames: int | None = None  # at most this many target frames per clip
    source_frame: int = 0
    size: int = 256  # working resolution of the flow3d animator
    split: str | None = None  # with a folder holding MANIFEST.tsv: keep rows of this split
    smoothing: bool = False  # flow3d with the live One-Euro smoothing (off: same raw motion as warp2d)
    # generator options: the fusion weights (and weights file) of the diffusion methods, and the
    # generator and steps of the ``animator`` method (flow3d is always the warp fill)
    generator: str = "auto"
    steps: int = 1
    motion_weight: float = 1.0
    identity_weight: float = 1.0
    detail: float = 0.0
    texture_gain: float = TEXTURE_GAIN
    source_detail: float | None = None  # AnimatorConfig.source_detail, for the diffusion methods
    still_sigma: float | None = STILL_SIGMA  # AnimatorConfig.still_sigma, for the diffusion methods
    frame_detail: bool = True  # AnimatorConfig.frame_detail, for every method (flow3d too)
    chroma_clamp: float = CHROMA_CLAMP  # AnimatorConfig.chroma_clamp, for every method
    generator_weights: str | None = None
    mouth: str = "teeth"  # the warp fill's mouth style (AnimatorConfig.mouth), for every method
    shell: str = "auto"  # the head shell (AnimatorConfig.shell), for every method
    fringe: bool | None = None  # AnimatorConfig.fringe, for every method
    background_seen: bool | None = None  # AnimatorConfig.background_seen, for every method
    teacher_weights: str | None = None  # the ``teacher`` method's weights (default: the shipped ones)
    teacher_steps: int | None = None  # its sampling steps (default: its metadata's, else 16)
    backend: str = "auto"  # the diffusion network's engine (rt_portrait.engines)

    def generator_options(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "steps": self.steps,
            "motion_weight": self.motion_weight,
            "identity_weight": self.identity_weight,
            "detail": self.detail,
            "texture_gain": self.texture_gain,
            "source_detail": self.source_detail,
            "still_sigma": self.still_sigma,
            "frame_detail": self.frame_detail,
            "chroma_clamp": self.chroma_clamp,
            "generator_weights": self.generator_weights,
            "mouth": self.mouth,
            "shell": self.shell,
            "fringe": self.fringe,
            "background_seen": self.background_seen,
            "teacher_weights": self.teacher_weights,
            "teacher_steps": self.teacher_steps,
            "backend": self.backend,
        }

    def __post_init__(self) -> None:
        if isinstance(self.videos, (str, os.PathLike)):
            self.videos = Path(self.videos)
        elif not isinstance(self.videos, Path):
            self.videos = [Path(v) for v in self.videos]
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ValueError("no method to evaluate")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.source_frame < 0:
            raise ValueError(f"source_frame must be >= 0, got {self.source_frame}")
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")


@dataclass
class ClipResult:
    clip: str
    method: str
    n_frames: int  # target frames fed to the method
    n_scored: int  # of those, frames whose ground truth has a face
    metrics: dict[str, float]

    def row(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "method": self.method,
            "n_frames": self.n_frames,
            "n_scored": self.n_scored,
            **{k: _json_float(v) for k, v in self.metrics.items()},
        }


@dataclass
class EvalReport:
    config: EvalConfig
    methods: dict[str, dict[str, float]]
    clips: list[ClipResult]
    skipped: list[dict[str, str]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        videos = self.config.videos
        cfg["videos"] = str(videos) if isinstance(videos, Path) else [str(v) for v in videos]
        cfg["methods"] = list(self.config.methods)
        return {
            "methods": {m: {k: _json_float(v) for k, v in vals.items()} for m, vals in self.methods.items()},
            "clips": [c.row() for c in self.clips],
            "skipped": self.skipped,
            "config": cfg,
            "timing": self.timing,
            "definitions": METRIC_DEFINITIONS,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def write_json(self, path: Path) -> Path:
        return _atomic_write_text(Path(path), self.to_json() + "\n")

    def table(self) -> str:
        return format_table(self.methods)

    def clip_table(self) -> str:
        return format_clip_table(self.clips)


METRIC_DEFINITIONS: dict[str, str] = {
    "face_l1": "mean |output - target| in [0,1] units inside the target's face-oval mask",
    "face_psnr": "PSNR (dB, capped at 100) inside the face mask",
    "face_ssim": "Gaussian-window SSIM map (sigma 1.5, per RGB channel) averaged inside the face mask",
    "face_sharpness": "variance of the grey 4-neighbour Laplacian inside the face mask, / the target's (1 = as sharp as the real frame); over clips, the geometric mean",
    "full_l1": "mean |output - target| over the whole frame",
    "mouth_l1": "mean |output - target| inside the target's inner-lip polygon, over the frames whose mouth is open (at least metrics.MIN_MOUTH_PIXELS inside it)",
    "full_psnr": "PSNR (dB) over the whole frame",
    "full_ssim": "SSIM map averaged over the whole frame",
    "landmark_err": "mean 2D distance of the 478 re-tracked output landmarks to the target's, / target inter-ocular distance (outer eye corners)",
    "pose_err_deg": "geodesic angle (degrees) between the head rotations fitted to the target and to the re-tracked output",
    "jitter": "mean |L[t+1] - 2 L[t] + L[t-1]| of re-tracked output landmarks per evaluated step, / clip's median target inter-ocular distance",
    "jitter_driver": "the same jitter measured on the target (driver) frames themselves",
    "retrack_fail": "fraction of scored frames whose output had no detectable face",
    "ms_per_frame": "wall milliseconds of the method per frame (excluding metrics)",
}


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _atomic_write_text(path: Path, text: str) -> Path:
    with video.atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


# ---------------------------------------------------------------- inputs


def discover_videos(videos: Sequence[Path] | Path, split: str | None = None) -> list[Path]:
    """The video files to evaluate: given files, or a folder's videos (optionally one split)."""
    entries = [videos] if isinstance(videos, Path) else list(videos)
    if not entries:
        raise ValueError("no video given")
    found: list[Path] = []
    for entry in entries:
        entry = Path(entry)
        if not entry.exists():
            raise FileNotFoundError(f"no such video or folder: {entry}")
        if entry.is_dir():
            found.extend(_folder_videos(entry, split))
        else:
            found.append(entry)
    if not found:
        where = ", ".join(str(e) for e in entries)
        raise ValueError(f"no video found in {where}" + (f" for split {split!r}" if split else ""))
    return found


def _folder_videos(folder: Path, split: str | None) -> list[Path]:
    manifest = folder / "MANIFEST.tsv"
    if split is not None:
        if not manifest.exists():
            raise ValueError(f"--split {split!r} needs {manifest}, which does not exist")
        lines = manifest.read_text().splitlines()
        header = lines[0].split("\t")
        if "file" not in header or "split" not in header:
            raise ValueError(f"{manifest}: expected 'file' and 'split' columns, got {header}")
        fi, si = header.index("file"), header.index("split")
        rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
        files = [folder / r[fi] for r in rows if len(r) > max(fi, si) and r[si] == split]
        return [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def probe_video(path: Path) -> tuple[int, float]:
    """(frame count or 0 if unknown, fps) of a readable video; VideoReadError otherwise."""
    info = video.probe(path, decode_first=True)
    return info.frames, float(info.fps)


# ---------------------------------------------------------------- defaults (the real stages)


def default_tracker() -> Tracker:
    from rt_portrait.tracking import FaceTracker, TrackerConfig

    return FaceTracker(TrackerConfig(static_image=True))


def default_pose_fn() -> PoseFn:
    from rt_portrait.head import fit_head, load_template

    template = load_template()  # loaded once, not per frame

    def rotation(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        return fit_head(landmarks, image_size, template=template).pose.rotation

    return rotation


# ---------------------------------------------------------------- evaluation


@dataclass
class _ClipData:
    name: str
    fps: float
    source: np.ndarray
    source_track: TrackResult
    targets: list[np.ndarray]
    target_tracks: list[TrackResult]
    target_rot: list[np.ndarray | None]
    masks: list[np.ndarray | None]
    iod: float  # median inter-ocular distance of the targets (pixels)
    drive_source_track: TrackResult  # the source frame through the live (video-mode) tracker
    drive_tracks: list[TrackResult]  # the targets through the live tracker: what methods see
    drive_between: list[list[TrackResult]]  # live tracks of the skipped frames before each target


def _safe_rotation(pose_fn: PoseFn, track: TrackResult) -> np.ndarray | None:
    if not track.found:
        return None
    try:
        return np.asarray(pose_fn(track.landmarks, track.image_size), dtype=np.float64)
    except ValueError:  # a degenerate mesh: no pose, the frame's pose error is left out
        return None


def _load_clip(
    path: Path, config: EvalConfig, fps: float, tracker: Tracker, pose_fn: PoseFn, frame_count: int
) -> _ClipData | str:
    """The clip's frames and ground truth, or a message saying why it is skipped."""
    n_targets = config.max_frames if config.max_frames is not None else None
    if n_targets is None:
        if frame_count <= 0:  # unknown length: decode everything once to count
            frame_count = video.count_frames(path)
        n_targets = max(0, (frame_count - 1 - config.source_frame) // config.every)
    indices = [config.source_frame + k * config.every for k in range(n_targets + 1)]
    # Every method is driven by the same landmarks: the live session's video-mode tracker run
    # over every frame from the source on (so its smoothing sees the real frame rate). The
    # static-mode tracks below are the ground truth and only score the outputs.
    from rt_portrait.tracking import FaceTracker, TrackerConfig

    live_tracks: dict[int, TrackResult] = {}
    with FaceTracker(TrackerConfig(static_image=False, max_faces=1)) as live:
        frames = video.read_frame_indices(
            path, indices, lambda i, rgb: live_tracks.__setitem__(i, live.track(rgb))
        )
    if config.source_frame not in frames:
        return f"the video has no frame {config.source_frame} (source frame)"
    targets = [frames[i] for i in indices[1:] if i in frames]
    if not targets:
        return f"no target frame after the source frame {config.source_frame} (every={config.every})"
    source = frames[config.source_frame]
    source_track = tracker.track(source)
    if not source_track.found:
        return f"no face in the source frame {config.source_frame} ({source_track.message or 'not found'})"
    tracks = [tracker.track(t) for t in targets]
    rots = [_safe_rotation(pose_fn, t) for t in tracks]
    masks: list[np.ndarray | None] = []
    iods: list[float] = []
    for img, tr in zip(targets, tracks, strict=False):
        if not tr.found:
            masks.append(None)
            continue
        mask = M.face_mask(tr.landmarks, img.shape[:2])
        masks.append(mask if mask.any() else None)
        iods.append(M.interocular(tr.landmarks))
    if not iods:
        return "no face in any target frame"
    target_ids = [i for i in indices[1:] if i in frames]
    drive_source = live_tracks[config.source_frame]
    if not drive_source.found:
        drive_source = source_track
    drive_tracks = [live_tracks[i] for i in target_ids]
    between = [
        [live_tracks[j] for j in range(prev + 1, i) if j in live_tracks]
        for prev, i in zip([config.source_frame] + target_ids[:-1], target_ids, strict=False)
    ]
    return _ClipData(
        path.stem,
        fps,
        source,
        source_track,
        targets,
        tracks,
        rots,
        masks,
        float(np.median(iods)),
        drive_source,
        drive_tracks,
        between,
    )


def _run_method(
    clip: _ClipData,
    name: str,
    method: Method,
    every: int,
    tracker: Tracker,
    pose_fn: PoseFn,
    tick: Callable[[], None],
) -> ClipResult:
    method.start_clip(clip.source, clip.drive_source_track, fps=clip.fps)
    observe = getattr(method, "observe", None)  # stateful methods also see the skipped frames
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "face_l1",
            "face_psnr",
            "face_ssim",
            "face_sharpness",
            "full_l1",
            "full_psnr",
            "full_ssim",
            "landmark_err",
            "pose_err_deg",
            "retrack_fail",
            "mouth_l1",
        )
    }
    out_seq: list[np.ndarray | None] = []
    gt_seq: list[np.ndarray | None] = []
    method_s = 0.0
    for target, gt, drive, skipped, rot, mask in zip(
        clip.targets,
        clip.target_tracks,
        clip.drive_tracks,
        clip.drive_between,
        clip.target_rot,
        clip.masks,
        strict=False,
    ):
        t0 = time.perf_counter()
        if observe is not None:
            for track in skipped:
                observe(track)
        output = np.asarray(method(clip.source, clip.drive_source_track, target, drive))
        method_s += time.perf_counter() - t0
        if output.shape != target.shape or output.dtype != np.uint8:
            raise ValueError(
                f"method {name!r} returned {output.dtype} {output.shape}, expected uint8 {target.shape}"
            )
        out_track = tracker.track(output)
        out_seq.append(out_track.landmarks if out_track.found else None)
        gt_seq.append(gt.landmarks if gt.found else None)
        tick()
        if mask is None:
            continue  # no face in the ground truth: fed, not scored
        s = M.image_scores(output, target, mask)
        for k, v in asdict(s).items():
            rows[k].append(v)
        rows["retrack_fail"].append(0.0 if out_track.found else 1.0)
        if gt.found:  # the real frame's mouth opening, when it is open
            mouth = M.mouth_mask(gt.landmarks, target.shape[:2])
            if int(mouth.sum()) >= M.MIN_MOUTH_PIXELS:
                rows["mouth_l1"].append(M.l1(output, target, mouth))
        if out_track.found:
            rows["landmark_err"].append(M.landmark_error(out_track.landmarks, gt.landmarks))
            out_rot = _safe_rotation(pose_fn, out_track)
            if rot is not None and out_rot is not None:
                rows["pose_err_deg"].append(M.rotation_angle_deg(rot, out_rot))
    n_scored = len(rows["face_l1"])
    metrics = {k: (float(np.mean(v)) if v else float("nan")) for k, v in rows.items()}
    metrics["jitter"] = M.jitter(out_seq, clip.iod)
    metrics["jitter_driver"] = M.jitter(gt_seq, clip.iod)
    metrics["ms_per_frame"] = method_s * 1e3 / max(len(clip.targets), 1)
    return ClipResult(clip.name, name, len(clip.targets), n_scored, metrics)


def _summarise(clips: list[ClipResult], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    keys = [k for k, _ in SUMMARY_METRICS] + list(EXTRA_METRICS)
    summary: dict[str, dict[str, float]] = {}
    for m in methods:
        rows = [c for c in clips if c.method == m]
        vals: dict[str, float] = {}
        for k in keys:
            xs = np.array([c.metrics.get(k, float("nan")) for c in rows], dtype=np.float64)
            xs = xs[np.isfinite(xs)]
            if not xs.size:
                vals[k] = float("nan")
            elif k in RATIO_METRICS:  # a flat output (ratio 0) drags the mean to about 0, as it should
                vals[k] = float(np.exp(np.log(np.maximum(xs, 1e-6)).mean()))
            else:
                vals[k] = float(xs.mean())
        vals["n_clips"] = float(len(rows))
        vals["n_frames"] = float(sum(c.n_scored for c in rows))
        summary[m] = vals
    return summary


def evaluate(
    config: EvalConfig,
    progress: bool = True,
    *,
    tracker: Tracker | None = None,
    pose_fn: PoseFn | None = None,
    methods: Mapping[str, MethodFactory] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Run the self-reenactment evaluation (see the module doc).

    ``tracker``, ``pose_fn`` and ``methods`` default to the real stages and the built-in
    methods; ``methods`` maps extra names (e.g. a generator) to factories of fresh
    :class:`~rt_portrait.eval.baselines.Method` objects, consulted before the built-ins.
    """
    from tqdm import tqdm

    say = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    extra = dict(methods or {})
    known = (*METHOD_NAMES, *GENERATOR_METHODS)
    for name in config.methods:
        if name not in extra and name not in known:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join((*known, *extra))}")
    for name in config.methods:  # a missing weights file fails now, not after an hour of work
        if name not in extra and name in GENERATOR_METHODS:
            make_method(name, size=config.size, generator=config.generator_options())
    paths = discover_videos(config.videos, config.split)
    probes = [probe_video(p) for p in paths]  # every file readable before any long work
    own_tracker = tracker is None
    tracker = tracker or default_tracker()
    pose_fn = pose_fn or default_pose_fn()

    clips: list[ClipResult] = []
    skipped: list[dict[str, str]] = []
    per_method_s: dict[str, float] = dict.fromkeys(config.methods, 0.0)
    bar = tqdm(total=0, unit="frame", desc="eval", disable=not progress, dynamic_ncols=True)
    try:
        for path, (count, fps) in zip(paths, probes, strict=False):
            bar.set_postfix_str(path.name)
            data = _load_clip(path, config, fps, tracker, pose_fn, count)
            if isinstance(data, str):
                skipped.append({"clip": str(path), "reason": data})
                bar.write(f"skipping {path}: {data}") if progress else say(f"skipping {path}: {data}")
                continue
            bar.total += len(data.targets) * len(config.methods)
            bar.refresh()
            for name in config.methods:
                method = (
                    extra[name]()
                    if name in extra
                    else make_method(
                        name,
                        size=config.size,
                        smoothing=config.smoothing,
                        generator=config.generator_options(),
                    )
                )
                t0 = time.perf_counter()
                clips.append(
                    _run_method(data, name, method, config.every, tracker, pose_fn, lambda: bar.update(1))
                )
                per_method_s[name] += time.perf_counter() - t0
                close = getattr(method, "close", None)
                if callable(close):
                    close()
    finally:
        bar.close()
        close_tracker = getattr(tracker, "close", None)
        if own_tracker and callable(close_tracker):
            close_tracker()
    timing = {"total_s": time.perf_counter() - t_start, **{f"{m}_s": s for m, s in per_method_s.items()}}
    return EvalReport(config, _summarise(clips, config.methods), clips, skipped, timing)


# ---------------------------------------------------------------- output


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Methods x metrics; the arrow says which direction is better."""
    cols = [(k, ("↑" if hi else "↓")) for k, hi in SUMMARY_METRICS]
    headers = ["method"] + [f"{k} {a}" for k, a in cols] + ["jitter_driver", "retrack_fail ↓"]
    rows = [
        [m]
        + [_fmt(v.get(k, float("nan"))) for k, _ in cols]
        + [_fmt(v.get("jitter_driver", float("nan"))), _fmt(v.get("retrack_fail", float("nan")))]
        for m, v in summary.items()
    ]
    return _grid(headers, rows)


def format_clip_table(clips: Sequence[ClipResult]) -> str:
    keys = ["face_l1", "face_psnr", "face_ssim", "landmark_err", "pose_err_deg", "jitter"]
    headers = ["clip", "method", "n"] + keys
    rows = [
        [c.clip, c.method, str(c.n_scored)] + [_fmt(c.metrics.get(k, float("nan"))) for k in keys]
        for c in clips
    ]
    return _grid(headers, rows)


def _grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_plot(report: EvalReport, path: Path) -> Path:
    """Per-clip bars of the face metrics and the landmark error, one colour per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("face_l1", "↓"), ("face_psnr", "↑"), ("face_ssim", "↑"), ("landmark_err", "↓")]
    names = sorted({c.clip for c in report.clips})
    methods = list(report.config.methods)
    fig, axes = plt.subplots(
        len(keys), 1, figsize=(max(6.0, 0.6 * len(names) + 2), 2.6 * len(keys)), squeeze=False
    )
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(names))
    for ax, (k, arrow) in zip(axes[:, 0], keys, strict=False):
        for j, m in enumerate(methods):
            vals = {c.clip: c.metrics.get(k, float("nan")) for c in report.clips if c.method == m}
            ax.bar(
                x + (j - (len(methods) - 1) / 2) * width, [vals.get(n, np.nan) for n in names], width, label=m
            )
        ax.set_ylabel(f"{k} {arrow}")
        ax.set_xticks(x)
        ax.set_xticklabels(names if ax is axes[-1, 0] else [], rotation=60, ha="right", fontsize=7)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        with video.atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rt-portrait eval``."""
    parser.add_argument(
        "inputs", nargs="+", metavar="FOLDER_OR_FILES", help="video files, or folders of videos"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default {','.join(METHOD_NAMES)}; with --cross flow3d,refined); also "
        f"{', '.join(GENERATOR_METHODS)} (the learned generator: 1 step, 2 steps, the teacher, "
        "and --generator/--steps)",
    )
    parser.add_argument(
        "--every", type=int, default=1, help="evaluate every N-th frame after the source (default 1)"
    )
    parser.add_argument("--max-frames", type=int, default=None, help="at most N target frames per clip")
    parser.add_argument("--source-frame", type=int, default=0, help="index of the source frame (default 0)")
    parser.add_argument("--size", type=int, default=256, help="working resolution of flow3d (default 256)")
    parser.add_argument(
        "--smoothing",
        action="store_true",
        help="run flow3d with the live One-Euro smoothing (default: off, so every method warps the same raw motion)",
    )
    parser.add_argument(
        "--split", default=None, help="with a folder holding MANIFEST.tsv: only this split (e.g. val)"
    )
    from rt_portrait.generator.select import add_generator_arguments

    add_generator_arguments(
        parser, steps_help="sampling steps of the 'animator' method (refined: 1, refined2: 2)"
    )
    parser.add_argument(
        "--teacher-weights", default=None, metavar="FILE", help="weights of the 'teacher' method"
    )
    parser.add_argument("--teacher-steps", type=int, default=None, help="sampling steps of 'teacher'")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of per-clip metrics")
    parser.add_argument("--per-clip", action="store_true", help="also print the per-clip table")
    g = parser.add_argument_group("cross-reenactment (--cross: FOLDER's portraits driven by its val clips)")
    g.add_argument(
        "--cross",
        action="store_true",
        help="cross-reenactment: identity distance (dlib), rotation error, mouth/eye correlation",
    )
    g.add_argument("--sheets", default=None, metavar="DIR", help="write one contact sheet (PNG) per pair")
    g.add_argument("--portraits", type=int, default=8, help="portraits to drive (default 8)")
    g.add_argument("--drivers", type=int, default=2, help="val clips per portrait (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``rt-portrait eval``; returns the exit status (2 on a user-facing error)."""
    from rt_portrait.generator.select import generator_options

    if args.cross:
        return _run_cross(args)
    try:
        methods = tuple(
            m.strip() for m in str(args.methods or ",".join(METHOD_NAMES)).split(",") if m.strip()
        )
        config = EvalConfig(
            videos=[Path(p) for p in args.inputs],
            methods=methods,
            every=args.every,
            max_frames=args.max_frames,
            source_frame=args.source_frame,
            size=args.size,
            split=args.split,
            smoothing=args.smoothing,
            teacher_weights=args.teacher_weights,
            teacher_steps=args.teacher_steps,
            **generator_options(args),
        )
        report = evaluate(config, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"rt-portrait eval: error: {e}", file=sys.stderr)
        return 2
    for s in report.skipped:
        print(f"skipped {s['clip']}: {s['reason']}")
    if args.per_clip:
        print(report.clip_table())
        print()
    print(report.table())
    print(f"{len({c.clip for c in report.clips})} clips, {report.timing['total_s']:.1f} s")
    if args.json:
        print(f"wrote {report.write_json(Path(args.json))}")
    if args.plot:
        print(f"wrote {write_plot(report, Path(args.plot))}")
    return 0


def _run_cross(args: argparse.Namespace) -> int:
    from rt_portrait.eval.cross import DEFAULT_METHODS, CrossConfig, evaluate_cross, write_json
    from rt_portrait.generator.select import generator_options

    try:
        if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
            raise ValueError("--cross takes one folder holding MANIFEST.tsv (portrait and val rows)")
        methods = tuple(
            m.strip() for m in str(args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip()
        )
        config = CrossConfig(
            data=Path(args.inputs[0]),
            methods=methods,
            portraits=args.portraits,
            drivers=args.drivers,
            every=args.every if args.every > 1 else 4,
            max_frames=args.max_frames or 30,
            size=args.size,
            generator={
                **generator_options(args),
                "teacher_weights": args.teacher_weights,
                "teacher_steps": args.teacher_steps,
            },
            sheets=Path(args.sheets) if args.sheets else None,
        )
        report = evaluate_cross(config, progress=not args.quiet)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"rt-portrait eval --cross: error: {e}", file=sys.stderr)
        return 2
    for s in report.skipped:
        print(f"skipped {s['pair']}: {s['reason']}")
    print(report.table())
    if args.json:
        print(f"wrote {write_json(report, Path(args.json))}")
    for sheet in report.sheets:
        print(f"wrote {sheet}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rt-portrait eval", description="Self-reenactment evaluation.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
