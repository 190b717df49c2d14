"""The learning-free generator's fills (rt_portrait.generator), on synthetic fields."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rt_portrait.core.fill import (
    dilate,
    erode,
    gaussian_blur,
    mirror_fill,
    nearest_seed,
    nearest_seed_jfa,
    push_pull_fill,
    source_area_ratio,
)
from rt_portrait.flow.types import FlowFields, Region
from rt_portrait.generator import GeneratorInput, WarpFillGenerator, iris_discs, label_irises
from rt_portrait.generator.diffusion import base_fill
from rt_portrait.head import load_template

R = 128


@pytest.mark.parametrize("radius", [0, 1, 3, 8])
def test_dilate_and_erode_are_the_square_max_and_min(radius: int) -> None:
    """The separable running maxima give exactly the square max-pool (and its min), at the
    grid's border too, where neither spreads what lies outside it."""
    import torch.nn.functional as F

    x = torch.rand(37, 53)
    k = 2 * radius + 1
    assert torch.equal(dilate(x, radius), F.max_pool2d(x[None, None], k, 1, radius)[0, 0])
    assert torch.equal(erode(x, radius), -F.max_pool2d(-x[None, None], k, 1, radius)[0, 0])
    with pytest.raises(ValueError, match="radius"):
        dilate(x, -1)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 4.0])
def test_gaussian_blur_on_the_cpu_is_the_depthwise_convolution(sigma: float) -> None:
    """The shifted-slice passes give the separable depthwise convolution they replaced (and
    still run elsewhere than on the CPU), replicate border and NaN spread included."""
    import torch.nn.functional as F

    x = torch.rand(2, 3, 37, 53)
    x[1, 2, 10:14, 20:30] = float("nan")  # the warp fill blurs a flow masked with NaN
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma * sigma))
    k = k / k.sum()
    rows = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3
    )
    want = F.conv2d(
        F.pad(rows, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3
    )
    got = gaussian_blur(x, sigma)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got.isnan().any())
    assert torch.allclose(got.nan_to_num(), want.nan_to_num(), atol=1e-6)


def _landmarks(shift: float = 0.0) -> torch.Tensor:
    """Template vertices placed on a 128 px grid (face ~80 px wide); irises moved by ``shift`` px."""
    tpl = load_template()
    v = torch.tensor(tpl.vertices, dtype=torch.float32) * 40.0 + torch.tensor([R / 2, R / 2, 0.0])
    for side in ("left_iris", "right_iris"):
        v[torch.tensor(tpl.group(side).astype("int64")), 0] += shift
    return v


def _fields(labels: torch.Tensor, flow: torch.Tensor) -> FlowFields:
    return FlowFields(
        flow=flow,
        visibility=torch.ones(1, R, R),
        depth=torch.zeros(1, R, R),
        normal=torch.zeros(3, R, R),
        labels=labels,
        encoding=torch.zeros(16, R, R),
    )


def test_label_irises_marks_the_discs_inside_the_openings() -> None:
    tpl = load_template()
    lm = _landmarks()
    labels = torch.full((R, R), int(Region.EYES), dtype=torch.int64)
    out = label_irises(labels, lm, tpl)
    iris = out == int(Region.IRIS)
    assert int(iris.sum()) > 10
    assert bool((iris <= iris_discs(lm, tpl, R)).all())  # only inside the discs
    assert bool((out[~iris] == int(Region.EYES)).all())  # nothing else changed


def test_a_moved_gaze_does_not_show_the_source_iris_twice() -> None:
    """Eye pixels that still sample the source iris after the iris moved get the eye's colours;
    the moved iris itself keeps the warp."""
    tpl = load_template()
    source_lm, target_lm = _landmarks(), _landmarks(shift=3.0)
    eye = torch.full((R, R), int(Region.EYES), dtype=torch.int64)
    source_labels = label_irises(eye, source_lm, tpl)
    source_iris = source_labels == int(Region.IRIS)
    warped = torch.full((3, R, R), 0.9)  # sclera
    warped[:, source_iris] = 0.2  # the identity flow shows the old iris where it was
    inputs = GeneratorInput(
        warped=warped,
        source=warped,
        fields=_fields(eye, torch.zeros(2, R, R)),
        history=None,
        source_labels=source_labels,
        landmarks=target_lm,
    )
    out = WarpFillGenerator()(inputs)
    target_iris = iris_discs(target_lm, tpl, R)
    stale = source_iris & ~target_iris
    assert int(stale.sum()) > 3
    assert float(out.alpha[0][stale].min()) == 1.0
    assert float(out.face[:, stale].mean()) > 0.6  # sclera-coloured now, not the old iris (0.2)
    assert float(out.alpha[0][target_iris].max()) == 0.0  # the moved iris keeps the warp


