"""The head scene as an index-aligned point cloud in working-grid pixels.

For a HeadState (camera px) and a Window (camera px -> working px) the builder returns the
surface samples the 3D flow splats, always the same points in the same order, so the
target and source clouds are index-aligned:

(a) the face mesh densified by fixed barycentric samples of its triangles (triangle t split
    into n_t^2 sub-triangles, n_t from its longest edge at the expected scale; shared samples kept once), labels from the
    template's per-vertex regions, normals interpolated from the posed mesh's area-weighted
    vertex normals;
(b) eye fills (the eye-loop openings), label EYES, and the irises (discs on the iris rings), label IRIS;
(c) mouth-interior points: a fan filling the inner-lip loop, recessed behind the lips by
    more than the depth tolerance, label MOUTH_INTERIOR: in a closed mouth the fan collapses
    behind the lips and is hidden;
(d) head-shell points, label HEAD_SHELL: rigid with the head pose, except the neck, which
    blends into the static source placement downward. With the canonical height y (down)
    measured from the chin in face heights h (face-oval top to chin), ``t = (y - y_chin) / h``,
    a shell point p is placed at ``w pose(p) + (1 - w) anchor_pose(p)`` with
    ``w = 1 - smoothstep((t - neck_rigid_to) / (neck_static_from - neck_rigid_to))``: rigid
    down to the jaw line, static (where the source shows it) from ``neck_static_from``
    face heights below the chin, so turning or nodding no longer drags the clothes. Shell
    points below ``neck_static_from`` are dropped (they would never move). Normals blend
    alike. Without ``anchor_pose`` the whole shell is rigid.

There are no background points: the flow defines the background analytically (static,
far, see ``rt_portrait.flow.dispatch``).

Everything that does not depend on the frame (sample weights, incidence matrices, the shell
subset, the neck's static part) is computed once in the constructor; a call is a few small
matmuls. Depth z is the camera-frame z scaled by the window scale (working px, larger = farther).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from rt_portrait.core.types import Region
from rt_portrait.head.shell import HeadShell
from rt_portrait.head.template import Template
from rt_portrait.head.types import HeadState, Pose

from .types import FlowConfig, PointCloud, Window


@dataclass(frozen=True)
class SceneConfig:
    # Target sample spacings, as multiples of the flow radius. Spacing s leaves no point of a
    # sampled surface farther than ~0.6 s from a sample, so s < 1.6 keeps surfaces hole-free.
    face_spacing: float = 1.4  # longest sub-triangle edge of the densified face mesh
    shell_spacing: float = 1.2  # voxel size that thins the head shell
    fan_spacing: float = 1.0  # eye, iris and mouth fans
    neck_rigid_to: float = 0.0  # face heights below the chin where the neck starts to stay behind
    neck_static_from: float = 0.8  # face heights below the chin where it is static (and ends)
    mouth_recess: float = 2.0  # mouth-interior depth behind the lips, in depth tolerances
    # Eye fill and irises sit more than one depth tolerance behind the lids, like the mouth
    # interior: in an open eye nothing is in front of them, and a closing lid (its skin
    # stretched over the opening) hides them instead of blending with them.
    # The irises sit more than one tolerance in front of the eye fill, so the fill does not
    # blend into them: a gaze change moves the whole iris, not half of it.
    eye_recess: float = 2.5  # eye fill depth behind the lids, in depth tolerances
    iris_lift: float = 1.2  # irises in front of the eye fill, in depth tolerances
    max_subdivision: int = 8  # cap on a triangle's n (it is split into n^2 sub-triangles)
    stretch_density: float = 3.0  # extra subdivision of lid and lip triangles
    # shell points within this many face heights of the face oval follow the expression of
    # the nearest oval vertices, fading to rigid at that distance (0 = a rigid shell)
    skin_follow: float = 0.25


def _oval_follow(
    points: np.ndarray, verts: np.ndarray, oval: np.ndarray, height: float, reach: float, k: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For shell ``points`` within ``reach`` face heights (``height`` canonical units) of the
    ``oval`` vertices (canonical): their ``k`` nearest oval vertex ids (F, k), inverse-distance
    weights (F, k) faded to 0 at ``reach`` (smoothstep), and their row ids (F,). Empty arrays
    when nothing is that close."""
    k = min(k, len(oval))
    empty = (np.zeros((0, k), dtype=np.int64), np.zeros((0, k)), np.zeros(0, dtype=np.int64))
    if reach <= 0 or len(points) == 0 or k == 0:
        return empty
    ov = verts[oval]
    d = np.linalg.norm(points[:, None, :] - ov[None, :, :], axis=2)  # (S, |oval|)
    near = np.argsort(d, axis=1)[:, :k]
    dk = np.take_along_axis(d, near, 1)
    x = np.clip(dk[:, 0] / (reach * height), 0.0, 1.0)
    fade = 1.0 - x * x * (3.0 - 2.0 * x)
    rows = np.flatnonzero(fade > 0)
    if len(rows) == 0:
        return empty
    inv = 1.0 / np.maximum(dk[rows], 1e-6)
    w = inv / inv.sum(1, keepdims=True) * fade[rows, None]
    return oval[near[rows]], w, rows


