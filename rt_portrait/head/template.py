"""The neutral head template shipped with the package (built by scripts/build_template.py).

Canonical frame: x right, y down, z away from the camera; the face looks along -z, its
left/right symmetry plane is x = 0, it is centred and has unit RMS radius.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rt_portrait.core.types import Region

TEMPLATE_PATH = Path(__file__).with_name("data") / "template.npz"


# eq=False: hashed by identity, so per-template caches (edit rigs) can key on it
@dataclass(frozen=True, eq=False)
class Template:
    """Neutral mesh: 478 vertices (468 face + 2 x 5 iris), triangles, regions, index groups.

    ``groups`` holds index arrays (int) and per-vertex weights (float, names ending in
    ``_weights`` or ``rigid``): lid lines (``left_eye_upper``/``lower`` paired, image-left to
    image-right), irises (centre first), lip loops and lines, ``mouth_corners``,
    ``face_oval`` (closed loop), brows, ``jaw``/``jaw_weights``/``jaw_hinge`` and ``rigid``
    (pose-fitting weights). "left" is the subject's left = image right (+x).
    """

    vertices: np.ndarray  # (478, 3) float64 canonical
    triangles: np.ndarray  # (F, 3) int32, normals toward -z on the frontal face
    regions: np.ndarray  # (478,) int8 Region values
    groups: dict[str, np.ndarray]
    mirror: np.ndarray  # (478,) index of each vertex's left/right mirror partner
    meta: dict[str, object] = field(default_factory=dict)

    def group(self, name: str) -> np.ndarray:
        try:
            return self.groups[name]
        except KeyError:
            raise KeyError(f"template has no group {name!r}; groups: {sorted(self.groups)}") from None

    def region_indices(self, region: Region) -> np.ndarray:
        return np.flatnonzero(self.regions == int(region))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=4)
def load_template(path: str | None = None) -> Template:
    """Load (once per process and path) the packaged template; arrays are read-only."""
    p = Path(path) if path is not None else TEMPLATE_PATH
    if not p.exists():
        raise FileNotFoundError(f"head template not found at {p}; rebuild it with scripts/build_template.py")
    with np.load(p) as d:
        groups = {k[len("group_") :]: _readonly(d[k].copy()) for k in d.files if k.startswith("group_")}
        meta = {k[len("meta_") :]: d[k].item() for k in d.files if k.startswith("meta_")}
        return Template(
            vertices=_readonly(d["vertices"].astype(np.float64)),
            triangles=_readonly(d["triangles"].astype(np.int32)),
            regions=_readonly(d["regions"].astype(np.int8)),
            groups=groups,
            mirror=_readonly(d["mirror"].astype(np.int64)),
            meta=meta,
        )
