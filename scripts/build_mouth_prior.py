"""Build the mouth-interior prior (rt_portrait/head/data/mouth_prior.npz) from real clips.

For evenly spaced frames of every ``train`` clip in ``../shared/data/MANIFEST.tsv`` whose
mouth is open, the face is tracked (static mode), the mouth interior is sampled on a
``V x U`` grid of mouth coordinates (:mod:`rt_portrait.generator.mouth`) and divided by the frame's
skin colour (median inside the face oval). The mean ratio per opening bin is all that is
written: no media leaves the data folder (research-only terms). Usage::

    python scripts/build_mouth_prior.py [--data ../shared/data] [--per-clip 80]
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon
from tqdm import tqdm

from rt_portrait.eval.baselines import bilinear_sample
from rt_portrait.eval.metrics import FACE_OVAL
from rt_portrait.generator.mouth import PRIOR_PATH, mouth_frame, mouth_points
from rt_portrait.head import load_template
from rt_portrait.tracking import FaceTracker, TrackerConfig

GRID_V, GRID_U = 16, 32
MIN_OPENING = 0.06  # fraction of the mouth width: below, the interior is a sliver
BIN_EDGES = (0.06, 0.14, 0.25, 0.40, np.inf)
MIN_WIDTH_PX = 24.0  # mouths narrower than this are too coarse to sample


def skin_colour(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    oval = landmarks[list(FACE_OVAL), :2]
    rr, cc = draw_polygon(oval[:, 1], oval[:, 0], shape=rgb.shape[:2])
    return np.median(rgb[rr, cc].astype(np.float64), axis=0) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--per-clip", type=int, default=80)
    ap.add_argument("--out", type=Path, default=PRIOR_PATH)
    args = ap.parse_args()

    import av

    tpl = load_template()
    upper, lower, corners = (
        tpl.group("inner_lip_upper"),
        tpl.group("inner_lip_lower"),
        tpl.group("inner_mouth_corners"),
    )
    vv, uu = np.meshgrid(np.linspace(0, 1, GRID_V), np.linspace(0, 1, GRID_U), indexing="ij")
    sums = np.zeros((len(BIN_EDGES) - 1, GRID_V, GRID_U, 3))
    opening_sums = np.zeros(len(BIN_EDGES) - 1)
    counts = np.zeros(len(BIN_EDGES) - 1, dtype=np.int64)
    with open(args.data / "MANIFEST.tsv", newline="") as fh:
        clips = [
            r
            for r in csv.DictReader(fh, delimiter="\t")
            if r["split"] == "train" and r["file"].startswith("clips/")
        ]
    with FaceTracker(TrackerConfig(static_image=True, max_faces=1)) as tracker:
        for row in tqdm(clips, desc="clips"):
            n_frames = max(1, round(float(row["fps"]) * float(row["seconds"])))
            step = max(1, n_frames // args.per_clip)
            with av.open(str(args.data / row["file"])) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i % step:
                        continue
                    rgb = frame.to_ndarray(format="rgb24")
                    track = tracker.track(rgb)
                    if not track.found:
                        continue
                    mf = mouth_frame(track.landmarks, upper, lower, corners)
                    o = mf.opening
                    if o < MIN_OPENING or mf.width < MIN_WIDTH_PX:
                        continue
                    b = int(np.searchsorted(BIN_EDGES, o, side="right")) - 1
                    pts = mouth_points(mf, uu, vv)
                    colour = bilinear_sample(rgb, pts[..., 0], pts[..., 1]) / 255.0
                    sums[b] += colour / np.maximum(skin_colour(rgb, track.landmarks), 1e-3)
                    opening_sums[b] += o
                    counts[b] += 1
    keep = counts > 0
    if not keep.any():
        raise SystemExit("no open mouth found in the train clips")
    ratio = (sums[keep] / counts[keep, None, None, None]).transpose(0, 3, 1, 2).astype(np.float32)
    openings = opening_sums[keep] / counts[keep]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        ratio=ratio,
        openings=openings,
        counts=counts[keep],
        meta_built=datetime.date.today().isoformat(),
        meta_clips=len(clips),
    )
    print(f"wrote {args.out}: bins {np.round(openings, 3).tolist()}, frames {counts[keep].tolist()}")


if __name__ == "__main__":
    main()
