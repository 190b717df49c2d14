"""Compose: the full-resolution warp, the window taper, and the generator's blend."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from rt_portrait.compose import FrameWarp, compose, crop_window, to_image, to_tensor, window_taper
from rt_portrait.core.assets import default_portrait
from rt_portrait.flow.types import FlowFields, Window

R = 64


def _fields(flow: torch.Tensor) -> FlowFields:
    r = flow.shape[-1]
    zeros = torch.zeros(1, r, r)
    return FlowFields(
        flow=flow,
        visibility=torch.ones(1, r, r),
        depth=zeros,
        normal=torch.zeros(3, r, r),
        labels=torch.ones(r, r, dtype=torch.int64),
        encoding=torch.zeros(16, r, r),
    )


@pytest.fixture(scope="module")
def source() -> torch.Tensor:
    return to_tensor(default_portrait()[::2, ::2].copy())  # (3, 256, 256), a real face


def test_taper_is_zero_at_inner_edges_and_one_at_frame_edges() -> None:
    # a window inside the frame on the left and top, flush with its right and bottom edges
    window = Window(x0=40.0, y0=30.0, side=216.0, size=R)
    t = window_taper(window, (246, 256), torch.device("cpu"))[0]
    assert t.shape == (R, R)
    assert float(t[:, 0].max()) < 0.3 and float(t[0, :].max()) < 0.3  # inner edges fall to ~0
    assert float(t[R // 2, -1]) == 1.0 and float(t[-1, R // 2]) == 1.0  # frame edges keep the motion
    assert float(t[R // 2, R // 2]) == 1.0
    # monotone ramp from the inner edge inwards
    row = t[R // 2, : R // 4]
    assert bool((row[1:] >= row[:-1]).all())


def test_blend_takes_the_face_exactly_under_the_mask(source: torch.Tensor) -> None:
    _, h, w = source.shape
    window = Window(x0=0.0, y0=0.0, side=float(w), size=R)  # the whole frame: no resampling offsets
    warp = FrameWarp(window, (h, w))
    fields = _fields(torch.zeros(2, R, R))
    face = torch.zeros(3, R, R)
    face[1] = 1.0  # pure green
    alpha = torch.zeros(1, R, R)
    alpha[:, 16:48, 16:48] = 1.0
    alpha[:, 30:34, 30:34] = 0.5
    out = compose(source, fields, warp, face, alpha)
    s = w // R  # frame pixels per working pixel
    # fully inside the mask: the face
    inner = out[:, 20 * s : 28 * s, 20 * s : 28 * s]
    assert torch.allclose(inner, face[:, :1, :1].expand_as(inner), atol=1e-6)
    # half mask: the mean of face and warp
    mid = out[:, 31 * s + 1, 31 * s + 1]
    expect = 0.5 * source[:, 31 * s + 1, 31 * s + 1] + 0.5 * face[:, 0, 0]
    assert torch.allclose(mid, expect, atol=1e-5)
    # outside the mask, zero flow: the source itself
    assert torch.allclose(out[:, : 12 * s, :], source[:, : 12 * s, :], atol=1e-5)
    assert torch.allclose(out[:, 52 * s :, :], source[:, 52 * s :, :], atol=1e-5)


def test_zero_flow_and_no_mask_reproduce_the_source(source: torch.Tensor) -> None:
    _, h, w = source.shape
    window = Window(x0=50.0, y0=40.0, side=150.0, size=R)
    out = compose(
        source,
        _fields(torch.zeros(2, R, R)),
        FrameWarp(window, (h, w)),
        torch.zeros(3, R, R),
        torch.zeros(1, R, R),
    )
    assert np.abs(to_image(out).astype(int) - to_image(source).astype(int)).max() <= 1


def test_no_seam_across_the_window_border(source: torch.Tensor) -> None:
    """A window inside the frame moves the face a lot; with the taper the warped frame is
    continuous where the window ends: the jump across its border is no larger than the
    image's own pixel-to-pixel differences there."""
    _, h, w = source.shape
    window = Window(x0=48.0, y0=40.0, side=160.0, size=R)
    flow = torch.zeros(2, R, R)
    flow[0] = 6.0  # a big shift (6 working px = 15 frame px) everywhere in the window
    flow = flow * window_taper(window, (h, w), torch.device("cpu"))
    out = compose(
        source, _fields(flow), FrameWarp(window, (h, w)), torch.zeros(3, R, R), torch.zeros(1, R, R)
    )
    x0, x1 = 48, 48 + 160
    rows = slice(60, 180)
    for edge in (x0, x1):
        jump = (out[:, rows, edge] - out[:, rows, edge - 1]).abs().mean()
        own = (source[:, rows, edge - 1] - source[:, rows, edge - 2]).abs().mean()
        assert float(jump) <= 1.5 * float(own) + 2e-3, (edge, float(jump), float(own))
    # and without the taper there would be a seam: the test can tell
    raw = torch.zeros(2, R, R)
    raw[0] = 6.0
    seam = compose(
        source, _fields(raw), FrameWarp(window, (h, w)), torch.zeros(3, R, R), torch.zeros(1, R, R)
    )
    jump = (seam[:, rows, x0] - seam[:, rows, x0 - 1]).abs().mean()
    own = (source[:, rows, x0 - 1] - source[:, rows, x0 - 2]).abs().mean()
    assert float(jump) > 1.5 * float(own) + 2e-3
    # inside the window the content did move
    assert float((out[:, rows, 110:150] - source[:, rows, 110:150]).abs().mean()) > 0.01


