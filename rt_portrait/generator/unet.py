"""The generator's network: a small pixel-space conditional UNet (an ``nn.Module`` only).

No I/O and no sampling live here (see :mod:`.sampling` and :mod:`.diffusion`). The network
maps ``(x_t, t, cond)`` to a prediction with ``x_t``'s shape (followed, when
``flow_channels`` > 0, by that many more channels: a displacement field, see
:func:`.diffusion.displacement_field`):

- ``x_t`` (B, 3, H, W): the noisy sample (the residual over the warp, see :mod:`.diffusion`);
- ``t`` (B,) float in [0, 1]: the flow-matching time (1 = pure noise);
- ``cond`` (B, C, H, W): the conditioning stack (:mod:`.conditioning`).

Shape of the network, chosen for the CPU speed goal (one forward at 256x256, batch 1, one
thread, torch eager, in about 30 ms on the 2-core development machine):

- a PixelUnshuffle(2) + 1x1 stem (written as a 2x2 stride-2 convolution): 256^2 -> 128^2,
  so no convolution runs at full resolution, and no 3x3 runs over the ~170 unshuffled
  channels (that alone would cost more than the rest of the network);
- three levels (128^2, 64^2, 32^2 at base width ``channels``, x2, x4), one residual block per
  level on the way down and up, additive skips (a 1x1 projection after the nearest upsample),
  GroupNorm + SiLU, the timestep as FiLM (scale, shift) in every block, and two more blocks at
  the bottom;
- a PixelShuffle(2) head back to full resolution; the last convolution starts at zero, so an
  untrained network predicts 0 (with the residual parameterisation: the warp itself).

Fully convolutional: any H, W divisible by 8 works (training uses 128x128 crops).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    cond_channels: int = 40  # the conditioning stack's C (see conditioning.NUM_CHANNELS)
    out_channels: int = 3
    # extra output channels beside the prediction (2: the displacement of the generator's base,
    # see diffusion.displacement_field); the sample x_t keeps out_channels
    flow_channels: int = 0
    # the flow channels' scale: with Adam every weight moves about lr a step, so a gain makes
    # the displacement learn that much faster than the residual beside it
    flow_gain: float = 1.0
    channels: int = 24  # base width at the 128^2 level (after the 2x pixel-unshuffle stem)
    mults: tuple[int, ...] = (1, 2, 4)
    groups: int = 8  # GroupNorm groups
    time_dim: int = 64

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return d

    @staticmethod
    def from_dict(d: dict[str, object]) -> UNetConfig:
        d = dict(d)
        d["mults"] = tuple(d["mults"])  # type: ignore[arg-type]
        return UNetConfig(**d)  # type: ignore[arg-type]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DDPM-style timesteps), (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv x2 with FiLM from the time embedding and a 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(time_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class ConditionalUNet(nn.Module):
    """Pixel-space conditional UNet (see the module docstring for the layout)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        widths = [cfg.channels * m for m in cfg.mults]
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(), nn.Linear(cfg.time_dim, cfg.time_dim)
        )
        # PixelUnshuffle(2) + 1x1 conv, written as 2x2 stride-2 convolutions (the same map, but
        # pixel_unshuffle of ~43 channels at 256^2 alone costs ~10 ms on the CPU), one for the
        # sample and one for the condition (no concatenation at full resolution)
        self.stem_x = nn.Conv2d(cfg.out_channels, widths[0], 2, stride=2)
        self.stem_c = nn.Conv2d(cfg.cond_channels, widths[0], 2, stride=2, bias=False)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, w in enumerate(widths):
            prev = widths[max(i - 1, 0)]
            self.down.append(ResBlock(prev, w, cfg.time_dim, cfg.groups))
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = ResBlock(widths[-1], widths[-1], cfg.time_dim, cfg.groups)
        self.mid2 = ResBlock(widths[-1], widths[-1], cfg.time_dim, cfg.groups)
        # additive skips (1x1 projection after the upsample) rather than concatenation: the
        # up blocks then run at their level's width, which halves the cost at 128^2
        self.up_proj = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            self.up_proj.append(nn.Conv2d(widths[i + 1], widths[i], 1))
            self.up.append(ResBlock(widths[i], widths[i], cfg.time_dim, cfg.groups))
        self.out_norm = nn.GroupNorm(min(cfg.groups, widths[0]), widths[0])
        self.out = nn.Conv2d(widths[0], 4 * (cfg.out_channels + cfg.flow_channels), 3, padding=1)
        nn.init.zeros_(self.out.weight)  # untrained: predicts 0 (the warp, with the residual target)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The prediction (B, out_channels + flow_channels, H, W): x_t's channels first."""
        cfg = self.config
        if x.shape[1] != cfg.out_channels or cond.shape[1] != cfg.cond_channels:
            raise ValueError(
                f"ConditionalUNet expects x with {cfg.out_channels} and cond with {cfg.cond_channels} "
                f"channels, got {tuple(x.shape)} and {tuple(cond.shape)}"
            )
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"ConditionalUNet needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(timestep_embedding(t, cfg.time_dim).to(x.dtype))
        h = self.stem_x(x) + self.stem_c(cond.to(x.dtype))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid2(self.mid(h, temb), temb)
        for proj, block in zip(self.up_proj, self.up, strict=True):
            h = F.interpolate(proj(h), scale_factor=2.0, mode="nearest")
            h = block(h + skips.pop(), temb)
        y = F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), 2)
        if cfg.flow_channels and cfg.flow_gain != 1.0:
            y = torch.cat([y[:, : cfg.out_channels], y[:, cfg.out_channels :] * cfg.flow_gain], 1)
        return y


def add_flow_channels(model: ConditionalUNet, flow_channels: int = 2, gain: float = 1.0) -> ConditionalUNet:
    """A copy of ``model`` with ``flow_channels`` more output channels that start at zero: it
    predicts exactly what ``model`` predicts, plus a zero displacement (the start of tuning a
    trained generator to displace its base)."""
    cfg = model.config
    if cfg.flow_channels:
        raise ValueError(f"the model already has {cfg.flow_channels} flow channels")
    new = ConditionalUNet(replace(cfg, flow_channels=flow_channels, flow_gain=gain)).to(
        next(model.parameters()).device
    )
    state = model.state_dict()
    n = 4 * cfg.out_channels  # PixelShuffle(2): output channel c is conv channels 4c..4c+3
    for key in ("out.weight", "out.bias"):
        grown = torch.zeros_like(new.state_dict()[key])
        grown[:n] = state[key]
        state[key] = grown
    new.load_state_dict(state)
    return new
