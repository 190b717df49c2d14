"""Head-shell proxy (rigid with the head) and static background anchors.

The face mesh covers only the face. The shell adds canonical points for the rest of the
head, so the 3D flow covers hair, ears and neck too: an ellipsoidal skull (forehead/hair
cap, sides with the ears, back of the skull) whose radius is corrected near the face oval
so it meets the oval exactly (no gap between mesh and shell), minus the face's own angular
footprint, plus an elliptic neck cylinder from inside the skull down to 1.5 face heights
below the chin. Background anchors are static image points the flow stage places at far
depth, so every pixel has a correspondence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt_portrait.core.types import Region

from .template import Template, load_template


@dataclass(frozen=True)
class HeadShell:
    points: np.ndarray  # (M, 3) float64 canonical frame
    normals: np.ndarray  # (M, 3) unit outward normals, canonical frame
    labels: np.ndarray  # (M,) int8, all Region.HEAD_SHELL


@dataclass(frozen=True)
class ShellGeometry:
    """Proxy parameters in canonical units, derived from the template's face oval."""

    centre: np.ndarray  # (3,) skull ellipsoid centre
    axes: np.ndarray  # (3,) semi-axes x, y, z
    neck_centre_xz: np.ndarray  # (2,)
    neck_radii: np.ndarray  # (2,) x, z
    neck_top: float  # y where the neck starts (inside the skull)
    neck_bottom: float


def shell_geometry(template: Template) -> ShellGeometry:
    v = template.vertices
    oval = v[template.groups["face_oval"]]
    half_w = float(np.abs(oval[:, 0]).max())
    y_top, y_chin = float(oval[:, 1].min()), float(oval[:, 1].max())
    face_h = y_chin - y_top
    widest = oval[np.argmax(np.abs(oval[:, 0]))]
    ax = 1.08 * half_w  # hair and ears stick out a little past the face oval
    az = 1.3 * ax  # head length / width of adult heads
    y0 = float(widest[1]) - 0.1 * face_h
    ay = y0 - (y_top - 0.3 * face_h)  # the crown sits ~0.3 face heights above the oval top
    z_front = float(oval[np.argmin(oval[:, 1]), 2])  # forehead top
    z0 = z_front + az * 0.95
    return ShellGeometry(
        centre=np.array([0.0, y0, z0]),
        axes=np.array([ax, ay, az]),
        neck_centre_xz=np.array([0.0, z0 + 0.1 * az]),
        neck_radii=np.array([0.72 * ax, 0.72 * az]),
        neck_top=y0,
        neck_bottom=y_chin + 1.5 * face_h,
    )


def _angles(d: np.ndarray) -> np.ndarray:
    """(azimuth, elevation) of unit directions; azimuth 0 = toward the camera (-z)."""
    return np.stack([np.arctan2(d[:, 0], -d[:, 2]), np.arcsin(np.clip(-d[:, 1], -1, 1))], axis=1)


