"""Semantics of the 3D flow (torch path) on synthetic scenes, and the scene builder on a real face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rt_portrait.flow import (
    FlowBackendError,
    FlowConfig,
    FlowFields,
    PointCloud,
    Region,
    compute_flow,
    source_background_visibility,
    source_visibility,
)

R = 64


def plane(x0: float, y0: float, x1: float, y1: float, z: float, spacing: float, label: Region) -> PointCloud:
    """A fronto-parallel rectangle of points (normals toward the camera)."""
    xs = torch.arange(x0, x1 + 1e-6, spacing)
    ys = torch.arange(y0, y1 + 1e-6, spacing)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    xyz = torch.stack([gx.flatten(), gy.flatten(), torch.full((gx.numel(),), float(z))], 1).float()
    nrm = torch.tensor([[0.0, 0.0, -1.0]]).expand(xyz.shape[0], 3).contiguous()
    lab = torch.full((xyz.shape[0],), int(label), dtype=torch.int32)
    return PointCloud(xyz.contiguous(), nrm, lab)


def cat(*clouds: PointCloud) -> PointCloud:
    return PointCloud(
        torch.cat([c.xyz for c in clouds]),
        torch.cat([c.normal for c in clouds]),
        torch.cat([c.label for c in clouds]),
    )


def moved(c: PointCloud, dx: float, dy: float, dz: float = 0.0) -> PointCloud:
    return PointCloud((c.xyz + torch.tensor([dx, dy, dz])).contiguous(), c.normal, c.label)


def scene() -> tuple[PointCloud, PointCloud, PointCloud]:
    background = plane(0.5, 0.5, R - 0.5, R - 0.5, 200.0, 1.0, Region.BACKGROUND)
    face = plane(20.0, 16.0, 44.0, 48.0, 50.0, 1.0, Region.SKIN)
    return cat(face, background), face, background


CFG = FlowConfig(size=R, backend="torch")


def test_identity_motion_gives_zero_flow_and_full_visibility() -> None:
    cloud, _, _ = scene()
    f = compute_flow(cloud, cloud, CFG)
    assert f.flow.shape == (2, R, R) and f.visibility.shape == (1, R, R) and f.depth.shape == (1, R, R)
    assert f.normal.shape == (3, R, R) and f.labels.shape == (R, R) and f.labels.dtype == torch.int64
    assert f.encoding.shape == (4 * CFG.k, R, R)
    assert float(f.flow.abs().max()) == 0.0
    # every pixel covered and every point visible in the source; only the silhouette, where
    # the front surface has candidates on one side only, has a softer coverage
    assert float(f.visibility.min()) > 0.5 and float(f.visibility.max()) <= 1.0
    edge = torch.zeros(R, R, dtype=torch.bool)
    edge[13:52, 17:48] = True
    edge[19:46, 23:42] = False
    assert float(f.visibility[0][~edge].min()) > 0.95
    assert float(f.encoding.view(CFG.k, 4, R, R)[:, :2].abs().max()) == 0.0


def test_translation_gives_constant_backward_flow_inside_the_object() -> None:
    cloud, face, background = scene()
    target = cat(moved(face, 5.0, -3.0), background)
    f = compute_flow(target, cloud, CFG)
    inside = f.labels == int(Region.SKIN)
    assert inside.sum() > 400
    # backward flow: the source pixel is p + flow = p - (dx, dy)
    assert torch.allclose(f.flow[0][inside], torch.full_like(f.flow[0][inside], -5.0), atol=1e-5)
    assert torch.allclose(f.flow[1][inside], torch.full_like(f.flow[1][inside], 3.0), atol=1e-5)
    enc = f.encoding.view(CFG.k, 4, R, R)
    assert torch.allclose(enc[0, 0][inside], torch.full_like(enc[0, 0][inside], -5.0 / R), atol=1e-6)
    # far from the object the background stays put
    assert float(f.flow[:, :5, :5].abs().max()) == 0.0


def test_front_object_wins_the_depth_test() -> None:
    cloud, _, _ = scene()
    f = compute_flow(cloud, cloud, CFG)
    centre = f.labels[25:40, 25:40]
    assert bool((centre == int(Region.SKIN)).all())
    assert torch.allclose(f.depth[0, 25:40, 25:40], torch.full((15, 15), 50.0))
    assert bool((f.labels[:10, :] == int(Region.BACKGROUND)).all())
    assert torch.allclose(f.depth[0, :10, :], torch.full((10, R), 200.0))
    assert torch.allclose(f.normal[:, 30, 30], torch.tensor([0.0, 0.0, -1.0]))
    # the object's depth offsets in the encoding are all ~0 (one surface, within tolerance)
    assert float(f.encoding.view(CFG.k, 4, R, R)[:, 2, 25:40, 25:40].abs().max()) < 1e-5


def test_points_hidden_in_the_source_get_low_visibility() -> None:
    _cloud, face, background = scene()
    lid = plane(20.0, 16.0, 44.0, 30.0, 20.0, 1.5, Region.EYES)  # covers the top of the face
    # source: the lid is in front; target: it has moved far off the grid
    source = cat(face, background, lid)
    target = cat(face, background, moved(lid, 300.0, 0.0))
    f = compute_flow(target, source, CFG)
    revealed = f.visibility[0, 18:28, 24:40]
    still_visible = f.visibility[0, 36:46, 24:40]
    assert float(revealed.max()) < 0.1
    assert float(still_visible.min()) > 0.9
    assert bool((f.labels[18:28, 24:40] == int(Region.SKIN)).all())


def test_encoding_sorted_nearest_first_and_normalised() -> None:
    g = torch.Generator().manual_seed(0)
    n = 900
    xyz = torch.cat([torch.rand(n, 2, generator=g) * R, torch.full((n, 1), 10.0)], 1).contiguous()
    nrm = torch.tensor([[0.0, 0.0, -1.0]]).expand(n, 3).contiguous()
    cloud = PointCloud(xyz, nrm, torch.ones(n, dtype=torch.int32))
    src = PointCloud((xyz + torch.randn(n, 3, generator=g)).contiguous(), nrm, cloud.label)
    f = compute_flow(cloud, src, CFG)
    w = f.encoding.view(CFG.k, 4, R, R)[:, 3]  # (K, R, R) normalised weights, nearest first
    assert bool((w[:-1] >= w[1:] - 1e-7).all())
    assert float(w.sum(0).max()) <= 1.0 + 1e-5
    has = w[0] > 0
    assert bool(has.any()) and bool((~has).any())  # some pixels covered, some not (sparse cloud)
    # pixels without candidates are the static background (module doc, step 6)
    bg_vis = source_background_visibility(src, CFG)
    assert torch.equal(f.visibility[0][~has], bg_vis[~has])
    assert float(f.flow[:, ~has].abs().max()) == 0.0
    assert bool((f.labels[~has] == int(Region.BACKGROUND)).all())
    assert bool((f.depth[0][~has] == R).all())
    assert torch.equal(
        f.normal[:, ~has], torch.tensor([0.0, 0.0, -1.0])[:, None].expand(3, int((~has).sum()))
    )
    missing = w == 0
    assert float(f.encoding.view(CFG.k, 4, R, R).permute(1, 0, 2, 3)[:, missing].abs().max()) == 0.0


def test_precomputed_source_visibility_gives_the_same_fields() -> None:
    cloud, face, background = scene()
    target = cat(moved(face, 2.0, 1.0), background)
    vis = source_visibility(cloud, CFG)
    assert vis.shape == (cloud.xyz.shape[0],) and set(vis.unique().tolist()) <= {0.0, 1.0}
    a = compute_flow(target, cloud, CFG)
    b = compute_flow(target, cloud, CFG, source_visible=vis)
    assert torch.equal(a.visibility, b.visibility) and torch.equal(a.flow, b.flow)


def test_background_is_analytic_and_marks_what_the_source_head_covered() -> None:
    _, face, _ = scene()
    target = moved(face, 12.0, 0.0)  # no background points at all: it is implicit
    f = compute_flow(target, face, CFG)
    bg_vis = source_background_visibility(face, CFG)
    assert bg_vis.shape == (R, R) and set(bg_vis.unique().tolist()) == {0.0, 1.0}
    assert float(bg_vis[30, 30]) == 0.0 and float(bg_vis[2, 2]) == 1.0  # under the source face / far from it
    bg = f.labels == int(Region.BACKGROUND)
    # left of the moved face: background the source face covered -> revealed, not visible
    assert bool(bg[30, 24]) and float(f.visibility[0, 30, 24]) == 0.0
    assert bool(bg[2, 2]) and float(f.visibility[0, 2, 2]) == 1.0
    assert float(f.flow[:, bg].abs().max()) == 0.0 and bool((f.depth[0][bg] == R).all())
    assert float(f.encoding[:, bg].abs().max()) == 0.0
    # any head candidate wins over the background: the moved face keeps its own fields
    assert bool((f.labels[20:45, 36:54] == int(Region.SKIN)).all())
    b = compute_flow(target, face, CFG, source_background=bg_vis)
    assert torch.equal(b.visibility, f.visibility)
    with pytest.raises(ValueError, match="source_background"):
        compute_flow(target, face, CFG, source_background=bg_vis[:-1])


def test_back_facing_points_are_culled() -> None:
    cloud, face, _background = scene()
    back = PointCloud(face.xyz - torch.tensor([0.0, 0.0, 10.0]), -face.normal, face.label.clone().fill_(2))
    f = compute_flow(cat(cloud, back), cat(cloud, back), CFG)
    assert not bool((f.labels == 2).any())  # in front of the face, but facing away


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t, s: (t, PointCloud(s.xyz[:-1], s.normal[:-1], s.label[:-1])), "index-aligned"),
        (lambda t, s: (PointCloud(t.xyz.double(), t.normal, t.label), s), "float32"),
        (lambda t, s: (PointCloud(t.xyz, t.normal, t.label.long()), s), "int32"),
        (lambda t, s: (PointCloud(t.xyz, t.normal[:, :2], t.label), s), "normal"),
        (lambda t, s: (PointCloud(t.xyz[:, :2], t.normal, t.label), s), r"\(N, 3\)"),
        (
            lambda t, s: (
                PointCloud(t.xyz.clone().index_fill_(0, torch.tensor([3]), float("nan")), t.normal, t.label),
                s,
            ),
            "non-finite",
        ),
        (
            lambda t, s: (
                PointCloud(t.xyz.clone().index_fill_(0, torch.tensor([0]), float("inf")), t.normal, t.label),
                s,
            ),
            "non-finite",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message: str) -> None:
    cloud, _, _ = scene()
    target, source = mutate(cloud, cloud)
    with pytest.raises(ValueError, match=message):
        compute_flow(target, source, CFG)


def test_bad_config_raises() -> None:
    cloud, _, _ = scene()
    with pytest.raises(ValueError, match="backend"):
        compute_flow(cloud, cloud, FlowConfig(size=R, backend="cuda"))
    with pytest.raises(ValueError, match="radius"):
        compute_flow(cloud, cloud, FlowConfig(size=R, radius=0.1, backend="torch"))
    with pytest.raises(ValueError, match="k must"):
        compute_flow(cloud, cloud, FlowConfig(size=R, k=0, backend="torch"))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cloud, _, _ = scene()
    with pytest.raises(FlowBackendError, match=r"TRITON_INTERPRET|triton is not installed"):
        compute_flow(cloud, cloud, FlowConfig(size=R, backend="triton"))


def test_auto_backend_on_cpu_uses_the_torch_twin() -> None:
    cloud, face, background = scene()
    target = cat(moved(face, 1.0, 2.0), background)
    a = compute_flow(target, cloud, FlowConfig(size=R, backend="auto"))
    b = compute_flow(target, cloud, CFG)
    assert torch.equal(a.flow, b.flow) and torch.equal(a.encoding, b.encoding)


# --- the scene builder on a real face -------------------------------------------------------


@pytest.fixture(scope="module")
def real_scene(astronaut: np.ndarray):
    from rt_portrait.compose import choose_window
    from rt_portrait.flow.scene import SceneBuilder
    from rt_portrait.head import build_shell, fit_head, load_template
    from rt_portrait.tracking import track_image

    track = track_image(astronaut)
    assert track.found
    tpl = load_template()
    state = fit_head(track.landmarks, astronaut.shape[:2], template=tpl)
    window = choose_window(track.landmarks, astronaut.shape[:2], 256)
    builder = SceneBuilder(
        tpl,
        build_shell(tpl),
        window,
        astronaut.shape[:2],
        head_scale=state.pose.scale,
        anchor_pose=state.pose,
    )
    return tpl, state, builder


def test_scene_cloud_is_index_aligned_and_labelled(real_scene) -> None:
    _tpl, state, builder = real_scene
    cloud = builder(state)
    n = builder.num_points
    assert cloud.xyz.shape == (n, 3) and cloud.normal.shape == (n, 3) and cloud.label.shape == (n,)
    assert cloud.xyz.dtype == torch.float32 and cloud.label.dtype == torch.int32
    assert torch.allclose(cloud.normal.norm(dim=1), torch.ones(n), atol=1e-4)
    present = set(cloud.label.unique().tolist())
    for region in (
        Region.SKIN,
        Region.HEAD_SHELL,
        Region.EYES,
        Region.IRIS,
        Region.LIPS,
        Region.MOUTH_INTERIOR,
    ):
        assert int(region) in present
    assert int(Region.BACKGROUND) not in present  # the background is analytic (no points)
    # the face points look at the camera on a frontal portrait
    face = cloud.label == int(Region.SKIN)
    assert float((cloud.normal[face, 2] < 0).float().mean()) > 0.8


def test_the_mirrored_cloud_puts_each_face_point_at_its_partner(real_scene) -> None:
    """A frontal template head: every face point of the mirrored cloud is its own point
    reflected through the face's midline, still looking at the camera; the shell stays."""
    from dataclasses import replace as dc_replace

    from rt_portrait.head.types import Pose

    tpl, state, builder = real_scene
    frontal = dc_replace(
        state,
        pose=Pose(rotation=np.eye(3), translation=state.pose.translation, scale=state.pose.scale),
        identity=tpl.vertices.copy(),
        expression=np.zeros_like(tpl.vertices),
    )
    cloud, mirrored = builder(frontal), builder.build_mirrored(frontal, tpl.mirror)
    nf = builder.counts["face"]
    mid = (float(state.pose.translation[0]) - builder.window.x0) * builder.window.scale
    reflected = cloud.xyz[:nf].clone()
    reflected[:, 0] = 2 * mid - reflected[:, 0]
    assert float((mirrored.xyz[:nf] - reflected).abs().max()) < 1e-3
    assert torch.allclose(mirrored.normal[:nf, 2], cloud.normal[:nf, 2], atol=1e-4)  # turned back out
    assert torch.equal(mirrored.xyz[-100:], cloud.xyz[-100:]) and torch.equal(mirrored.label, cloud.label)
    with pytest.raises(ValueError, match="mirror must be"):
        builder.build_mirrored(frontal, tpl.mirror[:10])


