"""Elastic background: the head's flow extended into the background around it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.core.fill import dilate, erode, push_pull_fill, sampled_at
from rt_portrait.flow.types import FlowFields


def elastic_background(fields: FlowFields, reach: int | None = None, factor: int = 4) -> torch.Tensor:
    """The flow with the background made elastic around the head.

    Without it the head slides over a static background: it tears along the silhouette, and
    where the head was in the source the old head shows through (a ghost). Here the head's
    flow is extended into the background by a push-pull pyramid and faded out with distance
    (the head's coverage at pyramid level ``reach``), so the background near the head
    stretches with it, like a thin plate, and stays put far away. ``reach`` (None = adaptive)
    grows with the largest motion of the head's outline (a 3-px ring inside it), so the whole
    region the head left is covered; before session 17 it grew with the largest motion
    anywhere in the head, so a face turning in place stretched the background across the
    whole frame (a subtitle bar under the chin bent; full-frame PSNR on ``val`` 22.60, now 22.69).
    Visibility is left as it is: revealed background is still marked for the generator.
    """
    head = (fields.labels != 0)[None].float()
    if not bool(head.any()):
        return fields.flow
    if reach is None:
        flow = fields.flow
        # the region the head left is as wide as its outline moved; a head turning in place
        # moves its face far more than its outline, and that must not stretch the whole frame
        ring = (head[0] > 0) & (erode(head[0], 3) == 0)
        if not bool(ring.any()):  # a head over the whole grid has no outline in it
            ring = head[0] > 0
        # (not linalg.norm over dim 0: that reduction is very slow on the CPU)
        motion = float((flow[0] * flow[0] + flow[1] * flow[1])[ring].max().sqrt())
        reach = int(np.clip(np.ceil(np.log2(max(8.0, 3.0 * motion))), 3, 7))
    # The extension is smooth, so it is computed on a grid ``factor`` times coarser.
    small_w = F.avg_pool2d(head[None], factor, ceil_mode=True)[0]
    small_f = F.avg_pool2d((fields.flow * head)[None], factor, ceil_mode=True)[0] / small_w.clamp_min(1e-6)
    extended = push_pull_fill(small_f, small_w)
    cover = small_w
    for _ in range(max(reach - int(np.log2(factor)), 0)):
        if min(cover.shape[-2:]) <= 2:
            break
        cover = F.avg_pool2d(cover[None], 2, ceil_mode=True)[0]
    cover = F.interpolate(cover[None], size=small_w.shape[-2:], mode="bilinear", align_corners=False)[0]
    elastic = F.interpolate(
        (extended * (cover * 3).clamp(0, 1))[None], size=head.shape[-2:], mode="bilinear", align_corners=False
    )[0]
    return fields.flow * head + elastic * (1 - head)


def background_seen(fields: FlowFields, source_background: torch.Tensor, keep: int = 2) -> torch.Tensor:
    """The visibility with background pixels that sample the source's head marked unseen.

    A background pixel's visibility is the static background's (does the source show the
    wall at this very pixel?), but :func:`elastic_background` moves where it samples: beside a
    head that turned and moved, the extended outline flow points back into the old head
    (a turning head's outline moves with its surface, not its silhouette), and its cheek, ear
    and hair stay on the wall as a ghost. Here a background pixel is seen only where the source
    shows the background at the point it samples (``source_background``, (R, R), from
    :func:`rt_portrait.flow.source_background_visibility`). Pixels within ``keep`` px of the
    target's head keep their visibility: the head's anti-aliased edge is sampled there."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0 pixels, got {keep}")
    r = fields.labels.shape[-1]
    if source_background.shape != (r, r):
        raise ValueError(f"source_background must be ({r}, {r}), got {tuple(source_background.shape)}")
    head = (fields.labels != 0).float()
    if not bool(head.any()):
        return fields.visibility
    open_bg = (head == 0) & (dilate(head, keep) == 0) if keep else head == 0
    seen = sampled_at(source_background, fields.flow, (0, r, 0, r))
    return torch.where(open_bg[None], torch.minimum(fields.visibility, seen[None]), fields.visibility)