def test_nearest_seed_matches_jump_flooding() -> None:
    """SciPy's exact transform (the CPU path) and the jump flooding other devices run agree on
    the distance to the nearest seed, with and without vertical distances weighted."""
    gen = torch.Generator().manual_seed(0)
    for density in (0.002, 0.05, 0.4):
        seeds = torch.rand(96, 80, generator=gen) < density
        seeds[0, 0] = True
        yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(80.0), indexing="ij")
        for y_scale in (1.0, 2.0):
            exact, jfa = nearest_seed(seeds, y_scale), nearest_seed_jfa(seeds, y_scale)
            assert bool(seeds[exact[0].long(), exact[1].long()].all())  # every answer is a seed
            d_exact = (y_scale * (exact[0] - yy)) ** 2 + (exact[1] - xx) ** 2
            d_jfa = (y_scale * (jfa[0] - yy)) ** 2 + (jfa[1] - xx) ** 2
            assert float((d_jfa.sqrt() - d_exact.sqrt()).abs().max()) < 1.0
            assert float((d_jfa > d_exact + 1e-4).float().mean()) < 0.002  # near-ties at most


def test_mirror_fill_reflects_the_texture_beside_a_hole() -> None:
    """A hole to the right of a textured strip takes the strip mirrored through its edge, so it
    continues the texture (a push-pull average is flat there) and meets it without a step."""
    image = torch.zeros(3, 40, 40)
    image[:, :, :20] = torch.rand(3, 40, 20, generator=torch.Generator().manual_seed(1))
    donor = torch.zeros(40, 40, dtype=torch.bool)
    donor[:, :20] = True
    filled = mirror_fill(image, donor)
    assert filled is not None
    assert torch.equal(filled[:, :, :20], image[:, :, :20])  # donors keep their pixels
    for d in range(1, 20):  # column 19 + d reads column 19 - d
        assert torch.equal(filled[:, :, 19 + d], image[:, :, 19 - d])
    flat = push_pull_fill(image, donor[None].float())
    assert float(filled[:, :, 25:].std()) > 3 * float(flat[:, :, 25:].std())
    assert mirror_fill(image, torch.zeros(40, 40, dtype=torch.bool)) is None


def test_mirror_fill_prefers_sideways_donors_with_a_vertical_scale() -> None:
    """Below a hole lies one kind of pixel, beside it another: counting vertical distances
    twice, the hole reflects what lies beside it (a background beside a turned head, not the
    body below it)."""
    image = torch.zeros(1, 30, 30)
    donor = torch.zeros(30, 30, dtype=torch.bool)
    donor[:, :10] = True  # beside: value 1
    image[:, :, :10] = 1.0
    donor[20:, :] = True  # below: value 0
    hole = (slice(None), slice(12, 17), slice(10, 17))  # 1-7 px beside the side donors, 4-8 above
    iso = mirror_fill(image, donor, 1.0)
    side = mirror_fill(image, donor, 2.0)
    assert iso is not None and side is not None
    assert bool((side[hole] == 1.0).all())
    assert float(iso[hole].min()) == 0.0  # isotropic, the body below reaches some of it


def test_a_revealed_background_continues_the_texture_beside_it() -> None:
    """Background pixels that sample what hid them (the face, before a head turn) are filled
    with the visible background's texture beside them, not a flat average, and the shirt
    below (also background) does not leak in."""
    labels = torch.full((R, R), int(Region.BACKGROUND), dtype=torch.int64)
    labels[:, 70:] = int(Region.SKIN)  # the face, turned away to the right
    source_labels = torch.full((R, R), int(Region.SKIN), dtype=torch.int64)
    source_labels[:, :40] = int(Region.BACKGROUND)
    stripes = 0.5 + 0.4 * torch.sign(torch.sin(torch.arange(R, dtype=torch.float32)))[:, None].expand(R, R)
    warped = torch.full((3, R, R), 0.8)  # the face's skin, wherever it is sampled
    warped[:, :, :40] = stripes[:, :40]  # a striped wall beside the hole
    warped[:, 100:, :70] = 0.05  # a dark shirt below
    visibility = torch.ones(1, R, R)
    visibility[0, :, 40:70] = 0.0  # revealed: the face hid this wall in the source
    fields = replace(_fields(labels, torch.zeros(2, R, R)), visibility=visibility)
    inputs = GeneratorInput(
        warped=warped, source=warped, fields=fields, history=None, source_labels=source_labels
    )
    out = WarpFillGenerator()(inputs)
    hole = out.face[:, 20:90, 45:65]
    assert float(out.alpha[0, 20:90, 45:65].min()) == 1.0
    assert float(hole.std(dim=1).mean()) > 0.2  # stripes run on (push-pull: flat)
    assert abs(float(hole.mean()) - float(stripes[20:90].mean())) < 0.1  # no skin, no shirt
    flat = WarpFillGenerator(mirror=False)(inputs).face[:, 20:90, 45:65]
    assert float(flat.std(dim=1).mean()) < 0.1


