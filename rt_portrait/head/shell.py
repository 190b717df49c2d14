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
from .types import Pose


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


@dataclass(frozen=True)
class ShellFit:
    """Scales of the skull ellipsoid's semi-axes for one subject (1 = the generic skull):
    toward canonical -x and +x (the image's left and right in a frontal view), upward (the
    crown) and backward (+z, away from the face). The generic skull is 1.08 face widths across;
    heads with ears, full hair or a narrow crop differ, and a head turn then carries the real
    head's edge (an ear, hair) only as far as the shell reaches: beyond it the source's head
    stays put like background. A photo does not show the back: :func:`fit_shell` makes the
    skull as much thicker behind as beside (never thinner than the generic one), so the side
    that turns away carries full hair round to where it showed, not a gap and a stray lock."""

    left: float = 1.0
    right: float = 1.0
    top: float = 1.0
    back: float = 1.0

    def validate(self) -> None:
        for name in ("left", "right", "top", "back"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0.25 <= v <= 4.0):
                raise ValueError(f"shell fit {name} scale must be in [0.25, 4], got {v}")


SHELL_FIT_LIMITS = (0.85, 1.5)  # the scales fit_shell may choose
# how a pipeline picks its shell: fitted to the source, the generic skull, or by generator
SHELL_MODES = ("auto", "fitted", "generic")


def _skull_axes(dirs: np.ndarray, axes: np.ndarray, fit: ShellFit) -> np.ndarray:
    """(N, 3) the ellipsoid semi-axes that apply along each direction (canonical y is down)."""
    out = np.tile(np.asarray(axes, dtype=np.float64), (len(dirs), 1))
    out[:, 0] *= np.where(dirs[:, 0] < 0, fit.left, fit.right)
    out[:, 1] *= np.where(dirs[:, 1] < 0, fit.top, 1.0)
    out[:, 2] *= np.where(dirs[:, 2] > 0, fit.back, 1.0)
    return out


def fit_shell(
    template: Template,
    pose: Pose,
    person: np.ndarray,
    threshold: float = 0.5,
    limits: tuple[float, float] = SHELL_FIT_LIMITS,
) -> ShellFit:
    """The skull scales that make the shell's outline meet the person's outline in a source
    image: ``person`` (H, W) is its person probability (``tracking.segment_person``), ``pose``
    the source head's pose.

    Along lines through the skull's centre in the head's own axes (sideways at five heights
    around the ears, and up), the distance from the centre to where the person mask ends is
    compared with the generic skull's projected radius on the same line; the median ratio per
    side, clipped to ``limits``, is that side's scale. A line that leaves the image, or meets
    no person at the centre, keeps 1."""
    if person.ndim != 2:
        raise ValueError(f"person mask must be (H, W), got shape {person.shape}")
    h, w = person.shape
    geo = shell_geometry(template)
    c, ay = geo.centre, geo.axes[1]
    origin = pose.apply(c[None])[0, :2]
    ex = pose.rotation[:2, 0] / max(np.linalg.norm(pose.rotation[:2, 0]), 1e-9)
    ey = pose.rotation[:2, 1] / max(np.linalg.norm(pose.rotation[:2, 1]), 1e-9)
    # the generic ellipsoid's outline in the image: project a dense sampling of it
    el = np.linspace(-np.pi / 2, np.pi / 2, 61)
    az_ = np.linspace(-np.pi, np.pi, 121)
    E, A = np.meshgrid(el, az_)
    d = np.stack([np.cos(E) * np.sin(A), -np.sin(E), -np.cos(E) * np.cos(A)], -1).reshape(-1, 3)
    surface = c + d * geo.axes
    rel = pose.apply(surface)[:, :2] - origin
    u, v = rel @ ex, rel @ ey
    unit = pose.scale * float(ay)

    lo, hi = limits

    def mask_reach(direction: np.ndarray, start: np.ndarray, far: float) -> float | None:
        """Pixels from ``start`` along ``direction`` to where the person ends, or ``far`` when
        it runs on that far (None: no person at the start, or the image edge first)."""
        steps = np.arange(0.0, far + 1.0, 1.0)
        pts = start[None] + steps[:, None] * direction[None]
        xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        if not inside[0] or person[yi[0], xi[0]] < threshold:
            return None
        on = np.zeros(len(steps), dtype=bool)
        on[inside] = person[yi[inside], xi[inside]] >= threshold
        off = np.flatnonzero(~on)
        if len(off) == 0:
            return far
        return float(steps[off[0]]) if inside[off[0]] else None

    scales: dict[str, float] = {}
    for name, sign in (("left", -1.0), ("right", 1.0)):
        ratios = []
        for t in np.linspace(-0.3, 0.3, 5):  # heights around the skull's widest row
            band = np.abs(v - t * unit) < 0.05 * unit
            side = band & (sign * u > 0)
            if not side.any():
                continue
            radius = float(np.max(sign * u[side]))
            reach = mask_reach(sign * ex, origin + t * unit * ey, hi * radius + 2.0)
            if reach is not None and radius > 0:
                ratios.append(reach / radius)
        scales[name] = float(np.clip(np.median(ratios), lo, hi)) if ratios else 1.0
    up = np.abs(u) < 0.05 * unit
    top = 1.0
    if up.any():
        radius = float(np.max(-v[up]))
        reach = mask_reach(-ey, origin, hi * radius + 2.0)
        if reach is not None and radius > 0:
            top = float(np.clip(reach / radius, lo, hi))
    # canonical -x is the image's left when the head faces the camera (rotation ~ identity)
    # as thick behind the skull as beside it
    side = (scales["left"] + scales["right"]) / 2
    back = max(1.0, 1.0 + (side - 1.0) * float(geo.axes[0] / geo.axes[2]))
    return ShellFit(left=scales["left"], right=scales["right"], top=top, back=back)