def test_crop_window_of_the_whole_frame_is_a_resize(source: torch.Tensor) -> None:
    _, _h, w = source.shape
    crop = crop_window(source, Window(0.0, 0.0, float(w), w))
    assert crop.shape == source.shape
    assert torch.allclose(crop, source, atol=1e-5)


def test_full_face_soft_mask_lands_the_correction_without_a_seam() -> None:
    """The learned generator's face is blended over the whole head by a feathered mask
    (``face_alpha``): its correction lands everywhere under the mask, and across the mask's
    edge the output ramps over several pixels instead of stepping; a hard mask would step."""
    from rt_portrait.generator.diffusion import face_alpha

    h = w = 512
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    smooth = 0.5 + 0.2 * torch.sin(x / 40) * torch.cos(y / 50)  # detail the working grid keeps
    source = torch.stack([smooth, smooth * 0.9, smooth * 0.8])
    r = 256
    window = Window(x0=64.0, y0=48.0, side=384.0, size=r)
    fields = _fields(torch.zeros(2, r, r))
    v, u = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    head = ((u - 128) ** 2 + (v - 120) ** 2) < 70**2
    labels = head.long()  # 1 (skin) inside the head, 0 (background) around it
    correction = 0.08
    face = crop_window(source, window) + correction
    soft = face_alpha(labels[None])[0]
    assert soft.shape == (1, r, r) and float(soft.max()) == 1.0 and float(soft.min()) == 0.0
    out = compose(source, replace(fields, labels=labels), FrameWarp(window, (h, w)), face, soft)
    d = (out - source).mean(0)
    cy, cx = round(48 + 120 * 1.5), round(64 + 128 * 1.5)  # the head's centre in the frame
    assert float(d[cy - 40 : cy + 40, cx - 40 : cx + 40].mean()) == pytest.approx(correction, abs=0.005)
    assert float(d[:40].abs().max()) < 1e-4  # far outside: the warp (here the source) itself
    row = d[cy, :]
    steps = (row[1:] - row[:-1]).abs()
    assert float(steps.max()) < correction / 4, float(steps.max())  # a ramp of 4+ px, no step
    hard = compose(source, fields, FrameWarp(window, (h, w)), face, head[None].float())
    hard_steps = ((hard - source).mean(0)[cy, 1:] - (hard - source).mean(0)[cy, :-1]).abs()
    assert float(hard_steps.max()) > correction / 2  # a hard mask would show a seam: the test can tell


