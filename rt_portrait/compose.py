"""Warp and compose: the full-resolution source sampled through the upsampled flow.

The flow lives on a working grid (R x R) over a square window of the source frame. Rather
than crop, warp and paste back, the flow itself is upsampled to source pixels and the whole
source is sampled once, so there is no seam: outside the window the flow is zero, and
inside it the flow is tapered to zero at window edges that lie inside the frame.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.core.fill import nonzero_box, warp_working
from rt_portrait.flow.types import FlowFields, Window
from rt_portrait.generator.mouth import MouthPaint

__all__ = [
    "FrameWarp",
    "choose_window",
    "compose",
    "crop_window",
    "displace_fields",
    "to_image",
    "to_tensor",
    "upsample_to_frame",
    "warp_working",  # (in core.fill since the generator displaces its base with it)
    "window_taper",
]


def choose_window(
    landmarks: np.ndarray, image_size: tuple[int, int], size: int, context: float = 4.0
) -> Window:
    """A square window centred on the face, ``context`` face-sizes wide, kept inside the frame
    where the frame is large enough (so its edges carry no motion)."""
    h, w = image_size
    x0, y0 = landmarks[:, :2].min(0)
    x1, y1 = landmarks[:, :2].max(0)
    face = float(max(x1 - x0, y1 - y0))
    side = float(min(max(h, w), max(context * face, 32.0)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.15 * face  # hair sits above the landmarks
    wx = float(np.clip(cx - side / 2, min(0.0, w - side), max(0.0, w - side)))
    wy = float(np.clip(cy - side / 2, min(0.0, h - side), max(0.0, h - side)))
    return Window(wx, wy, side, size)


def window_taper(
    window: Window, image_size: tuple[int, int], device: torch.device, width: float = 0.06
) -> torch.Tensor:
    """(1, R, R) weights that fall to 0 at window edges lying inside the frame, 1 elsewhere."""
    h, w = image_size
    r = window.size
    t = torch.linspace(0.5 / r, 1 - 0.5 / r, r, device=device)
    ramp_lo = (t / width).clamp(0, 1)
    ramp_hi = ((1 - t) / width).clamp(0, 1)
    one = torch.ones_like(t)
    wx = (ramp_lo if window.x0 > 0.5 else one) * (ramp_hi if window.x0 + window.side < w - 0.5 else one)
    wy = (ramp_lo if window.y0 > 0.5 else one) * (ramp_hi if window.y0 + window.side < h - 0.5 else one)
    return (wy[:, None] * wx[None, :])[None]


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    arr = rgb if rgb.flags.writeable and rgb.flags.c_contiguous else rgb.copy()
    return torch.from_numpy(arr).to(device).permute(2, 0, 1).float().div_(255)


def to_image(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return t.clamp(0, 1).mul(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def crop_window(source: torch.Tensor, window: Window) -> torch.Tensor:
    """The window of a (3, H, W) image resampled to (3, R, R) (area-like for downscaling)."""
    _, h, w = source.shape
    r = window.size
    # antialias by box-filtering to about 2x the target first, then bilinear
    factor = int(window.side // (2 * r))
    src = F.avg_pool2d(source[None], factor, ceil_mode=True)[0] if factor >= 2 else source
    sh, sw = src.shape[-2:]
    fx, fy = sw / w, sh / h
    c = (torch.arange(r, device=source.device, dtype=torch.float32) + 0.5) * (window.side / r)
    xs = (window.x0 + c) * fx
    ys = (window.y0 + c) * fy
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)
    grid = grid / torch.tensor([sw, sh], device=source.device) * 2 - 1
    return F.grid_sample(src[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)[
        0
    ]


def displace_fields(fields: FlowFields, displacement: torch.Tensor) -> FlowFields:
    """The flow and visibility a generator's displaced base was sampled through: each pixel
    reads the warp at itself plus ``displacement`` (2, R, R), and the warp there reads the
    source at that point plus its flow, so the composed flow is ``d + flow(x + d)``.
    Compose then warps the full-resolution source by it, as the face was built."""
    flow = displacement + warp_working(fields.flow, displacement)
    visibility = warp_working(fields.visibility.reshape(1, *flow.shape[-2:]), displacement)
    return replace(fields, flow=flow, visibility=visibility)


def _frame_grid(
    window: Window,
    image_size: tuple[int, int],
    device: torch.device,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """grid_sample grid (1, h, w, 2) reading a working field at the source pixels the window
    covers (only those under the working-grid box ``(v0, v1, u0, u1)`` when given), and that
    frame region ``(y0, y1, x0, x1)``."""
    h, w = image_size
    inv = window.side / window.size
    if box is None:
        box = (0, window.size, 0, window.size)
    v0, v1, u0, u1 = box
    x0, y0 = max(0, int(np.floor(window.x0 + u0 * inv))), max(0, int(np.floor(window.y0 + v0 * inv)))
    x1, y1 = min(w, int(np.ceil(window.x0 + u1 * inv))), min(h, int(np.ceil(window.y0 + v1 * inv)))
    s = window.scale
    xs = ((torch.arange(x0, x1, device=device, dtype=torch.float32) + 0.5) - window.x0) * s
    ys = ((torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5) - window.y0) * s
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1) * (2.0 / window.size) - 1
    return grid[None], (y0, y1, x0, x1)


def upsample_to_frame(
    field: torch.Tensor,
    window: Window,
    image_size: tuple[int, int],
    fill: float = 0.0,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resample a (C, R, R) working field onto the source pixels the window covers.

    Returns the field over the frame region ``(y0, y1, x0, x1)`` (the window clipped to the
    frame, or only the part under the working-grid box ``(v0, v1, u0, u1)`` when given) and
    that region; outside it the field is ``fill``.
    """
    grid, region = _frame_grid(window, image_size, field.device, box)
    padding = "zeros" if fill == 0.0 else "border"
    return F.grid_sample(field[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[
        0
    ], region


class FrameWarp:
    """Warps a full-resolution (3, H, W) source by a working-grid flow, for one window.

    The sampling grids depend only on the window and the frame size, so they are built once
    (per source and working size) and each frame only adds its upsampled flow.
    """

    def __init__(
        self, window: Window, image_size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> None:
        self.window = window
        self.image_size = image_size
        device = torch.device(device)
        h, w = image_size
        self._up_grid, self.box = _frame_grid(window, image_size, device)
        y0, y1, x0, x1 = self.box
        xs = (torch.arange(x0, x1, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1
        ys = (torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1
        self._base = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)  # (h, w, 2)
        # working-px flow -> normalised source coordinates
        self._flow_to_grid = torch.tensor([2.0 / (w * window.scale), 2.0 / (h * window.scale)], device=device)

    def __call__(self, source: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """The warped frame region ``self.box`` (the rest of the frame is the source)."""
        up = F.grid_sample(
            flow[None], self._up_grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
        grid = self._base + up.permute(1, 2, 0) * self._flow_to_grid
        return F.grid_sample(
            source[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
        )[0]


def mouth_detail(
    mouth: MouthPaint, window: Window, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
    """The mouth prior's detail finer than the working grid: over the frame region under the
    painted box, the prior evaluated at every frame pixel minus its working-grid painting
    upsampled, weighted by the hole at frame resolution. Returns it (3, h, w), the change of
    the blend mask there (1, h, w) and the frame region.

    The hole at frame resolution is the upsampled one; for a ``crisp`` paint (an anti-aliased
    opening) it is redrawn as a sharp edge along the upsampled hole's half-way line, and the
    blend mask follows it (just outside that line the frame keeps its own lips instead of a
    working pixel's ramp into the painting)."""
    r = window.size
    v0, v1, u0, u1 = mouth.box
    canvas = torch.zeros(4, r, r, device=mouth.hole.device)
    canvas[:3, v0:v1, u0:u1] = mouth.painted
    canvas[3, v0:v1, u0:u1] = mouth.hole
    up, (y0, y1, x0, x1) = upsample_to_frame(canvas, window, image_size, box=mouth.box)
    dev = canvas.device
    xs = (torch.arange(x0, x1, device=dev, dtype=torch.float32) + 0.5 - window.x0) * window.scale
    ys = (torch.arange(y0, y1, device=dev, dtype=torch.float32) + 0.5 - window.y0) * window.scale
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    hole = up[3:4]
    if not mouth.crisp:
        return hole * (mouth.paint(x, y) - up[:3]), torch.zeros_like(hole), (y0, y1, x0, x1)
    # the half-way line, one frame pixel wide: the upsampled hole rises by up to ``scale`` (working
    # px per frame px) a frame pixel, so its ramp from 0.5 - scale/2 to 0.5 + scale/2 is that pixel
    scale = min(window.scale, 1.0)  # a frame coarser than the grid: its ramp is already a pixel
    edge = ((hole - 0.5) / scale + 0.5).clamp(0, 1)
    return edge * (mouth.paint(x, y) - up[:3]), edge - hole, (y0, y1, x0, x1)


def compose(
    source: torch.Tensor,
    fields: FlowFields,
    frame_warp: FrameWarp,
    face: torch.Tensor,
    alpha: torch.Tensor,
    warped: torch.Tensor | None = None,
    mouth: MouthPaint | None = None,
) -> torch.Tensor:
    """The output frame: the full-resolution warp with the generator's working-resolution
    ``face`` blended in by the soft mask ``alpha`` (both (C, R, R)).

    ``warped``: the working-grid warp the generator was given (3, R, R). With it, the face
    keeps the frame's own detail where the source is visible: there the blend takes the
    full-resolution warp plus the generator's correction (``face - warped``, upsampled), and
    only where the source shows nothing (visibility 0) the upsampled face alone. Without it the
    face is upsampled as is, so a source larger than the working grid comes out as soft as
    the grid (a still 512-px portrait at R = 256 kept 18 % of its Laplacian variance in the face).

    ``mouth``: where the face has the mouth prior painted; with ``warped`` too, the prior is
    painted again at frame resolution there (:func:`mouth_detail`), so teeth a pixel tall on
    the working grid keep their edges in the frame."""
    _, h, w = source.shape
    window = frame_warp.window
    y0, y1, x0, x1 = frame_warp.box
    out = source.clone()
    out[:, y0:y1, x0:x1] = frame_warp(source, fields.flow)
    box = nonzero_box(alpha > 0, margin=1)
    if box is None:  # the generator's face only matters where its mask is on
        return out
    fields_r = (
        [face, alpha]
        if warped is None
        else [face, alpha, warped, fields.visibility.reshape(1, *alpha.shape[-2:])]
    )
    up, (by0, by1, bx0, bx1) = upsample_to_frame(torch.cat(fields_r), window, (h, w), box=box)
    blend_face, a = up[:3], up[3:4]
    if warped is not None:
        # the full-resolution warp's detail above the working grid's, where it is real source
        blend_face = blend_face + up[7:8] * (out[:, by0:by1, bx0:bx1] - up[4:7])
        if mouth is not None:
            detail, da, (my0, my1, mx0, mx1) = mouth_detail(mouth, window, (h, w))
            iy0, iy1, ix0, ix1 = max(my0, by0), min(my1, by1), max(mx0, bx0), min(mx1, bx1)
            if iy0 < iy1 and ix0 < ix1:  # outside the face's box the mask is off anyway
                at = (slice(None), slice(iy0 - by0, iy1 - by0), slice(ix0 - bx0, ix1 - bx0))
                of = (slice(None), slice(iy0 - my0, iy1 - my0), slice(ix0 - mx0, ix1 - mx0))
                blend_face[at] += detail[of]
                if mouth.crisp:  # ``a`` is this call's own upsampled mask: changed in place
                    a[at] = (a[at] + da[of]).clamp(0, 1)
    if out.is_cuda and _cupy_compose():
        from rt_portrait.engines.cupy_kernels import compose_into_cuda

        compose_into_cuda(out, blend_face, a, by0, bx0)  # one CuPy kernel, in place
    else:
        out[:, by0:by1, bx0:bx1] = out[:, by0:by1, bx0:bx1] * (1 - a) + blend_face * a
    return out


def _cupy_compose() -> bool:
    """Whether the final blend runs as the CuPy kernel (CUDA tensors and CuPy installed)."""
    from rt_portrait.engines.cupy_kernels import gpu_available

    return gpu_available()
