"""The generator as one graph: ``(cond, noise) -> face``, the sampler's steps folded in.

Every backend runs this same module (eager as is, ``torch.compile`` compiled, ONNX Runtime and
TensorRT from its ONNX export), so they differ only in how they execute it, never in what
they compute. It reproduces :meth:`DiffusionGenerator.generate_batch`'s face exactly:

- ``cond`` (B, NUM_CHANNELS, R, R) float32: the conditioning stack
  (:mod:`rt_portrait.generator.conditioning`); channels 0-2 are the warp in [-1, 1];
- ``noise`` (B, 3, R, R) float32: the fixed starting noise (an input rather than a constant,
  so one graph serves every seed and the caller owns the randomness);
- ``face`` (B, 3, R, R) float32 in [0, 1]: the warp plus the predicted residual; for a
  displacing model (``UNetConfig.flow_channels``) (B, 5, R, R): that face, built on the
  displaced warp, then the displacement in working pixels
  (:func:`rt_portrait.generator.diffusion.displacement_field`).

The sampler loop is a Python loop over a fixed schedule, so tracing unrolls it: ``steps``
forwards in a row, no control flow left at run time. Fusion weights other than 1 are folded
in the same way (condition groups dropped by a constant channel mask).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from rt_portrait.generator.conditioning import NUM_CHANNELS, group_channels
from rt_portrait.generator.diffusion import (
    DEFAULT_WEIGHTS,
    displaced_face,
    displacement_field,
    load_weights,
)
from rt_portrait.generator.sampling import SAMPLERS, ModelFn, fused_model_fn, schedule
from rt_portrait.generator.unet import ConditionalUNet

FOLDED_SAMPLERS = ("euler", "heun")
# what the network predicts (weights metadata "prediction"): the clean sample x0 (flow
# matching), the velocity, or a plain regression of the residual (one forward from zeros)
PREDICTIONS = ("sample", "velocity", "regression")  # the samplers of .sampling that GeneratorGraph unrolls

# The channel layout an exported graph declares in its metadata (the conditioning's groups).
CHANNEL_LAYOUT = "rt-portrait-cond-v1"


@dataclass(frozen=True)
class GraphSpec:
    """What is folded into a graph besides the weights."""

    steps: int = 1
    sampler: str = "euler"
    motion_weight: float = 1.0
    identity_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.sampler not in SAMPLERS or self.sampler not in FOLDED_SAMPLERS:
            raise ValueError(
                f"unknown sampler {self.sampler!r}; the graph folds {', '.join(FOLDED_SAMPLERS)}"
            )


class GeneratorGraph(nn.Module):
    """``(cond, noise) -> face`` for one UNet, sampler, step count and pair of fusion weights.

    ``compute_dtype``: the dtype the UNet runs in (float32; float16/bfloat16 for the reduced
    precision ONNX files TensorRT builds from). Inputs and output stay float32.
    """

    def __init__(
        self,
        unet: ConditionalUNet,
        spec: GraphSpec | None = None,
        residual_scale: float = 1.0,
        prediction: str = "sample",
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        prediction = {"x0": "regression"}.get(prediction, prediction)  # the first name of regression
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        if unet.config.cond_channels != NUM_CHANNELS:
            raise ValueError(
                f"the UNet takes {unet.config.cond_channels} condition channels, the conditioning has {NUM_CHANNELS}"
            )
        self.unet = unet.to(compute_dtype)
        self.spec = spec or GraphSpec()
        self.residual_scale = float(residual_scale)
        self.prediction = prediction
        self.compute_dtype = compute_dtype
        self.out_channels = 3 + unet.config.flow_channels
        self._times = [float(t) for t in schedule(self.spec.steps)]  # constants of the graph
        # constant masks that drop one condition group (the fusion's extra predictions)
        for group in ("motion", "identity"):
            mask = torch.ones(1, NUM_CHANNELS, 1, 1)
            mask[:, group_channels(group)] = 0
            self.register_buffer(f"keep_{group}", mask, persistent=False)

    def cast(self, dtype: torch.dtype) -> GeneratorGraph:
        """A copy whose UNet runs at ``dtype`` (inputs and output stay float32); this graph
        is left as it is."""
        device = next(self.unet.parameters()).device
        graph = GeneratorGraph(
            copy.deepcopy(self.unet), self.spec, self.residual_scale, self.prediction, dtype
        )
        return graph.to(device).eval()

    def _drop(self, cond: torch.Tensor, group: str) -> torch.Tensor:
        mask: torch.Tensor = getattr(self, f"keep_{group}")
        return cond * mask.to(cond.dtype)

    def _net(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        return self.unet(x.to(dt), t, cond.to(dt)).float()

    def _model_fn(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, first: list[torch.Tensor], rows: int
    ) -> torch.Tensor:
        """The velocity, whatever the network predicts (as DiffusionGenerator.sample's), the
        first call's extra (flow) channels of its first ``rows`` rows (the full condition's,
        which a fused call stacks first) appended to ``first``."""
        full = self._net(x, t, cond)
        if not first:
            first.append(full[:rows, 3:])
        out = full[:, :3]
        if self.prediction == "sample":  # x0-prediction: v = (x_t - x0) / t (sampling.x0_to_velocity)
            return (x - out) / t.reshape(-1, 1, 1, 1).to(x.dtype).clamp_min(1e-4)
        return out

    def _sample(self, fn: ModelFn, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``sampling.sample_euler`` / ``sample_heun`` over the schedule held as Python floats:
        the same arithmetic, but no tensor-to-float reads at run time, which torch.compile would
        break its graph on (tests/test_engines.py checks it against DiffusionGenerator)."""
        times = self._times
        for i in range(len(times) - 1):
            t, t_next = times[i], times[i + 1]
            v = fn(x, _full(t, x), cond)
            x_e = x + (t_next - t) * v
            if self.spec.sampler == "euler" or t_next == 0.0:
                x = x_e
                continue
            v2 = fn(x_e, _full(t_next, x), cond)
            x = x + (t_next - t) * 0.5 * (v + v2)
        return x

    def forward(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        first: list[torch.Tensor] = []
        if self.prediction == "regression":  # plain regression (ablation): one forward from zeros
            t = torch.ones_like(noise[:, 0, 0, 0])
            out = self._net(noise * 0, t, cond)
            res, first = out[:, :3], [out[:, 3:]]
        else:
            model_fn = partial(self._model_fn, first=first, rows=cond.shape[0])
            fn = fused_model_fn(model_fn, self._drop, spec.motion_weight, spec.identity_weight)
            res = self._sample(fn, noise, cond)
        warped = (cond[:, 0:3] + 1) * 0.5
        if self.out_channels == 3:
            return displaced_face(warped, res, None, self.residual_scale).clamp(0, 1)
        disp = displacement_field(first[0])
        return torch.cat([displaced_face(warped, res, disp, self.residual_scale).clamp(0, 1), disp], 1)


def _full(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)


def file_hash(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 prefix of a file (weights and ONNX files are keyed by content, not name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


@dataclass(frozen=True)
class LoadedGraph:
    """A graph with where it came from (what export metadata and engine caches key on)."""

    graph: GeneratorGraph
    weights: Path
    weights_hash: str
    meta: dict[str, str]


def load_graph(
    weights: str | Path | None = None,
    spec: GraphSpec | None = None,
    device: torch.device | str = "cpu",
    compute_dtype: torch.dtype = torch.float32,
) -> LoadedGraph:
    """The graph of a generator weights file (None: the shipped default)."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    unet, meta = load_weights(path, "cpu")
    graph = GeneratorGraph(
        unet,
        spec,
        residual_scale=float(meta.get("residual_scale", "1")),
        prediction=meta.get("prediction", "sample"),
        compute_dtype=compute_dtype,
    )
    return LoadedGraph(graph.to(device).eval(), path, file_hash(path), meta)
