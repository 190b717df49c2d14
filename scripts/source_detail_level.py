"""The source detail level of a training set (generator.source_detail.SOURCE_DETAIL).

    python scripts/source_detail_level.py DATA [--split train] [--size 256]

For each clip of ``DATA``'s split (``MANIFEST.tsv``), or each image or video given, the
standard deviation of the finest band of its first frame's face on the working grid, as the
runtime measures a source; then the quartiles. The shipped weights' level is the median over
the train split they learned from. With ``--split none`` the arguments are files (e.g.
portraits) and are only listed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rt_portrait.core.image import load_image
from rt_portrait.core.video import read_frames
from rt_portrait.generator.source_detail import face_detail, face_mask
from rt_portrait.pipeline import Animator, AnimatorConfig


def first_frame(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".mp4", ".mov", ".avi", ".mkv", ".webm"):
        return next(read_frames(path, max_frames=1))
    return load_image(path)


def source_detail(image: np.ndarray, size: int) -> float:
    scene = Animator(image, AnimatorConfig(size=size, generator="warp")).scene(size)
    return face_detail(scene.source_working, face_mask(scene.source_labels.reshape(size, size)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="a data folder with MANIFEST.tsv, or files")
    p.add_argument("--split", default="train", help="the manifest's split ('none': the paths are files)")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    if args.split == "none":
        files = list(args.paths)
    else:
        data = args.paths[0]
        rows = [line.split("\t") for line in (data / "MANIFEST.tsv").read_text().splitlines()[1:]]
        files = [data / r[0] for r in rows if len(r) > 1 and r[1] == args.split]
    levels = []
    for f in files:
        level = source_detail(first_frame(f), args.size)
        levels.append(level)
        print(f"{f.name:60s} {level:.4f}")
    q = np.quantile(levels, [0.25, 0.5, 0.75])
    print(f"{len(levels)} sources: quartiles {q[0]:.4f} {q[1]:.4f} {q[2]:.4f}")


if __name__ == "__main__":
    main()