def test_scene_flow_on_a_real_face(real_scene) -> None:
    from rt_portrait.head import apply_edits
    from rt_portrait.head.types import Edits

    tpl, state, builder = real_scene
    source = builder(state)
    still = compute_flow(source, source, FlowConfig(size=256, backend="torch"))
    assert float(still.flow.abs().max()) == 0.0
    face = still.region_mask(Region.SKIN)
    assert face.sum() > 1000 and float(still.visibility[0][face].mean()) > 0.9
    assert not bool(still.region_mask(Region.MOUTH_INTERIOR).any())  # closed mouth: hidden
    target = builder(apply_edits(state, Edits(jaw_open=1.0), tpl))
    f = compute_flow(target, source, FlowConfig(size=256, backend="torch"))
    mouth = f.region_mask(Region.MOUTH_INTERIOR)
    assert mouth.sum() > 20  # the opened mouth shows its interior ...
    assert float(f.visibility[0][mouth].mean()) < 0.3  # ... which the source does not show
    rows = torch.arange(256)[:, None].expand(256, 256)
    below = rows > rows[mouth].float().max() + 2
    chin = f.region_mask(Region.SKIN, Region.LIPS) & below
    assert chin.sum() > 20
    assert float(f.flow[1][chin].median()) < -0.5  # the jaw moved down: its source lies above