@dataclass(frozen=True)
class Fringe:
    """The person's head beyond the skull in one source image (hair, a hat's brim, a bun),
    as canonical points on the plane through the skull's centre that faces the source camera
    (where an ellipsoid's silhouette lies), so they turn and move with the head."""

    points: np.ndarray  # (F, 3) float64 canonical frame
    normals: np.ndarray  # (F, 3) unit, toward the source camera


FRINGE_REACH = 1.8  # how far the fringe may reach, in skull radii from the skull's centre


def fit_fringe(
    template: Template,
    pose: Pose,
    person: np.ndarray,
    fit: ShellFit | None = None,
    threshold: float = 0.5,
    spacing: float = 0.04,
    reach: float = FRINGE_REACH,
) -> Fringe:
    """The person's head outside the (fitted) skull's outline in a source image: ``person``
    (H, W) is its person probability (``tracking.segment_person``), ``pose`` the source head's
    pose. Kept: person pixels outside the convex outline of the skull and the face, above the
    chin (in the head's own axes), within ``reach`` skull radii of the skull's centre and joined
    to the outline, sampled every ``spacing`` canonical units. Shoulders, a raised hand or a
    second person beside the head are not joined to it above the chin, so they stay behind.

    Without these points a head turn carries only what the skull covers: a wide hat's brim or
    big hair beyond it stays on the wall as background (and the background that the elastic
    flow stretches after the head shows it twice)."""
    from matplotlib.path import Path as MplPath
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    if person.ndim != 2:
        raise ValueError(f"person mask must be (H, W), got shape {person.shape}")
    if not spacing > 0:
        raise ValueError(f"fringe spacing must be positive canonical units, got {spacing}")
    fit = fit or ShellFit()
    geo = shell_geometry(template)
    h, w = person.shape
    chin = float(template.vertices[template.groups["face_oval"], 1].max())
    # the skull's outline in the image, from its points above the chin and the face's
    el, az_ = np.meshgrid(np.linspace(-np.pi / 2, np.pi / 2, 31), np.linspace(-np.pi, np.pi, 61))
    d = np.stack([np.cos(el) * np.sin(az_), -np.sin(el), -np.cos(el) * np.cos(az_)], -1).reshape(-1, 3)
    skull = geo.centre + d * _skull_axes(d, geo.axes, fit)
    outline = np.concatenate([skull[skull[:, 1] < chin], template.vertices])
    proj = pose.apply(outline)[:, :2]
    hull = MplPath(proj[ConvexHull(proj).vertices])
    step = max(1, int(spacing * pose.scale))
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    grid = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    inside = hull.contains_points(grid).reshape(xs.shape)
    # each grid pixel in canonical units on the plane through the skull's centre
    centre = pose.apply(geo.centre[None])[0]
    cam = np.concatenate([grid, np.full((len(grid), 1), centre[2])], 1)
    canon = (cam - pose.translation) @ pose.rotation / pose.scale
    rel = (canon - geo.centre) / _skull_axes(canon - geo.centre, geo.axes, fit)
    near = (np.hypot(rel[:, 0], rel[:, 1]) <= reach) & (canon[:, 1] < chin)
    cand = (person[ys, xs] >= threshold) & ~inside & near.reshape(xs.shape)
    # joined to the outline: a component of the candidates that touches it
    comp, n = ndimage.label(cand)
    if n == 0:
        return Fringe(points=np.zeros((0, 3)), normals=np.zeros((0, 3)))
    touching = np.unique(comp[ndimage.binary_dilation(inside) & (comp > 0)])
    keep = np.isin(comp, touching[touching > 0]).ravel()
    toward_camera = pose.rotation.T @ np.array([0.0, 0.0, -1.0])
    return Fringe(points=canon[keep], normals=np.tile(toward_camera, (int(keep.sum()), 1)))


