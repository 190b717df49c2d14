"""Fusion-weight sweep of the 1-step generator: motion fidelity against identity.

    python scripts/generator_sweep.py DATA [--clips 4] [--pairs 1,1 2,1 1,2 ...] [--json FILE]

Self-reenactment on ``val`` clips of DATA (the harness's protocol and metrics, each clip loaded
and tracked once for every weight pair): face PSNR / L1 / landmark error against the real
frames, and the dlib identity distance of each output to the source frame (lower = the
output keeps the person's likeness). The warp-only ``flow3d`` is the reference row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from rt_portrait.eval import harness as H
from rt_portrait.eval.baselines import Flow3D, generator_method_options
from rt_portrait.eval.cross import IdentityEncoder


class Recording(Flow3D):
    """Flow3D that keeps its outputs (for the identity distance)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outputs: list[np.ndarray] = []

    def __call__(self, *args: Any) -> np.ndarray:
        out = super().__call__(*args)
        self.outputs.append(out)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--max-frames", type=int, default=12)
    p.add_argument("--pairs", nargs="+", default=["1,1", "1.5,1", "2,1", "1,1.5", "1,2", "0.5,1.5"])
    p.add_argument("--weights", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    cfg = H.EvalConfig(videos=args.data, split="val", every=args.every, max_frames=args.max_frames)
    paths = H.discover_videos(args.data, "val")
    paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, args.clips).round().astype(int))]
    tracker, pose_fn, enc = H.default_tracker(), H.default_pose_fn(), IdentityEncoder()
    clips = []
    for path in paths:
        count, fps = H.probe_video(path)
        data = H._load_clip(path, cfg, fps, tracker, pose_fn, count)
        if isinstance(data, str):
            print(f"skip {path.name}: {data}")
            continue
        st = data.source_track
        clips.append((data, enc(data.source, st.landmarks)))
    rows = []
    variants: list[tuple[str, dict[str, Any]]] = [("flow3d", {"generator": "warp"})]
    for pair in args.pairs:
        m, i = (float(x) for x in pair.split(","))
        opts = {"motion_weight": m, "identity_weight": i, "generator_weights": args.weights}
        variants.append((f"refined m={m:g} i={i:g}", generator_method_options("refined", opts)))
    for label, opts in variants:
        res, ids = [], []
        for data, src_desc in clips:
            method = Recording(size=cfg.size, generator=opts)
            res.append(H._run_method(data, label, method, cfg.every, tracker, pose_fn, lambda: None))
            for out in method.outputs:
                tr = tracker.track(out)
                if tr.found:
                    ids.append(float(np.linalg.norm(enc(out, tr.landmarks) - src_desc)))
            method.close()
        row = {
            "variant": label,
            **{
                k: float(np.nanmean([r.metrics[k] for r in res]))
                for k in ("face_psnr", "face_l1", "landmark_err", "face_ssim")
            },
            "identity_dist": float(np.mean(ids)) if ids else float("nan"),
            "ms_per_frame": float(np.mean([r.metrics["ms_per_frame"] for r in res])),
        }
        rows.append(row)
        print(
            f"{label:24s} face_psnr {row['face_psnr']:.2f}  face_l1 {row['face_l1']:.4f}  "
            f"face_ssim {row['face_ssim']:.4f}  landmark {row['landmark_err']:.4f}  "
            f"identity {row['identity_dist']:.4f}  {row['ms_per_frame']:.0f} ms/frame",
            flush=True,
        )
    tracker.close()
    if args.json:
        args.json.write_text(json.dumps({"clips": [c.name for c, _ in clips], "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
