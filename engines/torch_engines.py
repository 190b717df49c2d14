"""The torch backends: eager, and ``torch.compile`` (inductor; CUDA graphs on CUDA)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from rt_portrait.core.cpu import casts_weights
from rt_portrait.engines.base import BackendUnavailable, Precision, check_batch
from rt_portrait.engines.graph import GeneratorGraph


def working_graph(graph: GeneratorGraph, precision: Precision) -> tuple[GeneratorGraph, Precision]:
    """The graph a torch backend runs, and the autocast it runs under: a copy cast to the
    working precision where that is faster than autocast (``core.cpu.casts_weights``, then
    with no autocast), else the graph itself."""
    device = next(graph.parameters()).device
    if casts_weights(device, precision.name):
        return graph.cast(precision.torch_dtype), Precision("float32")
    return graph, precision


class EagerEngine:
    """The graph in torch eager at the working precision (what DiffusionGenerator itself runs)."""

    name = "eager"

    def __init__(self, graph: GeneratorGraph, precision: Precision) -> None:
        self.device = next(graph.parameters()).device
        self.graph, self._precision = working_graph(graph.eval(), precision)
        self.precision = precision.name

    @torch.inference_mode()
    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        check_batch(cond, noise)
        with self._precision.autocast(self.device):
            return self.graph(cond, noise).float()

    def prepare(self, size: int) -> None:
        pass  # nothing to build

    def is_prepared(self, size: int) -> bool:
        return True

    def describe(self) -> str:
        return f"eager ({self.precision}, {self.device.type})"


def compiler_available() -> bool:
    """Inductor's CPU backend needs a C++ compiler on PATH."""
    return (
        shutil.which("g++") is not None
        or shutil.which("clang++") is not None
        or shutil.which("c++") is not None
    )


class CompileEngine:
    """``torch.compile`` of the graph: inductor, and on CUDA ``mode="reduce-overhead"`` (CUDA
    graphs: one replay per call instead of a launch per kernel).

    ``prepare`` compiles for a size at start-up (batch 1); other batch sizes compile on first
    use (``dynamic=False``: a specialised graph per shape is faster than a symbolic one, and a
    session only ever sees a handful of batch sizes).
    """

    name = "compile"

    def __init__(self, graph: GeneratorGraph, precision: Precision, mode: str | None = None) -> None:
        self.device = next(graph.parameters()).device
        self.graph, self._precision = working_graph(graph.eval(), precision)
        self.precision = precision.name
        if self.device.type == "cpu" and not compiler_available():
            raise BackendUnavailable(
                "compile", "package missing", "no C++ compiler on PATH (inductor's CPU backend)"
            )
        self.mode = (
            mode if mode is not None else ("reduce-overhead" if self.device.type == "cuda" else "default")
        )
        # CUDA graph replays share static buffers, and the server's sessions share the generator
        self._prepared: set[int] = set()  # sizes compiled by prepare (others would compile on first use)
        self._lock: AbstractContextManager[object] = (
            threading.Lock() if self.mode == "reduce-overhead" else nullcontext()
        )
        try:
            self._fn: Callable[..., torch.Tensor] = torch.compile(self.graph, mode=self.mode, dynamic=False)
        except Exception as e:  # e.g. an unsupported Python for dynamo
            raise BackendUnavailable("compile", "build failed", f"{type(e).__name__}: {e}") from e

    @torch.inference_mode()
    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        check_batch(cond, noise)
        with self._lock, self._precision.autocast(self.device):
            out = self._fn(cond, noise).float()
            # the next replay overwrites the graph's output buffer: hand out a copy
            return out.clone() if self.mode == "reduce-overhead" else out

    def prepare(self, size: int) -> None:
        nc = self.graph.unet.config.cond_channels
        cond = torch.zeros(1, nc, size, size, device=self.device)
        noise = torch.zeros(1, 3, size, size, device=self.device)
        try:
            for _ in range(2 if self.mode == "reduce-overhead" else 1):  # CUDA graphs record on a later call
                self(cond, noise)
        except Exception as e:
            raise BackendUnavailable("compile", "build failed", f"{type(e).__name__}: {e}") from e
        self._prepared.add(size)

    def is_prepared(self, size: int) -> bool:
        return size in self._prepared

    def describe(self) -> str:
        return f"compile (inductor, mode {self.mode}, {self.precision}, {self.device.type})"