def _barycentric_samples(triangles: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique samples (i, j, k) / n_t of every triangle t (n_t = ``levels[t]``).

    Returns (M, 3) vertex ids and (M, 3) weights; samples shared by neighbouring triangles
    (vertices, edges of equal level) are kept once.
    """
    lcm = int(np.lcm.reduce(np.arange(1, int(levels.max()) + 1)))
    ids_all, wts_all = [], []
    for n in np.unique(levels):
        tri = triangles[levels == n].astype(np.int64)
        bary = np.array([(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=np.int64)
        ids_all.append(np.broadcast_to(tri[:, None, :], (len(tri), len(bary), 3)).reshape(-1, 3))
        wts_all.append(np.broadcast_to(bary[None] * (lcm // n), (len(tri), len(bary), 3)).reshape(-1, 3))
    ids, wts = np.concatenate(ids_all), np.concatenate(wts_all)
    # Canonical form: zero-weight slots get id -1, slots sorted by id, so a shared sample has one key.
    ids = np.where(wts > 0, ids, -1)
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, 1)
    wts = np.take_along_axis(wts, order, 1)
    _, first = np.unique(np.concatenate([ids, wts], axis=1), axis=0, return_index=True)
    first = np.sort(first)
    ids, wts = ids[first], wts[first]
    return np.where(ids < 0, 0, ids), wts.astype(np.float64) / lcm


def _fan_weights(loop_len: int, rings: int, per_edge: int) -> np.ndarray:
    """(S, L) weights over a closed loop's vertices: rings shrunk toward the loop centroid."""
    rows = [np.full(loop_len, 1.0 / loop_len)]  # centroid
    for r in range(1, rings + 1):
        t = r / (rings + 1)  # 0 = centroid, 1 = loop (excluded: the lips/lids are there)
        m = max(1, round(per_edge * t))
        for k in range(loop_len):
            for s in range(m):
                a = s / m
                w = np.full(loop_len, (1.0 - t) / loop_len)
                w[k] += t * (1 - a)
                w[(k + 1) % loop_len] += t * a
                rows.append(w)
    return np.array(rows)


def _thin(points: np.ndarray, cell: float) -> np.ndarray:
    """Indices of a deterministic subset with at most one point per ``cell``-sized voxel."""
    if cell <= 0:
        return np.arange(len(points))
    keys = np.floor(points / cell).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


class SceneBuilder:
    """Builds the head scene's PointCloud for any HeadState of one subject in one window.

    ``head_scale``: camera px per canonical unit expected for this subject (e.g. the source
    state's ``pose.scale``); it only sets sampling densities. By default it assumes the face
    spans a quarter of the window (``compose.choose_window``'s rule).

    ``anchor_pose``: the pose where the static part of the neck stays (the source state's
    pose); None keeps the whole shell rigid with the head.
    """

    def __init__(
        self,
        template: Template,
        shell: HeadShell,
        window: Window,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        config: SceneConfig | None = None,
        flow: FlowConfig | None = None,
        head_scale: float | None = None,
        anchor_pose: Pose | None = None,
    ) -> None:
        self.config = cfg = config or SceneConfig()
        if not cfg.neck_static_from > cfg.neck_rigid_to:
            raise ValueError(
                f"SceneConfig.neck_static_from ({cfg.neck_static_from}) must be greater than "
                f"neck_rigid_to ({cfg.neck_rigid_to})"
            )
        if cfg.skin_follow < 0:
            raise ValueError(f"SceneConfig.skin_follow must be >= 0 (face heights), got {cfg.skin_follow}")
        self.window = window
        self.image_size = image_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        flow = flow or FlowConfig(size=window.size)
        r = float(flow.radius) if flow.radius is not None else window.size / 128 + 1
        tol = float(flow.depth_tol) if flow.depth_tol is not None else window.size / 32
        verts = np.asarray(template.vertices, dtype=np.float64)
        tris = np.asarray(template.triangles, dtype=np.int64)
        if head_scale is None:
            extent = float(np.ptp(verts[:, :2], axis=0).max())
            head_scale = window.side / 4.0 / extent
        px_per_unit = head_scale * window.scale  # working px per canonical unit
        unit = r / px_per_unit  # the flow radius in canonical units

        # (a) face: per-triangle subdivision so sample spacing <= target at the expected scale.
        # The template's iris triangles are left out: the irises are the recessed iris fans
        # below, which a closing lid hides (on the lid's own surface they would show through).
        iris = np.concatenate(
            [np.asarray(template.group(g), dtype=np.int64) for g in ("left_iris", "right_iris")]
        )
        tris = tris[~np.isin(tris, iris).any(1)]
        edge = np.stack(
            [
                np.linalg.norm(verts[tris[:, a]] - verts[tris[:, b]], axis=1)
                for a, b in ((0, 1), (1, 2), (2, 0))
            ],
            axis=1,
        ).max(1)
        regions = np.asarray(template.regions)
        # lids and lips stretch several-fold when eyes close and mouths open: sample them denser
        stretchy = np.isin(regions[tris], (int(Region.EYES), int(Region.LIPS))).any(1)
        level = np.ceil(edge / (cfg.face_spacing * unit)) * np.where(stretchy, cfg.stretch_density, 1.0)
        self.subdivision = np.clip(level, 1, cfg.max_subdivision).astype(np.int64)
        self._face_ids, self._face_w = _barycentric_samples(tris, self.subdivision)
        self._tris = tris
        nv = len(verts)
        self._num_vertices = nv
        dominant = np.take_along_axis(self._face_ids, np.argmax(self._face_w, axis=1)[:, None], 1)[:, 0]
        face_labels = regions[dominant].astype(np.int32)

        # (b, c) fans over closed loops, expressed as weights over all vertices
        def fan(loop: np.ndarray, extent_units: float) -> np.ndarray:
            step = cfg.fan_spacing * unit
            rings = max(1, math.ceil(extent_units / 2 / step))
            per_edge = max(1, math.ceil(extent_units * math.pi / len(loop) / step))
            wl = _fan_weights(len(loop), rings, per_edge)
            w = np.zeros((len(wl), nv))
            w[:, loop] = wl
            return w

        def loop_extent(loop: np.ndarray) -> float:
            return float(np.ptp(verts[loop, :2], axis=0).max())

        mouth_loop = np.asarray(template.group("inner_lip_loop"), dtype=np.int64)
        eye_loops = [
            np.asarray(template.group(g), dtype=np.int64) for g in ("left_eye_loop", "right_eye_loop")
        ]
        iris_rings = [np.asarray(template.group(g), dtype=np.int64)[1:] for g in ("left_iris", "right_iris")]
        fans = [(fan(mouth_loop, loop_extent(mouth_loop)), Region.MOUTH_INTERIOR, cfg.mouth_recess * tol)]
        for loop in eye_loops:
            fans.append((fan(loop, loop_extent(loop)), Region.EYES, cfg.eye_recess * tol))
        for ring in iris_rings:
            fans.append((fan(ring, loop_extent(ring)), Region.IRIS, (cfg.eye_recess - cfg.iris_lift) * tol))
        self._fan_w = np.concatenate([f[0] for f in fans])
        self._fan_dz = np.concatenate([np.full(len(f[0]), f[2]) for f in fans])
        fan_labels = np.concatenate([np.full(len(f[0]), int(f[1]), dtype=np.int32) for f in fans])

        self._offset = np.array([window.x0, window.y0, 0.0])

        # (d) shell, thinned to the target spacing, cut below the static neck
        if shell is not None:
            keep = _thin(np.asarray(shell.points), cfg.shell_spacing * unit)
            pts = np.asarray(shell.points, dtype=np.float64)[keep]
            nrm = np.asarray(shell.normals, dtype=np.float64)[keep]
            shell_labels = np.asarray(shell.labels, dtype=np.int32)[keep]
        else:
            pts, nrm, shell_labels = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int32)
        oval_y = verts[np.asarray(template.group("face_oval"), dtype=np.int64), 1]
        t = (pts[:, 1] - oval_y.max()) / (oval_y.max() - oval_y.min())  # face heights below the chin
        above = t < cfg.neck_static_from
        pts, nrm, shell_labels, t = pts[above], nrm[above], shell_labels[above], t[above]
        x = np.clip((t - cfg.neck_rigid_to) / (cfg.neck_static_from - cfg.neck_rigid_to), 0.0, 1.0)
        w = 1.0 - x * x * (3.0 - 2.0 * x)  # 1 = rigid with the head, 0 = static
        self._shell_pts, self._shell_nrm = pts, nrm
        # skin continuity: shell points near the jaw's part of the face oval move with its
        # expression (the skin under the chin stretches with an opening jaw, instead of the
        # rigid neck's top rows, which show the source's jaw shadow, staying between the old
        # chin and the new). Only the jaw: the rest of the oval carries the tracker's contour
        # noise, which moved the hair with it (full-frame PSNR -0.2 dB on val).
        oval = np.asarray(template.group("face_oval"), dtype=np.int64)
        if "jaw_weights" in template.groups:
            oval = oval[np.asarray(template.group("jaw_weights"))[oval] > 0.05]
        self._follow_idx, self._follow_w, self._follow_rows = _oval_follow(
            pts, verts, oval, float(np.ptp(oval_y)), cfg.skin_follow
        )
        if anchor_pose is None:
            w = np.ones_like(w)
        self.shell_weight = w  # (S,) per shell point, in cloud order
        self._shell_w = w[:, None]
        # the static part is fixed for the session: (1 - w) * anchor placement, precomputed
        if anchor_pose is not None:
            self._shell_static = (1.0 - self._shell_w) * (
                (anchor_pose.apply(pts) - self._offset) * window.scale
            )
            self._shell_static_n = (1.0 - self._shell_w) * (nrm @ anchor_pose.rotation.T)
        else:
            self._shell_static = np.zeros_like(pts)
            self._shell_static_n = np.zeros_like(nrm)

        self.counts = {"face": len(self._face_ids), "fans": len(self._fan_w), "shell": len(self._shell_pts)}
        labels = np.concatenate([face_labels, fan_labels, shell_labels])
        self._labels = torch.from_numpy(labels).to(self.device)

    def build_mirrored(self, state: HeadState, mirror: np.ndarray) -> PointCloud:
        """The cloud of ``state`` with every face and fan point placed where its left-right
        mirror partner is (``mirror``: the template's (478,) partner index, see
        :attr:`Template.mirror`; the template is symmetric, so a mirrored barycentric sample
        is a sample of the mirrored triangle). Index-aligned with :meth:`build`'s clouds:
        the flow from a target cloud to this one gives each target pixel the source position
        of its partner, e.g. the near cheek for a far cheek the source does not show.
        Mirroring reverses the triangles' winding, so the face normals are turned back out;
        the shell is left as it is."""
        mirror = np.asarray(mirror, dtype=np.int64)
        if mirror.shape != (self._num_vertices,):
            raise ValueError(f"mirror must be ({self._num_vertices},) vertex indices, got {mirror.shape}")
        cloud = self.build(
            replace(state, identity=state.identity[mirror], expression=state.expression[mirror])
        )
        normal = cloud.normal.clone()
        normal[: self.counts["face"]] *= -1
        return replace(cloud, normal=normal)

    @property
    def num_points(self) -> int:
        return int(self._labels.shape[0])

    def __call__(self, state: HeadState) -> PointCloud:
        return self.build(state)

    def build(self, state: HeadState) -> PointCloud:
        """The scene of ``state`` (a HeadState) in working px, index-aligned across states."""
        s = self.window.scale
        v = (state.vertices() - self._offset) * s  # (478, 3) working px, z scaled alike
        nv = self._num_vertices
        if v.shape[0] != nv:
            raise ValueError(f"head state has {v.shape[0]} vertices, template has {nv}")
        if not np.isfinite(v).all():
            raise ValueError("head state has non-finite vertices")
        t = self._tris
        fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])  # area-weighted face normals
        # vertex normal = sum of adjacent (area-weighted) face normals (bincount: a sparse sum)
        corners = t.T.ravel()
        vn = np.stack(
            [np.bincount(corners, weights=np.tile(fn[:, d], 3), minlength=nv) for d in range(3)], axis=1
        )
        face = np.einsum("mk,mkd->md", self._face_w, v[self._face_ids])
        face_n = np.einsum("mk,mkd->md", self._face_w, vn[self._face_ids])
        fans = self._fan_w @ v
        fans[:, 2] += self._fan_dz
        fan_n = np.broadcast_to(np.array([0.0, 0.0, -1.0]), fans.shape)
        pose = state.pose
        shell_pts = self._shell_pts
        if len(self._follow_rows):
            expression = np.asarray(state.expression, dtype=np.float64)
            shell_pts = shell_pts.copy()
            shell_pts[self._follow_rows] += np.einsum(
                "sk,skd->sd", self._follow_w, expression[self._follow_idx]
            )
        shell = self._shell_w * ((pose.apply(shell_pts) - self._offset) * s) + self._shell_static
        shell_n = self._shell_w * (self._shell_nrm @ pose.rotation.T) + self._shell_static_n
        xyz = np.concatenate([face, fans, shell]).astype(np.float32)
        nrm = np.concatenate([face_n, fan_n, shell_n]).astype(np.float32)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        return PointCloud(
            xyz=torch.from_numpy(xyz).to(self.device),
            normal=torch.from_numpy(nrm).to(self.device),
            label=self._labels,
        )