def test_neck_blends_from_rigid_to_static(real_scene) -> None:
    """A head turn moves the upper neck with the head but leaves the lowest neck (clothes) put."""
    from rt_portrait.head import apply_edits
    from rt_portrait.head.types import Edits

    tpl, state, builder = real_scene
    source = builder(state)
    shell = (source.label == int(Region.HEAD_SHELL)).nonzero().squeeze(1)
    w = torch.from_numpy(builder.shell_weight)
    assert w.shape == shell.shape and float(w.max()) == 1.0 and float(w.min()) < 0.02
    for edits in (Edits(yaw=20.0), Edits(pitch=12.0), Edits(roll=15.0)):
        target = builder(apply_edits(state, edits, tpl))
        move = (target.xyz[shell, :2] - source.xyz[shell, :2]).norm(dim=1)
        low, rigid = w < 0.02, w == 1.0
        assert int(low.sum()) > 10 and int(rigid.sum()) > 100
        assert float(move[low].max()) < 0.1 * float(move[rigid].median())  # static at the bottom
        upper = (w > 0.9) & (w < 1.0)
        assert float(move[upper].median()) > 0.5  # the upper neck follows the head (px)
    # without an anchor pose the whole shell is rigid
    from rt_portrait.flow.scene import SceneBuilder
    from rt_portrait.head import build_shell

    rigid = SceneBuilder(
        tpl, build_shell(tpl), builder.window, builder.image_size, head_scale=state.pose.scale
    )
    assert bool((rigid.shell_weight == 1.0).all())


