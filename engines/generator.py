"""The diffusion generator with its network run by a resolved backend.

``EngineGenerator`` wraps a :class:`~rt_portrait.generator.diffusion.DiffusionGenerator`: the
same conditioning, starting noise and blend mask, with ``(cond, noise) -> face`` (the UNet
calls and the sampler's steps) run by the engine the resolver chose at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from rt_portrait.engines.base import Engine
from rt_portrait.engines.graph import GeneratorGraph, GraphSpec, LoadedGraph, file_hash
from rt_portrait.engines.resolver import EngineConfig, Resolution, resolve_engine
from rt_portrait.generator import diffusion as _diffusion
from rt_portrait.generator.conditioning import build_condition_batch
from rt_portrait.generator.diffusion import DiffusionGenerator, face_alpha
from rt_portrait.generator.types import GeneratorInput, GeneratorOutput

log = logging.getLogger(__name__)


def _default_weights(steps: int) -> Path:
    pick = getattr(_diffusion, "default_weights", None)  # per-step defaults, where the module has them
    return Path(pick(steps)) if pick is not None else _diffusion.DEFAULT_WEIGHTS


def graph_of(generator: DiffusionGenerator) -> LoadedGraph:
    """The float32 graph of a diffusion generator (its own UNet module, not a copy)."""
    cfg = generator.config
    path = getattr(generator, "weights_path", None) or _default_weights(cfg.steps)
    path = Path(cfg.weights) if cfg.weights is not None else Path(path)
    spec = GraphSpec(
        steps=cfg.steps,
        sampler=cfg.sampler,
        motion_weight=cfg.motion_weight,
        identity_weight=cfg.identity_weight,
    )
    graph = GeneratorGraph(generator.model, spec, generator.residual_scale, generator.prediction)
    return LoadedGraph(graph.eval(), path, file_hash(path), dict(generator.meta))


class EngineGenerator:
    """Generator protocol: conditioning (the diffusion generator's) -> engine -> face, alpha."""

    def __init__(
        self, diffusion: DiffusionGenerator, engine: Engine, resolution: Resolution | None = None
    ) -> None:
        self.diffusion = diffusion
        self.engine = engine
        self.resolution = resolution
        self.device = engine.device

    def _to_device(self, x: GeneratorInput) -> GeneratorInput:
        if x.warped.device == self.device:
            return x
        f = x.fields
        fields = type(f)(
            flow=f.flow.to(self.device),
            visibility=f.visibility.to(self.device),
            depth=f.depth.to(self.device),
            normal=f.normal.to(self.device),
            labels=f.labels.to(self.device),
            encoding=f.encoding.to(self.device),
        )
        return replace(
            x,
            warped=x.warped.to(self.device),
            source=x.source.to(self.device),
            fields=fields,
            history=None if x.history is None else x.history.to(self.device),
        )

    def condition(self, inputs: Sequence[GeneratorInput]) -> torch.Tensor:
        """(N, C, R, R) condition batch, built exactly as the diffusion generator builds it."""
        hv = [self.diffusion.config.history and x.history is not None for x in inputs]
        return build_condition_batch([self._to_device(x) for x in inputs], hv)

    @torch.inference_mode()
    def generate_batch(self, inputs: Sequence[GeneratorInput]) -> list[GeneratorOutput]:
        """One engine call for N inputs (e.g. N sessions' frames)."""
        cond = self.condition(inputs)
        n, _, h, w = cond.shape
        noise = self.diffusion.noise(h, w).to(self.device).expand(n, -1, -1, -1).contiguous()
        face = self.engine(cond, noise).to(self.device)
        labels = torch.stack([x.fields.labels.to(self.device) for x in inputs])
        alpha = face_alpha(labels, self.diffusion.config.feather)
        return [GeneratorOutput(face=face[i], alpha=alpha[i]) for i in range(n)]

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        return self.generate_batch([inputs])[0]

    def summary(self) -> dict[str, object]:
        if self.resolution is not None:
            return self.resolution.summary()
        return {"backend": self.engine.name, "engine": self.engine.describe()}


def with_backend(
    diffusion: DiffusionGenerator, size: int, config: EngineConfig | None = None
) -> EngineGenerator:
    """Resolve a backend for ``diffusion`` (at start-up, for working size ``size``) and wrap it."""
    config = config or EngineConfig()
    config = replace(config, device=str(diffusion.device), dtype=diffusion.config.dtype)
    resolution = resolve_engine(graph_of(diffusion), size, config)
    return EngineGenerator(diffusion, resolution.engine, resolution)
