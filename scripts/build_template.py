"""Build the neutral head template (rt_portrait/head/data/template.npz) from real clips.

Runs mediapipe face mesh (478 landmarks, iris refinement) on frames sampled from the
``train`` clips listed in ``../shared/data/MANIFEST.tsv``, Procrustes-aligns them
(similarity, on stable points), keeps near-neutral frames (mouth closed, eyes open,
near-frontal), averages them, orients the mean frontally (left/right symmetry plane x = 0,
face-oval plane facing the camera), centres it and scales it to unit RMS radius.

Only the derived mean shape and index tables are written: no media leaves the data folder
(research-only terms). Usage::

    python scripts/build_template.py [--data ../shared/data] [--per-clip 40]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from rt_portrait.core.geometry import umeyama

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "rt_portrait" / "head" / "data" / "template.npz"

# Region values (rt_portrait.flow.types.Region), copied as ints to keep this script import-light.
SKIN, EYES, BROWS, NOSE, LIPS = 1, 3, 4, 5, 6


# ----------------------------------------------------------------------------- landmarks


def sample_landmarks(data: Path, per_clip: int, max_side: int) -> tuple[list[np.ndarray], int]:
    """(478, 3) pixel landmarks of up to ``per_clip`` evenly spaced frames of every train clip."""
    import av
    import mediapipe as mp

    with open(data / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["split"] == "train"]
    clips = [r for r in rows if r["file"].startswith("clips/")]
    shapes: list[np.ndarray] = []
    used_clips = 0
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)
    for row in tqdm(clips, desc="clips"):
        path = data / row["file"]
        n_frames = max(1, round(float(row["fps"]) * float(row["seconds"])))
        step = max(1, n_frames // per_clip)
        got = 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if got >= per_clip:
                        break
                    if i % step:
                        continue
                    img = frame.to_ndarray(format="rgb24")
                    h, w = img.shape[:2]
                    if max(h, w) > max_side:  # big uncropped frames: the mesh runs at 192 px anyway
                        f = max_side / max(h, w)
                        img = frame.reformat(
                            width=int(w * f) // 2 * 2, height=int(h * f) // 2 * 2, format="rgb24"
                        ).to_ndarray()
                        h, w = img.shape[:2]
                    res = mesh.process(img)
                    if not res.multi_face_landmarks:
                        continue
                    lm = res.multi_face_landmarks[0].landmark
                    pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm], dtype=np.float64)
                    shapes.append(pts)
                    got += 1
        except av.error.FFmpegError as exc:  # a broken clip should not end the build
            print(f"skip {path.name}: {exc}")
        used_clips += got > 0
    mesh.close()
    return shapes, used_clips


# ----------------------------------------------------------------------------- alignment


def normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    return x / np.sqrt((x**2).sum(1).mean())


def procrustes(shapes: np.ndarray, w: np.ndarray, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes: aligned shapes and the rotation angle (deg) of each to the mean."""
    mean = normalise(np.median(shapes, axis=0))
    aligned = np.empty_like(shapes)
    angles = np.zeros(len(shapes))
    for _ in range(iters):
        for k, x in enumerate(shapes):
            s, r, t = umeyama(x, mean, w)
            aligned[k] = s * x @ r.T + t
            angles[k] = np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
        mean = normalise(aligned.mean(0))
    return aligned, angles


# ----------------------------------------------------------------------------- topology


def edges_of(conn) -> list[tuple[int, int]]:
    return sorted({tuple(sorted(e)) for e in conn})