def build_shell(template: Template | None = None, density: float = 0.08) -> HeadShell:
    """Shell points about ``density`` canonical units apart (the template has unit RMS radius)."""
    from matplotlib.path import Path as MplPath

    if not (0.005 <= density <= 1.0):
        raise ValueError(
            f"shell density (point spacing) must be in [0.005, 1] canonical units, got {density}"
        )
    tpl = template or load_template()
    geo = shell_geometry(tpl)
    c, (ax, ay, az) = geo.centre, geo.axes
    # --- skull: rows of constant elevation on the ellipsoid, ~density apart
    r_mean = float(np.mean(geo.axes))
    n_rows = max(8, int(np.ceil(np.pi * r_mean / density)))
    pts = []
    for el in np.linspace(-np.pi / 2, np.pi / 2, n_rows + 1)[1:-1]:
        n = max(6, int(np.ceil(2 * np.pi * r_mean * np.cos(el) / density)))
        az_ = np.linspace(-np.pi, np.pi, n, endpoint=False) + (0.5 * (n_rows % 2)) * (2 * np.pi / n)
        d = np.stack([np.cos(el) * np.sin(az_), -np.sin(el) * np.ones(n), -np.cos(el) * np.cos(az_)], axis=1)
        pts.append(d)
    pts.append(np.array([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]]))
    dirs = np.concatenate(pts)
    re = 1.0 / np.sqrt((dirs[:, 0] / ax) ** 2 + (dirs[:, 1] / ay) ** 2 + (dirs[:, 2] / az) ** 2)
    # radius correction so the skull meets the face oval: interpolate oval/ellipsoid radius
    # ratios over nearby directions, fading out within ~30 degrees
    oval = tpl.vertices[tpl.groups["face_oval"]] - c
    r_oval = np.linalg.norm(oval, axis=1)
    d_oval = oval / r_oval[:, None]
    re_oval = 1.0 / np.sqrt((d_oval[:, 0] / ax) ** 2 + (d_oval[:, 1] / ay) ** 2 + (d_oval[:, 2] / az) ** 2)
    ratio = r_oval / re_oval
    ang = np.arccos(np.clip(dirs @ d_oval.T, -1, 1))  # (M, K)
    w = np.exp(-((ang / np.radians(12.0)) ** 2)) + 1e-12
    fade = np.exp(-((ang.min(1) / np.radians(30.0)) ** 2))
    corr = 1.0 + fade * ((w * (ratio - 1.0)).sum(1) / w.sum(1))
    skull = c + dirs * (re * corr)[:, None]
    # drop the face's own angular footprint (the mesh covers it)
    footprint = MplPath(_angles(d_oval))
    inside = footprint.contains_points(_angles(dirs))
    normals = (skull - c) / geo.axes**2
    keep = ~inside
    # drop skull points inside the neck (below the neck top) so the surface stays outer
    nx, nz = geo.neck_centre_xz
    rx, rz = geo.neck_radii
    in_neck = (((skull[:, 0] - nx) / rx) ** 2 + ((skull[:, 2] - nz) / rz) ** 2 < 1.0) & (
        skull[:, 1] > geo.neck_top
    )
    keep &= ~in_neck
    skull, normals = skull[keep], normals[keep]
    # --- neck: elliptic cylinder rings
    circ = np.pi * (3 * (rx + rz) - np.sqrt((3 * rx + rz) * (rx + 3 * rz)))  # Ramanujan
    n_ring = max(12, int(np.ceil(circ / density)))
    t = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    ys = np.arange(geo.neck_top, geo.neck_bottom + 1e-9, density)
    ring = np.stack([nx + rx * np.sin(t), np.zeros_like(t), nz - rz * np.cos(t)], axis=1)
    neck = np.concatenate([ring + np.array([0.0, y, 0.0]) for y in ys])
    neck_n = np.stack([np.sin(t) / rx, np.zeros_like(t), -np.cos(t) / rz], axis=1)
    neck_n = np.tile(neck_n, (len(ys), 1))
    in_skull = (((neck - c) / geo.axes) ** 2).sum(1) < 1.0
    neck, neck_n = neck[~in_skull], neck_n[~in_skull]
    points = np.concatenate([skull, neck])
    normals = np.concatenate([normals, neck_n])
    # skirt: fill the seam between the face oval and the nearest shell points, where the
    # radius correction stretched the sampling, so the flow sees no gap
    oval_c = oval + c
    dist = np.linalg.norm(oval_c[:, None] - points[None], axis=-1)
    near = np.argsort(dist, axis=1)[:, :3]
    skirt, skirt_n = [], []
    for k in range(len(oval_c)):
        for j in near[k]:
            gap = dist[k, j]
            n_fill = int(gap / density)
            for f in np.arange(1, n_fill + 1) / (n_fill + 1):
                skirt.append(oval_c[k] + f * (points[j] - oval_c[k]))
                skirt_n.append(normals[j])
    if skirt:
        points = np.concatenate([points, np.array(skirt)])
        normals = np.concatenate([normals, np.array(skirt_n)])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    labels = np.full(len(points), int(Region.HEAD_SHELL), dtype=np.int8)
    return HeadShell(points=points, normals=normals, labels=labels)


def background_anchors(height: int, width: int, spacing: float) -> np.ndarray:
    """(B, 2) float32 grid of static image points (x, y) covering the whole frame, borders included."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if not spacing > 0:
        raise ValueError(f"anchor spacing must be positive pixels, got {spacing}")
    xs = np.linspace(0.0, width - 1.0, max(2, int(np.ceil((width - 1) / spacing)) + 1))
    ys = np.linspace(0.0, height - 1.0, max(2, int(np.ceil((height - 1) / spacing)) + 1))
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def save_debug_image(path: str, template: Template | None = None, density: float = 0.08) -> str:
    """Front and side views of the template and its shell (matplotlib), for eyeballing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tpl = template or load_template()
    shell = build_shell(tpl, density)
    fig, axes = plt.subplots(1, 2, figsize=(10, 6))
    for ax, (i, j, title) in zip(axes, ((0, 1, "front (x, y)"), (2, 1, "side (z, y)")), strict=False):
        ax.scatter(shell.points[:, i], shell.points[:, j], s=1, c="0.6", label="head shell")
        ax.scatter(tpl.vertices[:, i], tpl.vertices[:, j], s=2, c=tpl.regions, cmap="tab10", label="face")
        oval = tpl.vertices[tpl.groups["face_oval"]]
        ax.plot(oval[:, i], oval[:, j], "r-", lw=0.8)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":  # python -m rt_portrait.head.shell OUT.png
    import sys

    print(save_debug_image(sys.argv[1] if len(sys.argv) > 1 else "head_shell.png"))
