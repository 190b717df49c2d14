"""Mouth coordinates and the mouth-interior prior (rt_portrait.generator.mouth) and its use as a fill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rt_portrait.generator.mouth import load_mouth_prior, mouth_frame, mouth_points, mouth_uv
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


def test_degenerate_mouth_is_refused() -> None:
    pts = _open_mouth()
    corners = load_template().group("inner_mouth_corners")
    pts[corners[1]] = pts[corners[0]]
    with pytest.raises(ValueError, match="mouth corners coincide"):
        _frame(pts)


def test_prior_is_a_plausible_mouth() -> None:
    prior = load_mouth_prior()
    assert prior.ratio.shape[0] == len(prior.openings) >= 2
    assert (np.diff(prior.openings) > 0).all() and (prior.counts > 100).all()
    # darker than skin on average, teeth (near the upper lip) lighter than the middle of a wide mouth
    wide = prior.texture(float(prior.openings[-1]))
    assert float(wide.mean()) < 1.0
    assert float(wide[:, 2:5, 8:24].mean()) > float(wide[:, 6:10, 8:24].mean())
    # between bin centres the texture is a blend of its neighbours
    mid = prior.texture(float(prior.openings[:2].mean()))
    assert np.allclose(mid, (prior.ratio[0] + prior.ratio[1]) / 2, atol=1e-6)


def test_paint_scales_with_skin_colour() -> None:
    prior = load_mouth_prior()
    frame = _frame(_open_mouth())
    xy = mouth_points(frame, np.full((4, 4), 0.5), np.linspace(0.2, 0.8, 16).reshape(4, 4))
    x, y = torch.tensor(xy[..., 0], dtype=torch.float32), torch.tensor(xy[..., 1], dtype=torch.float32)
    light = prior.paint(frame, x, y, torch.tensor([0.8, 0.6, 0.5]))
    dark = prior.paint(frame, x, y, torch.tensor([0.4, 0.3, 0.25]))
    assert light.shape == (3, 4, 4)
    assert torch.allclose(dark, light / 2, atol=1e-5)