def loops_of(conn) -> list[list[int]]:
    """Closed loops (ordered vertex lists) formed by a set of edges where every vertex has degree 2."""
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in edges_of(conn):
        adj[a].append(b)
        adj[b].append(a)
    seen: set[int] = set()
    loops = []
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [n for n in adj[cur] if n != prev]
            if not nxt or nxt[0] == start:
                break
            prev, cur = cur, nxt[0]
            if cur in seen:
                break
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def paths_of(conn) -> list[list[int]]:
    """Open polylines (ordered) formed by a set of edges."""
    adj: dict[int, list[int]] = defaultdict(list)
    for a, b in edges_of(conn):
        adj[a].append(b)
        adj[b].append(a)
    seen: set[int] = set()
    paths = []
    for start in sorted(v for v in adj if len(adj[v]) == 1):
        if start in seen:
            continue
        path, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [n for n in adj[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            path.append(cur)
            seen.add(cur)
        paths.append(path)
    return paths


def triangles_from_edges(edges: list[tuple[int, int]], verts: np.ndarray) -> np.ndarray:
    """3-cliques of the edge graph that are real faces, oriented to face -z (the camera)."""
    adj: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    tris = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]})

    # A 3-clique that is not a face (a "separating" triangle) has all three edges shared by
    # two real faces already; drop cliques while any edge has more than two of them, the
    # largest (in area) first, since fake cliques span across real faces.
    def area(t):
        p = verts[list(t)]
        return 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0]))

    while True:
        count: dict[tuple[int, int], int] = defaultdict(int)
        for t in tris:
            for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])):
                count[e] += 1
        bad = [t for t in tris if all(count[e] > 2 for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))]
        if not bad:
            break
        tris.remove(max(bad, key=area))
    # Orientation: make every normal point to -z in the frontal template; side faces near the
    # oval are checked by consistency with their neighbours (BFS over shared edges).
    tri = np.array(tris)
    out = orient_consistently(tri, verts)
    return out


def orient_consistently(tri: np.ndarray, verts: np.ndarray) -> np.ndarray:
    tri = tri.copy()
    edge_faces: dict[tuple[int, int], list[int]] = defaultdict(list)
    for f, t in enumerate(tri):
        for i in range(3):
            edge_faces[tuple(sorted((t[i], t[(i + 1) % 3])))].append(f)

    def normal_z(t):
        p = verts[t]
        return np.cross(p[1] - p[0], p[2] - p[0])[2]

    done = np.zeros(len(tri), bool)
    # seed: the most camera-facing triangle, oriented to -z
    seed = int(np.argmax([abs(normal_z(t)) for t in tri]))
    if normal_z(tri[seed]) > 0:
        tri[seed] = tri[seed][::-1]
    done[seed] = True
    queue = [seed]
    while queue:
        f = queue.pop()
        t = tri[f]
        for i in range(3):
            a, b = t[i], t[(i + 1) % 3]
            for g in edge_faces[tuple(sorted((a, b)))]:
                if done[g]:
                    continue
                u = tri[g]
                # consistent orientation: the shared edge runs b->a in the neighbour
                for j in range(3):
                    if u[j] == a and u[(j + 1) % 3] == b:
                        tri[g] = u[::-1]
                        break
                done[g] = True
                queue.append(g)
    if not done.all():
        raise RuntimeError("tessellation is not connected")
    return tri


def mirror_pairs(x: np.ndarray) -> np.ndarray:
    """Permutation p with x[p[i]] the left/right mirror of x[i] (x = 0 plane roughly symmetric)."""
    m = x * np.array([-1.0, 1.0, 1.0])
    cost = ((x[:, None, :] - m[None, :, :]) ** 2).sum(-1)
    _, p = linear_sum_assignment(cost)
    return p