def test_the_skin_under_the_chin_follows_an_opening_jaw(real_scene) -> None:
    """An opening jaw drags the shell just under the chin along (the skin stretches), fading to
    none a quarter face height away; with ``skin_follow=0`` the shell stays rigid, and the
    neck's top rows, which sample the source's jaw shadow, showed as a dotted band under the
    lowered chin."""
    from dataclasses import replace

    from rt_portrait.flow.scene import SceneBuilder, SceneConfig
    from rt_portrait.head import apply_edits, build_shell
    from rt_portrait.head.types import Edits

    tpl, state, builder = real_scene
    rigid = SceneBuilder(
        tpl,
        build_shell(tpl),
        builder.window,
        builder.image_size,
        config=replace(builder.config, skin_follow=0.0),
        head_scale=state.pose.scale,
        anchor_pose=state.pose,
    )
    opened = apply_edits(state, Edits(jaw_open=1.0), tpl)
    shell = (builder(state).label == int(Region.HEAD_SHELL)).nonzero().squeeze(1)
    drop = builder(opened).xyz[shell, 1] - builder(state).xyz[shell, 1]
    rigid_drop = rigid(opened).xyz[shell, 1] - rigid(state).xyz[shell, 1]
    assert float(rigid_drop.abs().max()) < 1e-3  # rigid: an expression moves no shell point
    face = (builder(state).label == int(Region.SKIN)).nonzero().squeeze(1)
    chin_drop = float((builder(opened).xyz[face, 1] - builder(state).xyz[face, 1]).max())
    assert chin_drop > 3.0  # the chin moved down (working px)
    assert float(drop.max()) > 0.5 * chin_drop  # the skin right under it followed
    assert float((drop.abs() > 1e-3).float().mean()) < 0.3  # only near the face oval

    # under the lowered chin the flow no longer switches between the chin's (up by the drop)
    # and the rigid neck's (none) from pixel to pixel: the dotted band
    def roughness(b: SceneBuilder) -> float:
        f = compute_flow(b(opened), b(state), FlowConfig(size=256, backend="torch"))
        skin = f.region_mask(Region.SKIN, Region.LIPS)
        ys, xs = skin.nonzero(as_tuple=True)
        bottom, c0, c1 = int(ys.max()), int(xs.float().quantile(0.3)), int(xs.float().quantile(0.7))
        band = f.flow[1, bottom - 12 : bottom + 6, c0:c1]
        return float((band[1:] - band[:-1]).abs().mean() + (band[:, 1:] - band[:, :-1]).abs().mean())

    assert roughness(builder) < 0.85 * roughness(rigid)
    with pytest.raises(ValueError, match="skin_follow"):
        SceneBuilder(
            tpl, build_shell(tpl), builder.window, builder.image_size, config=SceneConfig(skin_follow=-1)
        )


