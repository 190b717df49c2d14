"""The diffusion generator with its network run by a resolved backend.

``EngineGenerator`` is a :class:`~rt_portrait.generator.diffusion.DiffusionGenerator` (the
same conditioning, starting noise and blend mask) whose ``(cond, noise) -> face`` (the UNet
calls and the sampler's steps) is run by the engine the resolver chose at start-up.
:func:`with_backend` makes one.
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
from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator
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
    graph = GeneratorGraph(generator.model, spec_of(cfg), generator.residual_scale, generator.prediction)
    return LoadedGraph(graph.eval(), path, file_hash(path), dict(generator.meta))


def spec_of(config: DiffusionConfig) -> GraphSpec:
    return GraphSpec(
        steps=config.steps,
        sampler=config.sampler,
        motion_weight=config.motion_weight,
        identity_weight=config.identity_weight,
    )


class EngineGenerator(DiffusionGenerator):
    """A diffusion generator whose network runs on a resolved engine.

    It *is* the diffusion generator it was made from (same config, UNet, metadata and noise
    cache, shared rather than reloaded), so everything that inspects a ``DiffusionGenerator``
    keeps working; only ``generate_batch`` changes: ``(cond, noise) -> face`` is one engine
    call. A view with another step count or fusion (``select.with_steps``, a degrading
    server) no longer matches the engine's folded graph and runs the eager path instead.
    """

    def __init__(
        self, diffusion: DiffusionGenerator, engine: Engine, resolution: Resolution | None = None
    ) -> None:
        # no DiffusionGenerator.__init__: nothing is loaded twice
        self.__dict__.update(diffusion.__dict__)
        self.engine = engine
        self.resolution = resolution
        self.engine_spec = spec_of(diffusion.config)
        self.engine_device = engine.device
        self._eager_sizes: set[int] = set()  # sizes that ran eager (logged once each)

    def condition(self, inputs: Sequence[GeneratorInput]) -> torch.Tensor:
        """(N, C, R, R) condition batch, built exactly as the diffusion generator builds it."""
        hv = [self.config.history and x.history is not None for x in inputs]
        return build_condition_batch([x.to(self.engine_device) for x in inputs], hv)

    def uses_engine(self, size: int | None = None) -> bool:
        """Whether the current config is the one folded into the engine's graph (and, given a
        working size, whether the engine was prepared for it)."""
        if spec_of(self.config) != self.engine_spec:
            return False
        return size is None or self.engine.is_prepared(size)

    @torch.inference_mode()
    def generate_batch(self, inputs: Sequence[GeneratorInput]) -> list[GeneratorOutput]:
        """One engine call for N inputs (e.g. N sessions' frames)."""
        size = inputs[0].warped.shape[-1]
        if not self.uses_engine(size):
            # another step count, or a working size the engine was not built for (a degrading
            # server): the eager path now, rather than a build in the middle of a stream
            if size not in self._eager_sizes and spec_of(self.config) == self.engine_spec:
                self._eager_sizes.add(size)
                log.info("generator: size %d not prepared for %s, eager at that size", size, self.engine.name)
            return super().generate_batch(inputs)
        bases = self.bases(inputs)
        cond = self.condition(bases.inputs)
        n, _, h, w = cond.shape
        dev = self.engine_device
        noise = self.noise(h, w).to(dev).expand(n, -1, -1, -1).contiguous()
        out = self.engine(cond, noise).to(dev)
        face, disp = out[:, :3], (out[:, 3:5] if out.shape[1] > 3 else None)
        # the detail post-process runs outside the folded graph
        return self.outputs(face, bases, dev, displacement=disp)

    def summary(self) -> dict[str, object]:
        """The backend choice, for /stats and bench output."""
        out: dict[str, object] = (
            self.resolution.summary() if self.resolution is not None else {"backend": self.engine.name}
        )
        if not self.uses_engine():
            out = {
                **out,
                "backend": "eager",
                "note": f"steps/fusion differ from the {self.engine.name} graph",
            }
        return out


def backend_summary(generator: object) -> dict[str, object] | None:
    """The generator backend in use: the resolution of an engine generator, ``eager`` for a
    plain diffusion generator, None for generators without a network (the warp fill)."""
    if isinstance(generator, EngineGenerator):
        return generator.summary()
    if isinstance(generator, DiffusionGenerator):
        return {"backend": "eager", "requested": "eager", "engine": "DiffusionGenerator (torch eager)"}
    return None


def with_backend(
    diffusion: DiffusionGenerator, size: int, config: EngineConfig | None = None
) -> EngineGenerator:
    """Resolve a backend for ``diffusion`` (at start-up, for working size ``size``) and wrap it."""
    config = config or EngineConfig()
    config = replace(config, device=str(diffusion.device), dtype=diffusion.config.dtype)
    resolution = resolve_engine(graph_of(diffusion), size, config)
    return EngineGenerator(diffusion, resolution.engine, resolution)