def orient_frontal(mean: np.ndarray, oval: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rotate so the symmetry plane is x = 0 and the face-oval plane faces the camera."""
    x = normalise(mean)
    n_face = 468  # mesh vertices; iris pairs are matched with the rest below
    for _ in range(5):
        p = mirror_pairs(x)
        # symmetry plane normal: the dominant direction of pair differences
        d = x - x[p]
        d = d[np.linalg.norm(d, axis=1) > 1e-3]
        d *= np.sign(d[:, 0:1] + 1e-12)
        n = np.linalg.svd(d, full_matrices=False)[2][0]
        n *= np.sign(n[0])
        # rotate n onto +x (minimal rotation)
        v = np.cross(n, [1.0, 0, 0])
        c = float(n[0])
        if np.linalg.norm(v) > 1e-12:
            k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
            r = np.eye(3) + k + k @ k / (1 + c)
            x = x @ r.T
        x[:, 0] -= x[:, 0].mean()
    # pitch: fit a line to the face oval in the y-z plane and make it vertical (normal along z)
    o = x[oval, 1:]
    o = o - o.mean(0)
    direction = np.linalg.svd(o, full_matrices=False)[2][0]  # main axis of the oval in y-z
    direction *= np.sign(direction[0])  # pointing down (+y)
    ang = np.arctan2(direction[1], direction[0])  # tilt of the oval plane toward +z
    c, s = np.cos(ang), np.sin(ang)
    rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    x = x @ rx.T
    p = mirror_pairs(x)
    if not np.array_equal(p[p], np.arange(len(p))):
        raise RuntimeError("mirror pairing is not an involution")
    # exact symmetry: average each vertex with its mirrored partner
    x = 0.5 * (x + x[p] * np.array([-1.0, 1.0, 1.0]))
    assert n_face <= len(x)
    return normalise(x), p


# ----------------------------------------------------------------------------- groups


def poly_contains(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path as MplPath

    return MplPath(poly).contains_points(pts)


def split_loop(loop: list[int], x: np.ndarray) -> tuple[list[int], list[int], tuple[int, int]]:
    """Split a closed loop at its extreme-x vertices: (upper, lower) paths ordered by +x, corners excluded."""
    xs = x[loop, 0]
    i0, i1 = int(np.argmin(xs)), int(np.argmax(xs))
    n = len(loop)
    a = [loop[(i0 + k) % n] for k in range(1, (i1 - i0) % n)]
    b = [loop[(i0 - k) % n] for k in range(1, (i0 - i1) % n)]
    if x[a, 1].mean() > x[b, 1].mean():
        a, b = b, a
    return a, b, (loop[i0], loop[i1])


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def build_groups(x: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mediapipe.python.solutions import face_mesh_connections as c

    n = len(x)
    regions = np.full(n, SKIN, np.int8)
    g: dict[str, np.ndarray] = {}
    adj: dict[int, set[int]] = defaultdict(set)
    for t in tri:
        for i in range(3):
            adj[int(t[i])].add(int(t[(i + 1) % 3]))
            adj[int(t[i])].add(int(t[(i + 2) % 3]))

    nose = sorted({v for e in c.FACEMESH_NOSE for v in e})
    regions[nose] = NOSE

    # eyes: mediapipe's LEFT_* is the subject's left = image right (+x) on a frontal face
    for side, eye_conn, iris_conn, brow_conn in (
        ("left", c.FACEMESH_LEFT_EYE, c.FACEMESH_LEFT_IRIS, c.FACEMESH_LEFT_EYEBROW),
        ("right", c.FACEMESH_RIGHT_EYE, c.FACEMESH_RIGHT_IRIS, c.FACEMESH_RIGHT_EYEBROW),
    ):
        (loop,) = loops_of(eye_conn)
        ring = sorted({v for e in iris_conn for v in e})
        centre = min(ring) - 1  # 468 / 473 precede their rings
        iris = [centre] + ring
        want_sign = 1.0 if side == "left" else -1.0
        if np.sign(x[loop, 0].mean()) != want_sign:
            raise RuntimeError(f"mediapipe {side} eye is not on the expected side of the template")
        upper, lower, corners = split_loop(loop, x)
        if len(upper) != len(lower):
            raise RuntimeError(f"{side} lid lines do not pair up: {len(upper)} vs {len(lower)}")
        g[f"{side}_eye_upper"] = np.array(upper)
        g[f"{side}_eye_lower"] = np.array(lower)
        g[f"{side}_eye_corners"] = np.array(corners)  # image-left corner first
        g[f"{side}_eye_loop"] = np.array(loop)
        g[f"{side}_iris"] = np.array(iris)
        # upper eyelid skin: the 1-ring above the upper lid line (moves with a blink)
        lid = sorted({u for v in upper for u in adj[v]} - set(loop) - set(iris))
        top = np.interp(
            x[lid, 0], x[[corners[0]] + upper + [corners[1]], 0], x[[corners[0]] + upper + [corners[1]], 1]
        )
        lid = [v for v, yt in zip(lid, top, strict=False) if x[v, 1] < yt]
        g[f"{side}_eyelid"] = np.array(lid)
        regions[loop + iris + lid] = EYES
        brow = sorted({v for e in brow_conn for v in e})
        g[f"{side}_brow"] = np.array(brow)
        regions[brow] = BROWS

    # lips: two loops, the inner one (around the opening) has the smaller extent
    loops = sorted(loops_of(c.FACEMESH_LIPS), key=lambda lp: np.ptp(x[lp, 0]))
    inner, outer = loops
    up_in, lo_in, in_corners = split_loop(inner, x)
    up_out, lo_out, out_corners = split_loop(outer, x)
    g["inner_lip_upper"], g["inner_lip_lower"] = np.array(up_in), np.array(lo_in)
    g["inner_lip_loop"], g["outer_lip_loop"] = np.array(inner), np.array(outer)
    g["mouth_corners"] = np.array(out_corners)
    g["inner_mouth_corners"] = np.array(in_corners)
    in_lips = poly_contains(x[outer, :2], x[:, :2]) | np.isin(np.arange(n), outer + inner)
    in_lips[468:] = False
    lips = np.flatnonzero(in_lips)
    regions[lips] = LIPS
    # upper vs lower lip: above or below the inner line (interpolated between the inner lines)
    line_x = x[[in_corners[0]] + up_in + [in_corners[1]], 0]
    line_y = 0.5 * (
        x[[in_corners[0]] + up_in + [in_corners[1]], 1] + x[[in_corners[0]] + lo_in + [in_corners[1]], 1]
    )
    lip_line = np.interp(x[lips, 0], line_x, line_y)
    lower_lip = set(lips[x[lips, 1] > lip_line]) | set(lo_in) | set(lo_out)
    lower_lip -= set(up_in) | set(up_out) | set(in_corners) | set(out_corners)
    upper_lip = set(lips) - lower_lip - set(in_corners) - set(out_corners)
    g["upper_lip"] = np.array(sorted(upper_lip))
    g["lower_lip"] = np.array(sorted(lower_lip))

    (oval,) = loops_of(c.FACEMESH_FACE_OVAL)
    g["face_oval"] = np.array(oval)

    # jaw weights: 1 on the lower lip and everything a little below the mouth line, 0 above
    # it, smooth in between; the mouth corners hinge (0.5).
    y_mouth = float(x[inner, 1].mean())
    y_chin = float(x[oval, 1].max())
    span = y_chin - y_mouth
    mouth_w = float(np.ptp(x[outer, 0]))
    jaw = smoothstep((x[:, 1] - y_mouth) / (0.45 * span))
    # lateral taper along the mouth line so cheeks beside the corners stretch rather than tear
    corner_d = np.min(np.linalg.norm(x[:, None, :2] - x[None, list(out_corners), :2], axis=-1), axis=1)
    lip_w = 0.5 + 0.5 * smoothstep(corner_d / (0.3 * mouth_w))
    lo = sorted(lower_lip)
    up = sorted(upper_lip)
    jaw[lo] = lip_w[lo]
    jaw[up] = 0.5 - 0.5 * smoothstep(corner_d[up] / (0.3 * mouth_w))
    jaw[list(in_corners) + list(out_corners)] = 0.5
    jaw[468:] = 0.0
    g["jaw_weights"] = jaw.astype(np.float32)
    g["jaw"] = np.flatnonzero(jaw > 1e-3)
    # jaw axis: the two face-oval points nearest the ears at about the height of the eyes'
    # lower lids (where the mandible hinges), mirrored pair
    eye_y = float(x[g["left_eye_lower"], 1].mean())
    side_pts = [v for v in oval if abs(x[v, 0]) > 0.6 * np.abs(x[oval, 0]).max()]
    hinge_r = min(
        (v for v in side_pts if x[v, 0] < 0), key=lambda v: abs(x[v, 1] - (eye_y + 0.35 * (y_mouth - eye_y)))
    )
    hinge_l = min(
        (v for v in side_pts if x[v, 0] > 0), key=lambda v: abs(x[v, 1] - (eye_y + 0.35 * (y_mouth - eye_y)))
    )
    g["jaw_hinge"] = np.array([hinge_r, hinge_l])

    # rigid weights for pose fitting: nose, eye corners, forehead, temples, upper cheeks;
    # not the brows, lids, lips or jaw
    y_nose = float(x[1, 1])  # nose tip
    rigid = np.zeros(n)
    cand = (regions == SKIN) | (regions == NOSE)
    rigid[cand & (x[:, 1] < y_nose + 0.05 * span)] = 1.0
    brow_idx = np.concatenate([g["left_brow"], g["right_brow"]])
    d_brow = np.min(np.linalg.norm(x[:, None, :2] - x[None, brow_idx, :2], axis=-1), axis=1)
    rigid *= 0.3 + 0.7 * smoothstep(d_brow / (0.25 * mouth_w))  # forehead near brows moves with them
    for side in ("left", "right"):
        rigid[g[f"{side}_eye_corners"]] = 1.0
        rigid[g[f"{side}_eyelid"]] = 0.0
    rigid[468:] = 0.0
    g["rigid"] = rigid.astype(np.float32)
    return regions, g


# ----------------------------------------------------------------------------- main


def neutral_mask(aligned: np.ndarray, angles: np.ndarray, g_lips: tuple, eyes: tuple) -> np.ndarray:
    """Frames with the mouth closed, eyes open, mouth at rest width, and near-frontal."""
    scale = np.linalg.norm(aligned[:, 33] - aligned[:, 263], axis=1)  # outer eye corners
    mouth_gap = np.linalg.norm(aligned[:, 13] - aligned[:, 14], axis=1) / scale
    mouth_w = np.linalg.norm(aligned[:, 61] - aligned[:, 291], axis=1) / scale
    eye_open = (
        np.linalg.norm(aligned[:, 159] - aligned[:, 145], axis=1)
        / np.linalg.norm(aligned[:, 33] - aligned[:, 133], axis=1)
        + np.linalg.norm(aligned[:, 386] - aligned[:, 374], axis=1)
        / np.linalg.norm(aligned[:, 263] - aligned[:, 362], axis=1)
    ) / 2
    med_w, sd_w = np.median(mouth_w), np.std(mouth_w)
    keep = (
        (angles < 15)
        & (mouth_gap < max(0.03, np.percentile(mouth_gap, 30)))
        & (eye_open > np.percentile(eye_open, 25))
        & (np.abs(mouth_w - med_w) < 0.75 * sd_w)
    )
    return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--per-clip", type=int, default=40, help="frames sampled per train clip")
    ap.add_argument("--max-side", type=int, default=640, help="downscale larger frames before the mesh")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from mediapipe.python.solutions import face_mesh_connections as c

    t0 = time.time()
    shapes, n_clips = sample_landmarks(args.data, args.per_clip, args.max_side)
    if len(shapes) < 50:
        raise SystemExit(f"only {len(shapes)} faces found; is {args.data} the data folder?")
    shapes_a = np.stack([normalise(s) for s in shapes])
    # stable points for alignment: nose and eye corners and the upper face (no lips/jaw/lids)
    stable = np.zeros(478)
    stable[sorted({v for e in c.FACEMESH_NOSE for v in e})] = 1.0
    stable[
        [33, 133, 263, 362, 10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 234, 454, 127, 356, 21, 251, 54, 284]
    ] = 1.0
    aligned, angles = procrustes(shapes_a, stable)
    keep = neutral_mask(aligned, angles, (), ())
    print(f"{len(shapes)} faces from {n_clips} clips; {keep.sum()} near-neutral frames kept")
    mean = normalise(aligned[keep].mean(0))
    (oval,) = loops_of(c.FACEMESH_FACE_OVAL)
    verts, _pairs = orient_frontal(mean, oval)
    tri = triangles_from_edges(edges_of(c.FACEMESH_TESSELATION), verts)
    # iris discs: centre + ring, 4 triangles each, so the flow can splat the irises too
    iris_tris = []
    for ring in (c.FACEMESH_RIGHT_IRIS, c.FACEMESH_LEFT_IRIS):
        (loop,) = loops_of(ring)
        centre = min(loop) - 1
        iris_tris += [(centre, loop[k], loop[(k + 1) % 4]) for k in range(4)]
    iris_tris = np.array(iris_tris)
    for k, t in enumerate(iris_tris):
        p = verts[t]
        if np.cross(p[1] - p[0], p[2] - p[0])[2] > 0:
            iris_tris[k] = t[::-1]
    tri = np.concatenate([tri, iris_tris])
    regions, groups = build_groups(verts, tri)
    elapsed = time.time() - t0
    meta = {
        "meta_clips": np.int32(n_clips),
        "meta_frames": np.int32(len(shapes)),
        "meta_neutral_frames": np.int32(keep.sum()),
        "meta_date": np.str_(datetime.date.today().isoformat()),
        "meta_source": np.str_("mean of Procrustes-aligned near-neutral mediapipe meshes of the train clips"),
        "meta_build_seconds": np.float32(elapsed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        vertices=verts.astype(np.float32),
        triangles=tri.astype(np.int32),
        regions=regions.astype(np.int8),
        mirror=_pairs.astype(np.int32),
        **{f"group_{k}": v for k, v in groups.items()},
        **meta,
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KB): {len(tri)} triangles, {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
