"""The conditioning: a ``GeneratorInput`` -> one channel-stacked (C, R, R) float32 tensor.

Channel table (``CHANNEL_GROUPS`` holds the same as data; ``NUM_CHANNELS`` = 40):

=========  ==========  =====  ===========================================================
group      name        chans  content and range
=========  ==========  =====  ===========================================================
warp       warped      0-2    source warped by the flow (for a ``warp_fill`` model with its
                              holes filled, ``diffusion.BASES``), RGB in [-1, 1]
identity   source      3-5    the source window, RGB in [-1, 1]
motion     visibility  6      source visibility in [0, 1] (0 = no source correspondence)
motion     encoding    7-22   K=4 candidates x (flow u, flow v, depth offset, weight): the
                              flow stage gives u, v and the offset divided by R; here they
                              are multiplied by ``FLOW_GAIN`` (8) and clamped to [-1, 1]
                              (1 = an eighth of the window); weights in [0, 1]
motion     depth       23     depth * 4 / R clamped to [-1, 1]; background (depth R) is 1
motion     normal      24-26  unit normal (x, y, z) in [-1, 1]; background (0, 0, -1)
motion     regions     27-35  {0, 1} masks from ``fields.labels``: eyes, irises, brows,
                              nose, lips, mouth interior, skin, hair/head shell, background
history    history     36-38  the previous output warped to now, RGB in [-1, 1] (0 if none)
history    history_ok  39     1 where the history is valid, 0 when there is none
=========  ==========  =====  ===========================================================

Groups: ``warp`` is always present (the diffusion generator predicts the residual over it);
``motion`` (the target geometry), ``identity`` (the source window) and ``history`` are the
groups that condition dropout zeroes, independently, during training, and that the fusion
weights of :mod:`.sampling` contrast at inference (:func:`drop_groups`).

Only the target's geometry enters (flow, visibility, depth, normal, labels): never its
pixels. The training code builds its conditioning with this same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rt_portrait.core.types import Region
from rt_portrait.generator.types import GeneratorInput

FLOW_GAIN = 8.0  # encoding flow parts (already / R) x this: an eighth of the window -> 1
DEPTH_GAIN = 4.0  # depth * DEPTH_GAIN / R

# Region masks in channel order; each entry is the set of labels of one mask.
REGION_MASKS: tuple[tuple[str, tuple[Region, ...]], ...] = (
    ("eyes", (Region.EYES,)),
    ("irises", (Region.IRIS,)),
    ("brows", (Region.BROWS,)),
    ("nose", (Region.NOSE,)),
    ("lips", (Region.LIPS,)),
    ("mouth_interior", (Region.MOUTH_INTERIOR,)),
    ("skin", (Region.SKIN,)),
    ("hair_shell", (Region.HEAD_SHELL,)),
    ("background", (Region.BACKGROUND,)),
)


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # channel block
    group: str  # dropout/fusion group: warp, identity, motion or history
    channels: slice
    value_range: tuple[float, float]


CHANNEL_GROUPS: tuple[ChannelGroup, ...] = (
    ChannelGroup("warped", "warp", slice(0, 3), (-1.0, 1.0)),
    ChannelGroup("source", "identity", slice(3, 6), (-1.0, 1.0)),
    ChannelGroup("visibility", "motion", slice(6, 7), (0.0, 1.0)),
    ChannelGroup("encoding", "motion", slice(7, 23), (-1.0, 1.0)),
    ChannelGroup("depth", "motion", slice(23, 24), (-1.0, 1.0)),
    ChannelGroup("normal", "motion", slice(24, 27), (-1.0, 1.0)),
    ChannelGroup("regions", "motion", slice(27, 36), (0.0, 1.0)),
    ChannelGroup("history", "history", slice(36, 39), (-1.0, 1.0)),
    ChannelGroup("history_ok", "history", slice(39, 40), (0.0, 1.0)),
)
NUM_CHANNELS = 40
DROPPABLE_GROUPS = ("motion", "identity", "history")


def group_channels(group: str) -> list[int]:
    """Channel indices of one dropout group (``motion``, ``identity``, ``history`` or ``warp``)."""
    idx = [c for g in CHANNEL_GROUPS if g.group == group for c in range(g.channels.start, g.channels.stop)]
    if not idx:
        raise ValueError(f"unknown channel group {group!r}; groups: warp, {', '.join(DROPPABLE_GROUPS)}")
    return idx


_REGION_ORDER = [rs[0] for _, rs in REGION_MASKS]


def _fill(
    out: torch.Tensor,
    warped: torch.Tensor,
    source: torch.Tensor,
    visibility: torch.Tensor,
    encoding: torch.Tensor,
    depth: torch.Tensor,
    normal: torch.Tensor,
    labels: torch.Tensor,
    history: torch.Tensor | None,
    valid: bool | torch.Tensor,
) -> None:
    """Write the condition into ``out`` (*lead, NUM_CHANNELS, R, R) in place (one buffer, no
    concatenation: the stack is ~10 MB at 256^2 and copies dominate its cost).

    The fields carry the same leading dims as ``out`` (none for one input, (B,) for a batch),
    so the single and the batched conditioning are this one function. ``valid``: whether the
    history counts, a bool or a bool tensor of shape ``lead`` (per batch item)."""
    if encoding.shape[-3] != 16:
        raise ValueError(
            f"conditioning expects the K=4 flow encoding (16 channels), got {encoding.shape[-3]}"
        )
    lead, r = out.shape[:-3], out.shape[-1]
    out[..., 0:3, :, :].copy_(warped).mul_(2).sub_(1)
    out[..., 3:6, :, :].copy_(source).mul_(2).sub_(1)
    out[..., 6:7, :, :].copy_(visibility).clamp_(0, 1)
    enc = out[..., 7:23, :, :].view(*lead, 4, 4, r, r)
    enc.copy_(encoding.view(*lead, 4, 4, r, r))
    enc[..., :3, :, :].mul_(FLOW_GAIN).clamp_(-1, 1)
    enc[..., 3, :, :].clamp_(0, 1)
    out[..., 23:24, :, :].copy_(depth).mul_(DEPTH_GAIN / r).clamp_(-1, 1)
    out[..., 24:27, :, :].copy_(normal).clamp_(-1, 1)
    order = torch.tensor([int(x) for x in _REGION_ORDER], device=labels.device)
    out[..., 27:36, :, :].copy_(labels[..., None, :, :] == order[:, None, None])
    if isinstance(valid, bool):
        if valid:
            assert history is not None
            out[..., 36:39, :, :].copy_(history).mul_(2).sub_(1)
            out[..., 39, :, :].fill_(1)
        else:
            out[..., 36:40, :, :].zero_()
        return
    if history is None:
        out[..., 36:40, :, :].zero_()
        return
    keep = valid.to(device=out.device, dtype=torch.bool)[..., None, None, None]
    out[..., 36:39, :, :].copy_(history).mul_(2).sub_(1).masked_fill_(~keep, 0)
    out[..., 39:40, :, :].copy_(keep.expand_as(out[..., 39:40, :, :]))


def _fill_input(out: torch.Tensor, inputs: GeneratorInput, valid: bool) -> None:
    f = inputs.fields
    _fill(
        out,
        inputs.warped,
        inputs.source,
        f.visibility,
        f.encoding,
        f.depth,
        f.normal,
        f.labels,
        inputs.history,
        valid,
    )


def _valid(inputs: GeneratorInput, history_valid: bool | None) -> bool:
    if inputs.history is None:
        return False
    return True if history_valid is None else history_valid


def build_condition(inputs: GeneratorInput, history_valid: bool | None = None) -> torch.Tensor:
    """(NUM_CHANNELS, R, R) float32 condition of one input (see the module's channel table).

    ``history_valid``: whether ``inputs.history`` counts; None = whenever it is given. An
    invalid or missing history is zeros with a zero validity channel.
    """
    r = inputs.warped.shape[-1]
    out = torch.empty(NUM_CHANNELS, r, r, device=inputs.warped.device)
    _fill_input(out, inputs, _valid(inputs, history_valid))
    return out


def build_condition_batch(
    inputs: Sequence[GeneratorInput], history_valid: Sequence[bool] | None = None
) -> torch.Tensor:
    """(B, NUM_CHANNELS, R, R): :func:`build_condition` of each input, in one buffer."""
    if not inputs:
        raise ValueError("build_condition_batch needs at least one input")
    hv: Sequence[bool | None] = history_valid if history_valid is not None else [None] * len(inputs)
    r = inputs[0].warped.shape[-1]
    out = torch.empty(len(inputs), NUM_CHANNELS, r, r, device=inputs[0].warped.device)
    for i, (x, v) in enumerate(zip(inputs, hv, strict=True)):
        _fill_input(out[i], x, _valid(x, v))
    return out


def build_condition_batched(
    warped: torch.Tensor,
    source: torch.Tensor,
    visibility: torch.Tensor,
    encoding: torch.Tensor,
    depth: torch.Tensor,
    normal: torch.Tensor,
    labels: torch.Tensor,
    history: torch.Tensor | None,
    history_valid: torch.Tensor,
) -> torch.Tensor:
    """(B, NUM_CHANNELS, R, R) condition of fields already stacked into (B, C, R, R) tensors
    (labels (B, R, R)), ``history_valid`` a (B,) bool: what :func:`build_condition_batch`
    gives for the same items, without a Python loop over them (the device batch builder of
    training makes thousands a second)."""
    b, r = warped.shape[0], warped.shape[-1]
    if history_valid.shape != (b,):
        raise ValueError(f"history_valid must be a ({b},) bool tensor, got {tuple(history_valid.shape)}")
    out = torch.empty(b, NUM_CHANNELS, r, r, device=warped.device)
    _fill(out, warped, source, visibility, encoding, depth, normal, labels, history, history_valid)
    return out


def drop_groups(cond: torch.Tensor, drop: dict[str, torch.Tensor | bool]) -> torch.Tensor:
    """A copy of ``cond`` (B, C, H, W) with groups zeroed: ``drop[group]`` is a bool or a (B,)
    bool tensor (which batch items lose the group)."""
    out = cond.clone()
    for group, which in drop.items():
        idx = group_channels(group)
        if isinstance(which, bool):
            if which:
                out[:, idx] = 0
            continue
        keep = (~which.to(cond.device)).to(cond.dtype)[:, None, None, None]
        out[:, idx] = out[:, idx] * keep
    return out