def test_chunked_twins_match_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large clouds take the memory-bounded chunked twins; they must give the same fields."""
    from rt_portrait.kernels import splat, splat_common, zbuffer

    cloud, face, background = scene()
    target = cat(moved(face, 3.0, 1.0, -2.0), background)
    fused = compute_flow(target, cloud, CFG)
    for mod in (splat, splat_common, zbuffer):
        monkeypatch.setattr(mod, "MAX_PAIRS", 997)
    chunked = compute_flow(target, cloud, CFG)
    assert torch.equal(fused.labels, chunked.labels)
    for name in ("flow", "visibility", "depth", "normal", "encoding"):
        assert torch.allclose(getattr(fused, name), getattr(chunked, name), atol=1e-5), name


def test_shell_seen_through_gaps_of_the_mouth_fan_is_mouth() -> None:
    from rt_portrait.core.types import Region
    from rt_portrait.flow.dispatch import close_mouth_gaps

    shell, skin, lips, mouth = (
        int(r) for r in (Region.HEAD_SHELL, Region.SKIN, Region.LIPS, Region.MOUTH_INTERIOR)
    )
    labels = torch.full((16, 24), skin)
    labels[:, :3] = shell  # the side of the head: stays shell
    labels[4:12, 6:18] = lips
    labels[6:10, 8:16] = mouth
    labels[7, 10] = labels[8, 13] = shell  # gaps inside the mouth
    labels[6, 15] = shell  # a gap on the mouth's edge (lips around it)
    labels[2, 4] = shell  # a shell pixel near the lips, not the mouth: stays
    out = close_mouth_gaps(labels)
    assert int(out[7, 10]) == int(out[8, 13]) == int(out[6, 15]) == mouth
    assert int(out[2, 4]) == shell and bool((out[:, :3] == shell).all())
    changed = out != labels
    assert int(changed.sum()) == 3
    no_mouth = labels.clone()
    no_mouth[no_mouth == mouth] = lips
    assert torch.equal(close_mouth_gaps(no_mouth), no_mouth)


def test_a_wide_open_mouth_shows_no_head_shell(grace_hopper) -> None:
    """Regression: at jaw_open 1 on a closed-mouth portrait the mouth fan left gaps where the
    head shell's front showed, and the warp fill painted them as dark shell dots."""
    from rt_portrait.core.assets import default_portrait_landmarks
    from rt_portrait.core.fill import nonzero_box
    from rt_portrait.core.types import Region
    from rt_portrait.head.types import Edits
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking.types import TrackResult

    track = TrackResult.from_landmarks(default_portrait_landmarks("grace_hopper"), grace_hopper.shape[:2])
    animator = Animator(grace_hopper, AnimatorConfig(size=256, generator="warp"), source_track=track)
    labels = animator.render_edits(Edits(jaw_open=1.0)).fields.labels
    box = nonzero_box(labels == int(Region.MOUTH_INTERIOR))
    assert box is not None
    v0, v1, u0, u1 = box
    inner = labels[v0 + 1 : v1 - 1, u0 + 1 : u1 - 1]
    assert inner.numel() > 20 and not bool((inner == int(Region.HEAD_SHELL)).any())


