"""Mouth coordinates and the mouth-interior prior (rt_portrait.generator.mouth) and its use as a fill."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from rt_portrait.generator.mouth import (
    fit_opening,
    lip_depths,
    lip_points,
    load_mouth_prior,
    mouth_frame,
    mouth_points,
    mouth_uv,
    opening_coverage,
    tooth_boundaries,
    visible_opening,
)
from rt_portrait.head import load_template


def _open_mouth(opening: float = 0.3, tilt_deg: float = 12.0) -> np.ndarray:
    """Template landmarks in pixels with the inner lips pulled apart, rotated in the image."""
    tpl = load_template()
    pts = tpl.vertices[:, :2] * 100.0 + 200.0
    width = np.linalg.norm(
        pts[tpl.group("inner_mouth_corners")[0]] - pts[tpl.group("inner_mouth_corners")[1]]
    )
    pts[tpl.group("inner_lip_upper"), 1] -= opening * width / 2
    pts[tpl.group("inner_lip_lower"), 1] += opening * width / 2
    a = np.radians(tilt_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (pts - 200.0) @ rot.T + 200.0


def _frame(points: np.ndarray):
    tpl = load_template()
    return mouth_frame(
        points, tpl.group("inner_lip_upper"), tpl.group("inner_lip_lower"), tpl.group("inner_mouth_corners")
    )


def test_uv_inverts_points() -> None:
    frame = _frame(_open_mouth())
    u, v = np.meshgrid(np.linspace(0.1, 0.9, 9), np.linspace(0.0, 1.0, 5))
    xy = mouth_points(frame, u, v)
    uu, vv = mouth_uv(
        frame, torch.tensor(xy[..., 0], dtype=torch.float32), torch.tensor(xy[..., 1], dtype=torch.float32)
    )
    assert np.allclose(uu.numpy(), u, atol=1e-3)
    assert np.allclose(vv.numpy(), v, atol=1e-3)


def test_opening_follows_the_lips() -> None:
    assert _frame(_open_mouth(0.3)).opening == pytest.approx(0.3 + _frame(_open_mouth(0.0)).opening, abs=0.02)
    assert _frame(_open_mouth(0.3)).opening > _frame(_open_mouth(0.1)).opening


def test_visible_opening_moves_the_lips_to_the_hole_edges() -> None:
    frame = _frame(_open_mouth(0.4, tilt_deg=0.0))
    u, v = np.meshgrid(np.linspace(0.2, 0.8, 40), np.linspace(0.3, 0.7, 12))  # a hole inside the lips
    xy = mouth_points(frame, u, v)
    px = np.unique(np.round(xy.reshape(-1, 2)), axis=0)  # as whole pixels
    seen = visible_opening(frame, px[:, 0] + 0.5, px[:, 1] + 0.5)
    assert 0.1 < seen.opening < frame.opening  # the hole is narrower than the lip lines
    x, y = (torch.tensor(c, dtype=torch.float32) for c in (px[:, 0] + 0.5, px[:, 1] + 0.5))
    _, d_up, d_lo = lip_depths(seen, x, y)
    middle = (x > float(np.percentile(px[:, 0], 25))) & (x < float(np.percentile(px[:, 0], 75)))
    # every hole pixel lies between the new lines, the top row within a pixel of the upper one
    assert float(d_up.min()) >= 0 and float(d_lo.min()) >= 0
    assert float(d_up[middle].min()) * frame.width < 1.01
    assert visible_opening(frame, px[:2, 0], px[:2, 1]) is frame  # too few columns: unchanged


def test_degenerate_mouth_is_refused() -> None:
    pts = _open_mouth()
    corners = load_template().group("inner_mouth_corners")
    pts[corners[1]] = pts[corners[0]]
    with pytest.raises(ValueError, match="mouth corners coincide"):
        _frame(pts)


def test_lip_points_invert_lip_depths() -> None:
    frame = _frame(_open_mouth(0.4))
    u, d = np.meshgrid(np.linspace(0.1, 0.9, 9), np.linspace(0.0, 0.15, 4))
    for lip, k in (("upper", 1), ("lower", 2)):
        xy = lip_points(frame, u, d, lip)
        out = lip_depths(
            frame,
            torch.tensor(xy[..., 0], dtype=torch.float32),
            torch.tensor(xy[..., 1], dtype=torch.float32),
        )
        assert np.allclose(out[0].numpy(), u, atol=1e-3) and np.allclose(out[k].numpy(), d, atol=1e-3)
    with pytest.raises(ValueError, match="lip must be"):
        lip_points(frame, u, d, "middle")


def test_prior_is_a_plausible_mouth() -> None:
    prior = load_mouth_prior()
    assert prior.upper.shape == prior.lower.shape and prior.upper.shape[0] == len(prior.openings) >= 2
    assert (np.diff(prior.openings) > 0).all() and (prior.counts > 50).all()
    rows = prior.upper.shape[2]
    teeth = slice(1, max(2, round(0.06 / prior.depth * rows)))  # just under the upper lip
    deep = slice(round(0.15 / prior.depth * rows), round(0.25 / prior.depth * rows))
    centre = slice(prior.upper.shape[3] // 3, 2 * prior.upper.shape[3] // 3)
    for k in range(1, len(prior.openings)):  # every bin open enough to show them: teeth, lighter than skin
        upper = prior.upper[k]
        assert float(upper[:, teeth, centre].mean()) > 1.2
        assert float(upper[:, teeth, centre].mean()) > float(upper[:, deep, centre].mean()) + 0.2
        assert float(upper[:, teeth, :2].mean()) < float(upper[:, teeth, centre].mean())  # darker corners
    # between bin centres the strips are a blend of their neighbours
    up, lo = prior.strips(float(prior.openings[:2].mean()))
    assert np.allclose(up, (prior.upper[0] + prior.upper[1]) / 2, atol=1e-6)
    assert np.allclose(lo, (prior.lower[0] + prior.lower[1]) / 2, atol=1e-6)


def _lum_down_the_mouth(prior, opening: float, u: float, rows: int = 11) -> np.ndarray:
    """Painted luminance / skin luminance from the upper inner lip (v = 0) to the lower (v = 1)."""
    frame = _frame(_open_mouth(opening))
    xy = mouth_points(frame, np.full(rows, u), np.linspace(0.0, 1.0, rows))
    x, y = torch.tensor(xy[..., 0], dtype=torch.float32), torch.tensor(xy[..., 1], dtype=torch.float32)
    skin = torch.tensor([0.7, 0.5, 0.4])
    return (prior.paint(frame, x, y, skin).mean(0) / skin.mean()).numpy()


def test_paint_shows_teeth_under_the_upper_lip() -> None:
    strips = replace(load_mouth_prior(), style="strips")  # the mean strips (sessions 11-12)
    lum = _lum_down_the_mouth(strips, 0.3, 0.5)
    assert lum[1] > 1.2 and lum[1] > lum[5] + 0.2, lum  # bright teeth, then the darker inside
    teeth = load_mouth_prior()  # the default: a row of teeth over a dark cavity
    assert teeth.style == "teeth"
    b = tooth_boundaries()
    incisor = float(b[len(b) // 2] + b[len(b) // 2 + 1]) / 2  # the middle of a central incisor
    lum = _lum_down_the_mouth(teeth, 0.3, incisor)
    assert lum[1] > 1.2 and lum[5] < 0.4, lum  # teeth, then the cavity (the strips' mean: ~1)
    gap = _lum_down_the_mouth(teeth, 0.3, 0.5)  # between the two central incisors
    assert gap[1] < lum[1] - 0.2, (gap, lum)


def test_teeth_style_shows_the_lower_teeth_then_the_tongue_as_the_mouth_opens() -> None:
    prior = load_mouth_prior()
    frame = _frame(_open_mouth(0.5))
    xy = mouth_points(frame, np.full(2, 0.5), np.array([0.5, 0.85]))
    x, y = torch.tensor(xy[..., 0], dtype=torch.float32), torch.tensor(xy[..., 1], dtype=torch.float32)
    cavity, low = prior.paint(frame, x, y, torch.tensor([0.7, 0.5, 0.4])).T.numpy()
    assert low.mean() > cavity.mean() + 0.05 and low[0] > 1.5 * low[1], (cavity, low)  # a red tongue
    ajar = _lum_down_the_mouth(prior, 0.12, 0.5, rows=21)
    assert ajar[-1] > 0.8 and ajar[-1] > ajar[14] + 0.4, ajar  # the lower teeth's edge, over the cavity


def test_fit_opening_follows_a_smooth_edge_through_the_pixel_staircase() -> None:
    """An elliptical opening rasterised on a coarse grid: the columns' edges step by whole pixels,
    the fitted lines stay within a third of a pixel of the true edge (visible_opening: the steps)."""
    frame = _frame(_open_mouth(0.0, tilt_deg=0.0))
    c = frame.c0 + frame.e * frame.width / 2
    rx, ry = 0.42 * frame.width, 0.13 * frame.width
    ys, xs = np.mgrid[int(c[1] - ry) - 2 : int(c[1] + ry) + 3, int(c[0] - rx) - 2 : int(c[0] + rx) + 3] + 0.5
    inside = ((xs - c[0]) / rx) ** 2 + ((ys - c[1]) / ry) ** 2 <= 1
    px, py = xs[inside], ys[inside]
    a = np.linspace(0.2, 0.8, 25)
    true_top = (
        c[1] - ry * np.sqrt(1 - ((a * frame.width + frame.c0[0] - c[0]) / rx) ** 2) - frame.c0[1]
    ) / frame.width

    def error(f) -> float:
        return float(np.abs(np.interp(a, f.upper[:, 0], f.upper[:, 1]) - true_top).max() * frame.width)

    fitted, stepped = fit_opening(frame, px, py), visible_opening(frame, px, py)
    assert error(fitted) < 0.34 < error(stepped), (error(fitted), error(stepped))
    cover = opening_coverage(
        fitted, torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)
    )
    assert float(cover.sum()) == pytest.approx(
        np.pi * rx * ry, rel=0.06
    )  # anti-aliased: fractions at the edge
    assert 0 < int(((cover > 0.05) & (cover < 0.95)).sum()) < 0.6 * inside.sum()


def test_an_unknown_mouth_style_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown mouth style 'cartoon'"):
        replace(load_mouth_prior(), style="cartoon")


def test_an_old_prior_file_is_refused_by_name(tmp_path) -> None:
    old = tmp_path / "old.npz"
    np.savez(old, ratio=np.zeros((2, 3, 4, 4)), openings=np.array([0.1, 0.2]), counts=np.array([5, 5]))
    with pytest.raises(ValueError, match=r"old\.npz: not a lip-anchored mouth prior"):
        load_mouth_prior(str(old))


def test_paint_scales_with_skin_colour() -> None:
    prior = load_mouth_prior()
    frame = _frame(_open_mouth())
    xy = mouth_points(frame, np.full((4, 4), 0.5), np.linspace(0.2, 0.8, 16).reshape(4, 4))
    x, y = torch.tensor(xy[..., 0], dtype=torch.float32), torch.tensor(xy[..., 1], dtype=torch.float32)
    light = prior.paint(frame, x, y, torch.tensor([0.5, 0.4, 0.3]))  # teeth stay below white
    dark = prior.paint(frame, x, y, torch.tensor([0.25, 0.2, 0.15]))
    assert light.shape == (3, 4, 4)
    assert torch.allclose(dark, light / 2, atol=1e-5)