def build_shell(
    template: Template | None = None,
    density: float = 0.08,
    fit: ShellFit | None = None,
    fringe: Fringe | None = None,
) -> HeadShell:
    """Shell points about ``density`` canonical units apart (the template has unit RMS radius),
    on the generic skull or on one scaled by ``fit`` (:func:`fit_shell`), with the ``fringe``
    (:func:`fit_fringe`) added as they are."""
    from matplotlib.path import Path as MplPath

    if not (0.005 <= density <= 1.0):
        raise ValueError(
            f"shell density (point spacing) must be in [0.005, 1] canonical units, got {density}"
        )
    fit = fit or ShellFit()
    fit.validate()
    tpl = template or load_template()
    geo = shell_geometry(tpl)
    c = geo.centre
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
    axes = _skull_axes(dirs, geo.axes, fit)
    re = 1.0 / np.sqrt(((dirs / axes) ** 2).sum(1))
    # radius correction so the skull meets the face oval: interpolate oval/ellipsoid radius
    # ratios over nearby directions, fading out within ~30 degrees
    oval = tpl.vertices[tpl.groups["face_oval"]] - c
    r_oval = np.linalg.norm(oval, axis=1)
    d_oval = oval / r_oval[:, None]
    re_oval = 1.0 / np.sqrt(((d_oval / _skull_axes(d_oval, geo.axes, fit)) ** 2).sum(1))
    ratio = r_oval / re_oval
    ang = np.arccos(np.clip(dirs @ d_oval.T, -1, 1))  # (M, K)
    w = np.exp(-((ang / np.radians(12.0)) ** 2)) + 1e-12
    fade = np.exp(-((ang.min(1) / np.radians(30.0)) ** 2))
    corr = 1.0 + fade * ((w * (ratio - 1.0)).sum(1) / w.sum(1))
    skull = c + dirs * (re * corr)[:, None]
    # drop the face's own angular footprint (the mesh covers it)
    footprint = MplPath(_angles(d_oval))
    inside = footprint.contains_points(_angles(dirs))
    normals = (skull - c) / axes**2
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
    in_skull = (((neck - c) / _skull_axes(neck - c, geo.axes, fit)) ** 2).sum(1) < 1.0
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
    if fringe is not None and len(fringe.points):
        points = np.concatenate([points, fringe.points])
        normals = np.concatenate([normals, fringe.normals])
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
