"""Build the mouth-interior prior (rt_portrait/generator/data/mouth_prior.npz) from real clips.

For evenly spaced frames of every ``train`` clip in ``../shared/data/MANIFEST.tsv`` whose
mouth is open, the face is tracked (static mode) and two strips of the mouth interior are
sampled against the lips (:class:`rt_portrait.generator.mouth.MouthPrior`): depths below the
upper inner lip and above the lower one, on a ``DEPTH x U`` grid, each divided by the
luminance of the frame's skin colour (median inside the face oval; one number, so that
teeth stay near white on any skin). Per opening bin, the frames whose band just under
the upper lip is brightest (the top ``1 - TEETH_QUANTILE``: those that show their upper
teeth) are averaged, each depth counted only where that frame's mouth is open that far. The
means are all that is written: no media leaves the data folder (research-only terms). Usage::

    python scripts/build_mouth_prior.py [--data ../shared/data] [--per-clip 80] [--samples FILE]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon
from tqdm import tqdm

from rt_portrait.eval.baselines import bilinear_sample
from rt_portrait.eval.metrics import FACE_OVAL
from rt_portrait.generator.mouth import PRIOR_PATH, lip_points, mouth_frame
from rt_portrait.head import load_template
from rt_portrait.tracking import FaceTracker, TrackerConfig

GRID_D, GRID_U = 24, 32
DEPTH = 0.48  # mouth widths: deeper than the widest mouth's half-opening
DEPTHS = np.linspace(0, DEPTH, GRID_D)
MIN_OPENING = 0.04  # fraction of the mouth width: below, the interior is a sliver
BIN_EDGES = (0.04, 0.12, 0.22, 0.35, np.inf)
MIN_WIDTH_PX = 24.0  # mouths narrower than this are too coarse to sample
TEETH_BAND = 0.06  # mouth widths under the upper lip where upper teeth show
TEETH_QUANTILE = 0.75  # per bin, average the frames at or above this quantile of that band's brightness
MIN_SAMPLES = 5  # a depth row seen open in fewer frames copies the row above


def skin_colour(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    oval = landmarks[list(FACE_OVAL), :2]
    rr, cc = draw_polygon(oval[:, 1], oval[:, 0], shape=rgb.shape[:2])
    return np.median(rgb[rr, cc].astype(np.float64), axis=0) / 255.0


def strip_mean(strips: np.ndarray, open_to: np.ndarray) -> np.ndarray:
    """(3, D, U) mean of (N, D, U, 3) ``strips``, each depth row counted where the frame's mouth
    is open at least that deep (``open_to``: (N, D, U) bool)."""
    w = open_to[..., None].astype(np.float64)
    num, den = (strips * w).sum(0), w.sum(0)
    mean = num / np.maximum(den, 1)
    for i in range(1, mean.shape[0]):
        few = den[i, :, 0] < MIN_SAMPLES
        mean[i, few] = mean[i - 1, few]
    return mean.transpose(2, 0, 1)


def collect(data: Path, per_clip: int) -> dict[str, np.ndarray]:
    """Per open-mouthed frame of the train clips: the two strips (N, D, U, 3), where each
    frame's mouth is open that deep (N, D, U) and its opening (N,)."""
    import av

    tpl = load_template()
    upper, lower, corners = (
        tpl.group("inner_lip_upper"),
        tpl.group("inner_lip_lower"),
        tpl.group("inner_mouth_corners"),
    )
    dd, uu = np.meshgrid(DEPTHS, np.linspace(0, 1, GRID_U), indexing="ij")
    samples: dict[str, list[np.ndarray]] = {"upper": [], "lower": [], "open_to": []}
    openings: list[float] = []
    with open(data / "MANIFEST.tsv", newline="") as fh:
        clips = [
            r
            for r in csv.DictReader(fh, delimiter="\t")
            if r["split"] == "train" and r["file"].startswith("clips/")
        ]
    with FaceTracker(TrackerConfig(static_image=True, max_faces=1)) as tracker:
        for row in tqdm(clips, desc="clips"):
            n_frames = max(1, round(float(row["fps"]) * float(row["seconds"])))
            step = max(1, n_frames // per_clip)
            with av.open(str(data / row["file"])) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i % step:
                        continue
                    rgb = frame.to_ndarray(format="rgb24")
                    track = tracker.track(rgb)
                    if not track.found:
                        continue
                    mf = mouth_frame(track.landmarks, upper, lower, corners)
                    if mf.opening < MIN_OPENING or mf.width < MIN_WIDTH_PX:
                        continue
                    # one luminance for all channels: teeth are near white whatever the skin's hue
                    skin = max(float(skin_colour(rgb, track.landmarks).mean()), 1e-3)
                    for lip in ("upper", "lower"):
                        pts = lip_points(mf, uu, dd, lip)
                        colour = bilinear_sample(rgb, pts[..., 0], pts[..., 1]) / 255.0
                        samples[lip].append((colour / skin).astype(np.float32))
                    gap = np.interp(uu[0], mf.lower[:, 0], mf.lower[:, 1]) - np.interp(
                        uu[0], mf.upper[:, 0], mf.upper[:, 1]
                    )
                    samples["open_to"].append(dd < gap[None, :])
                    openings.append(mf.opening)
    if not openings:
        raise SystemExit("no open mouth found in the train clips")
    out = {k: np.stack(v) for k, v in samples.items()}
    out["opening"] = np.asarray(openings)
    out["clips"] = np.asarray(len(clips))
    return out


def build(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prior's arrays from :func:`collect`'s samples."""
    up, lo, open_to, o = samples["upper"], samples["lower"], samples["open_to"], samples["opening"]
    centre = slice(GRID_U // 3, GRID_U - GRID_U // 3)
    band = (DEPTHS < TEETH_BAND)[None, :, None] & open_to
    teeth = (up.mean(-1) * band)[:, :, centre].sum((1, 2)) / np.maximum(band[:, :, centre].sum((1, 2)), 1)
    uppers, lowers, bin_openings, counts = [], [], [], []
    for lo_edge, hi_edge in itertools.pairwise(BIN_EDGES):
        in_bin = (o >= lo_edge) & (o < hi_edge)
        if in_bin.sum() < 20:
            continue
        pick = in_bin & (teeth >= np.quantile(teeth[in_bin], TEETH_QUANTILE))
        uppers.append(strip_mean(up[pick], open_to[pick]))
        lowers.append(strip_mean(lo[pick], open_to[pick]))
        bin_openings.append(o[pick].mean())
        counts.append(int(pick.sum()))
    return {
        "upper": np.asarray(uppers, dtype=np.float32),
        "lower": np.asarray(lowers, dtype=np.float32),
        "depth": np.float32(DEPTH),
        "openings": np.asarray(bin_openings),
        "counts": np.asarray(counts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--per-clip", type=int, default=80)
    ap.add_argument("--out", type=Path, default=PRIOR_PATH)
    ap.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="keep the tracked samples here (outside the repository: they hold the data's pixels) "
        "and reuse them when the file exists",
    )
    args = ap.parse_args()

    if args.samples is not None and args.samples.is_file():
        with np.load(args.samples) as f:
            samples = dict(f)
    else:
        samples = collect(args.data, args.per_clip)
        if args.samples is not None:
            args.samples.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.samples, **samples)
    prior = build(samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        **prior,
        meta_built=datetime.date.today().isoformat(),
        meta_clips=samples["clips"],
        meta_frames=len(samples["opening"]),
    )
    tmp.replace(args.out)
    print(
        f"wrote {args.out}: bins {np.round(prior['openings'], 3).tolist()}, "
        f"frames {prior['counts'].tolist()} of {len(samples['opening'])}"
    )


if __name__ == "__main__":
    main()