def _laplacian_var(x: torch.Tensor) -> float:
    g = x.mean(0)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def test_frame_detail_keeps_the_full_resolution_warp_under_the_face(source: torch.Tensor) -> None:
    """With ``warped`` given: where the source is visible, the face's correction over the
    working-grid warp lands on the full-resolution warp (detail finer than the grid survives);
    where it is hidden, the upsampled face alone shows."""
    from rt_portrait.compose import crop_window, warp_working

    _, h, w = source.shape
    window = Window(x0=0.0, y0=0.0, side=float(w), size=R)  # 4 frame px per working px
    warp = FrameWarp(window, (h, w))
    flow = torch.zeros(2, R, R)
    flow[0] = 1.5
    fields = _fields(flow)
    warped = warp_working(crop_window(source, window), flow)
    alpha = torch.zeros(1, R, R)
    alpha[:, 8:56, 8:56] = 1.0
    box = (slice(None), slice(12 * 4, 52 * 4), slice(12 * 4, 52 * 4))
    full = warp(source, flow)

    # no correction: the full-resolution warp itself, not the grid's softer copy
    kept = compose(source, fields, warp, warped, alpha, warped)
    assert torch.allclose(kept[box], full[box], atol=1e-5)
    soft = compose(source, fields, warp, warped, alpha)
    assert _laplacian_var(kept[box]) > 2 * _laplacian_var(soft[box])

    # a correction (a brighter face) is added to the full-resolution warp
    brighter = (warped + 0.1).clamp(0, 1)
    out = compose(source, fields, warp, brighter, alpha, warped)
    inc = (out - full)[box]
    want = (brighter - warped)[:, 12:52, 12:52].repeat_interleave(4, 1).repeat_interleave(4, 2)
    assert float((inc - want).abs().mean()) < 5e-3

    # hidden source: the face as upsampled, whatever the warp shows there
    hidden = replace(fields, visibility=torch.zeros(1, R, R))
    green = torch.zeros(3, R, R)
    green[1] = 1.0
    out = compose(source, hidden, warp, green, alpha, warped)
    assert torch.allclose(out[box], green[:, :1, :1].expand_as(out[box]), atol=1e-6)


def test_displaced_fields_compose_the_displacement_with_the_flow() -> None:
    """A pixel that reads the warp at itself + d reads the source at x + d + flow(x + d)."""
    from rt_portrait.compose import displace_fields

    u = torch.arange(R, dtype=torch.float32)
    flow = torch.stack([0.1 * u.expand(R, R), torch.zeros(R, R)])  # x-flow linear in the column
    fields = replace(_fields(flow), visibility=(u < R // 2).float().expand(1, R, R).clone())
    d = torch.stack([torch.full((R, R), 1.5), torch.full((R, R), -0.5)])
    out = displace_fields(fields, d)
    inner = (slice(2, -2), slice(2, -4))
    torch.testing.assert_close(out.flow[0][inner], (1.5 + 0.1 * (u + 1.5)).expand(R, R)[inner])
    torch.testing.assert_close(out.flow[1][inner], torch.full((R, R), -0.5)[inner])
    # visibility is read where the displaced pixel reads: the edge moves 1.5 px left
    assert float(out.visibility[0, 10, R // 2 - 3]) == 1.0 and float(out.visibility[0, 10, R // 2 - 1]) == 0.0
    assert out.labels is fields.labels  # the target's geometry is unchanged


def test_a_generators_displacement_moves_the_frame(astronaut) -> None:
    """A generator that displaces its base by 1 working pixel to the right (zero residual):
    the frame inside the window is the source read 1/scale frame pixels to the right, with
    frame detail on, as the working face was built."""
    from rt_portrait.core.assets import default_portrait_landmarks
    from rt_portrait.core.fill import warp_working
    from rt_portrait.generator.types import GeneratorInput, GeneratorOutput
    from rt_portrait.head.types import Edits
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking.types import TrackResult

    def shifting(inputs: GeneratorInput) -> GeneratorOutput:
        d = torch.zeros(2, *inputs.warped.shape[-2:])
        d[0] = 1.0
        return GeneratorOutput(
            face=warp_working(inputs.warped, d), alpha=torch.ones_like(inputs.warped[:1]), displacement=d
        )

    track = TrackResult.from_landmarks(default_portrait_landmarks("astronaut"), astronaut.shape[:2])
    animator = Animator(astronaut, AnimatorConfig(size=128), generator=shifting, source_track=track)
    frame = animator.render_edits(Edits()).image.astype(np.float32)
    window = animator.scene(128).window
    shift = 1.0 / window.scale  # frame px
    y0, x0 = int(window.y0 + 0.3 * window.side), int(window.x0 + 0.3 * window.side)
    y1, x1 = int(window.y0 + 0.7 * window.side), int(window.x0 + 0.7 * window.side)
    src = astronaut.astype(np.float32)
    errors = {
        s: float(np.abs(frame[y0:y1, x0:x1] - src[y0:y1, x0 + s : x1 + s]).mean()) for s in range(-2, 9)
    }
    assert min(errors, key=errors.__getitem__) == round(shift), (shift, errors)
    assert errors[round(shift)] < 0.3 * errors[0]