def test_source_area_ratio_of_a_scaling_and_a_fold() -> None:
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    squeeze = torch.stack((0.5 * xs - xs, 0.25 * ys - ys))  # source = (x / 2, y / 4)
    assert torch.allclose(source_area_ratio(squeeze), torch.full((16, 16), 0.125))
    mirror = torch.stack((16 - xs - xs, torch.zeros_like(ys)))  # source = (16 - x, y): folded
    assert torch.allclose(source_area_ratio(mirror), torch.full((16, 16), -1.0))
    with pytest.raises(ValueError, match=r"\(2, R, R\)"):
        source_area_ratio(torch.zeros(3, 16, 16))


def _side_of_head(turned: bool = True) -> GeneratorInput:
    """Hair (shell) at columns 0-70, the face beyond. ``turned``: the head has turned to the
    right since the source, so hair columns 40-70 are visible in the source only as the sliver
    of the face's edge at source columns 62-66 (seen edge-on there), stretched over 30 columns.
    Else the source is in the target's pose and the hair's last 2 columns, the outline's
    anti-aliased band, sample the face's edge 3 px further in."""
    labels = torch.full((R, R), int(Region.HEAD_SHELL), dtype=torch.int64)
    labels[:, 70:] = int(Region.SKIN)
    source_labels = labels.clone()
    xs = torch.arange(R, dtype=torch.float32) + 0.5
    flow = torch.zeros(2, R, R)
    if turned:
        source_labels[:, 60:] = int(Region.SKIN)
        flow[0, :, 40:70] = (62 + (xs[40:70] - 40) * 4 / 30 - xs[40:70])[None]
    else:
        flow[0, :, 68:70] = 3.0
    hair = 0.3 + 0.2 * torch.sign(torch.sin(0.9 * torch.arange(R, dtype=torch.float32)))[:, None].expand(R, R)
    warped = torch.full((3, R, R), 0.8)  # the face's skin, wherever it is sampled
    warped[:, :, :40] = hair[:, :40]
    return GeneratorInput(
        warped=warped, source=warped, fields=_fields(labels, flow), history=None, source_labels=source_labels
    )


def test_a_stretched_sliver_of_face_on_the_side_of_the_head_is_refilled_with_hair() -> None:
    inputs = _side_of_head()
    assert float(source_area_ratio(inputs.fields.flow)[:, 45:65].max()) < 0.2
    out = WarpFillGenerator()(inputs)
    side = out.face[:, 10:118, 42:68]
    assert float(out.alpha[0, 10:118, 42:68].min()) == 1.0
    assert float(side.mean()) < 0.5  # hair-dark, not the skin's 0.8
    assert float(side.std(dim=1).mean()) > 0.1  # the hair's strands run on
    assert torch.equal(out.face[:, :, 70:], inputs.warped[:, :, 70:])  # the face itself is kept
    # the fill the shipped weights were trained on keeps the stretched skin, and the face's
    # badly shown half (no mirror side)
    before = base_fill("warp_mirror", "teeth")
    assert before is not None and not before.mirror_face
    kept = before(inputs)
    assert torch.equal(kept.face, inputs.warped) and float(kept.alpha.max()) == 0.0


def test_hair_that_shows_the_face_beside_it_is_kept() -> None:
    """Without stretch (a head still in the source's pose), hair pixels right at the face's
    outline may sample its edge: that anti-aliased band stays as the warp shows it."""
    inputs = _side_of_head(turned=False)
    assert bool((WarpFillGenerator._sampled_labels(inputs, (0, R, 68, 70)) == int(Region.SKIN)).all())
    out = WarpFillGenerator()(inputs)
    assert float(out.alpha.max()) == 0.0 and torch.equal(out.face, inputs.warped)