def _head_fields(flow: torch.Tensor, radius: float = 30.0) -> FlowFields:
    """A disc-shaped head in the middle of a 256² grid with the given (2, R, R) flow."""
    r = flow.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(r) + 0.5, torch.arange(r) + 0.5, indexing="ij")
    inside = (yy - r / 2) ** 2 + (xx - r / 2) ** 2 <= radius**2
    labels = torch.where(inside, int(Region.SKIN), int(Region.BACKGROUND)).long()
    one = torch.ones(1, r, r)
    return FlowFields(
        flow=flow * inside,
        visibility=one,
        depth=one,
        normal=one.repeat(3, 1, 1),
        labels=labels,
        encoding=torch.zeros(16, r, r),
    )


def test_the_background_stretches_with_a_moving_head_and_stays_put_far_away() -> None:
    from rt_portrait.flow.elastic import elastic_background

    r = 256
    flow = torch.zeros(2, r, r)
    flow[0] = 12.0
    fields = _head_fields(flow)
    out = elastic_background(fields)
    head = fields.labels > 0
    assert torch.equal(out[:, head], fields.flow[:, head])  # the head keeps its own flow
    assert float(out[0, r // 2, r // 2 + 36]) > 4.0  # just outside the head: moves with it
    assert float(out[:, :8, :8].abs().max()) < 0.5  # the far corner stays


def test_a_face_turning_in_place_does_not_stretch_the_far_background() -> None:
    """The face's pixels move far (a turn), its outline does not: the background a few
    head radii away stays where it is."""
    from rt_portrait.flow.elastic import elastic_background

    r = 256
    yy, xx = torch.meshgrid(torch.arange(r) + 0.5, torch.arange(r) + 0.5, indexing="ij")
    dist = ((yy - r / 2) ** 2 + (xx - r / 2) ** 2).sqrt()
    flow = torch.zeros(2, r, r)
    flow[0] = 60.0 * (1 - dist / 26).clamp(0, 1)  # 60 px at the centre, none from 4 px inside the rim
    out = elastic_background(_head_fields(flow))
    far = dist > 30 + 40
    # (before session 17 it all moved by about 2 px: the reach followed the face's 60)
    assert float(out[:, far].abs().max()) < 0.5, float(out[:, far].abs().max())


def test_background_that_samples_the_old_head_is_unseen() -> None:
    """A head that moved 40 px right: after the elastic stretch, the wall beside its new
    outline samples where the old head was. Those pixels are unseen (the generator fills
    them); the wall that samples the wall, and a band of ``keep`` px along the new outline,
    keep their visibility."""
    from rt_portrait.flow.elastic import background_seen, elastic_background

    r = 256
    flow = torch.zeros(2, r, r)
    flow[0] = -40.0  # each head pixel samples 40 px to its left: the head moved right
    fields = _head_fields(flow)
    fields = FlowFields(**{**fields.__dict__, "flow": elastic_background(fields)})
    yy, xx = torch.meshgrid(torch.arange(r) + 0.5, torch.arange(r) + 0.5, indexing="ij")
    old_head = (yy - r / 2) ** 2 + (xx - r / 2 + 40) ** 2 <= 30.0**2
    source_background = (~old_head).float()
    seen = background_seen(fields, source_background, keep=2)[0]
    head = fields.labels > 0
    assert torch.equal(seen[head], fields.visibility[0, head])  # the head is left alone
    dist = ((yy - r / 2) ** 2 + (xx - r / 2) ** 2).sqrt()
    u = (xx + fields.flow[0]).floor().long().clamp(0, r - 1)
    v = (yy + fields.flow[1]).floor().long().clamp(0, r - 1)
    on_old = old_head[v, u]
    beside = on_old & (dist > 30 + 3)
    assert int(beside.sum()) > 200  # the stretch does sample the old head there
    assert float(seen[beside].max()) == 0.0
    assert float(seen[~on_old & ~head].min()) == 1.0  # wall sampling wall
    band = on_old & (dist > 30.5) & (dist < 31.5)
    assert bool(band.any()) and float(seen[band].min()) == 1.0
    with pytest.raises(ValueError, match="keep"):
        background_seen(fields, source_background, keep=-1)
    with pytest.raises(ValueError, match="source_background"):
        background_seen(fields, source_background[:10])
