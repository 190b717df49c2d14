"""One backend resolver, run once at start-up (never per frame).

- An explicit backend (``eager``, ``compile``, ``onnxruntime``, ``tensorrt``) is built,
  checked for parity and used, or start-up fails with the reason (no silent substitute for
  what the user asked for).
- ``auto`` on a GPU takes the first of TensorRT, compile (CUDA graphs), ONNX Runtime CUDA and
  eager that builds and passes parity; on the CPU it builds every CPU candidate, checks
  parity, times each on a short probe at the working size and takes the fastest.
- Every candidate that is not used is logged (WARNING for a fallback) with its reason:
  ``package missing``, ``no device``, ``build failed``, ``parity failed`` or ``slower``.

Parity: each candidate's faces on a seeded probe condition against the float32 eager graph:
float32 backends within ``max abs <= 2e-3`` and ``PSNR >= 45 dB`` (the export's CI bar),
reduced-precision ones ``PSNR >= 30 dB``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rt_portrait.engines.base import BACKEND_CHOICES, BACKENDS, BackendUnavailable, Engine, Precision
from rt_portrait.engines.graph import GeneratorGraph, LoadedGraph
from rt_portrait.engines.torch_engines import CompileEngine, EagerEngine

log = logging.getLogger(__name__)

GPU_ORDER = ("tensorrt", "compile", "onnxruntime", "eager")
# compile is not a CPU candidate by default: on the 2-core development CPU (session 25, torch
# 2.13, bf16) it saved 6 ms of the network's 30 at one thread but only 1-3 ms of the generator
# stage at two, and inductor's first compile there takes 25-30 s (4-5 s from its cache) on
# every start (bench/bench_engines.py measures all three in one run; README "Engines")
CPU_CANDIDATES = ("onnxruntime", "eager")

PARITY_FP32 = (2e-3, 45.0)  # max abs, min PSNR (dB)
PARITY_REDUCED_PSNR = 30.0


@dataclass
class EngineConfig:
    backend: str = "auto"  # auto, eager, compile, onnxruntime or tensorrt
    device: str = "cpu"
    dtype: str = "auto"  # eager/compile autocast, as DiffusionConfig.dtype
    trt_precision: str = "fp16"  # fp16 or bf16 (fp32 also builds)
    cache_dir: Path | None = None  # ONNX exports and TensorRT plans; None: <rt-portrait cache>/engines
    threads: int | None = None  # ONNX Runtime CPU threads; None: torch's
    cpu_candidates: tuple[str, ...] = CPU_CANDIDATES
    probe_runs: int = 7  # timed runs per CPU candidate, round-robin (after 2 warm-ups)
    check_parity: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKEND_CHOICES)}")


@dataclass(frozen=True)
class Fallback:
    backend: str
    reason: str
    detail: str


@dataclass
class Resolution:
    """The resolver's decision: the engine, and why every other candidate was not chosen."""

    engine: Engine
    requested: str
    fallbacks: list[Fallback] = field(default_factory=list)
    probe_ms: dict[str, float] = field(default_factory=dict)  # CPU auto: median ms per candidate
    parity: dict[str, dict[str, float]] = field(default_factory=dict)  # max_abs, psnr per candidate

    @property
    def backend(self) -> str:
        return self.engine.name

    def summary(self) -> dict[str, object]:
        """JSON-ready, for /stats and bench output."""
        return {
            "backend": self.engine.name,
            "requested": self.requested,
            "engine": self.engine.describe(),
            "fallbacks": [f"{f.backend}: {f.reason} ({f.detail})" for f in self.fallbacks],
            "probe_ms": {k: round(v, 2) for k, v in self.probe_ms.items()},
            "parity": self.parity,
        }


def parity_stats(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max absolute difference and PSNR (peak 1) between two face batches."""
    diff = (out.detach().float().cpu() - ref.detach().float().cpu()).double()
    mse = float((diff**2).mean())
    psnr = float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))
    return {"max_abs": float(diff.abs().max()), "psnr": psnr}


def parity_ok(stats: dict[str, float], precision: str) -> bool:
    if precision == "float32":
        return stats["max_abs"] <= PARITY_FP32[0] and stats["psnr"] >= PARITY_FP32[1]
    return stats["psnr"] >= PARITY_REDUCED_PSNR


def probe_inputs(
    cond_channels: int, size: int, device: torch.device, batch: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded condition in the conditioning's ranges and a starting noise."""
    g = torch.Generator().manual_seed(1234)
    cond = torch.rand(batch, cond_channels, size, size, generator=g) * 2 - 1
    noise = torch.randn(batch, 3, size, size, generator=g)
    return cond.to(device), noise.to(device)


def probe_ms(
    engines: Mapping[str, Engine], cond: torch.Tensor, noise: torch.Tensor, runs: int, warmup: int = 2
) -> dict[str, float]:
    """Median ms of a call per engine, the engines called in turn (round-robin), so that a
    change of load during the probe hits them all alike. Timed one after the other, a burst on
    the shared 2-core machine once made eager's probe 24 ms against its usual 17, and auto took
    ONNX Runtime, which then ran the generator stage at 52 ms instead of 30."""
    sync = torch.cuda.synchronize if cond.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for engine in engines.values():
            engine(cond, noise)
    sync()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine(cond, noise)
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def default_cache_dir() -> Path:
    from rt_portrait.core.assets import cache_dir

    return cache_dir() / "engines"


def engine_factories(loaded: LoadedGraph, config: EngineConfig) -> dict[str, Callable[[], Engine]]:
    """Constructors of every backend for one graph (each raises BackendUnavailable)."""
    device = torch.device(config.device)
    precision = Precision.resolve(config.dtype, device)
    cache = config.cache_dir or default_cache_dir()

    def ort() -> Engine:
        from rt_portrait.engines.onnx_export import cached_onnx
        from rt_portrait.engines.ort import OrtEngine, import_onnxruntime

        import_onnxruntime()  # a missing package is reported before anything is exported
        return OrtEngine(lambda size: cached_onnx(loaded, size, cache), device, config.threads)

    def trt() -> Engine:
        from rt_portrait.engines.trt import import_tensorrt, tensorrt_engine

        import_tensorrt()
        if device.type != "cuda":
            raise BackendUnavailable("tensorrt", "no device", "TensorRT needs a CUDA device")
        return tensorrt_engine(loaded, device, config.trt_precision, cache)

    return {
        "eager": lambda: EagerEngine(loaded.graph, precision),
        "compile": lambda: CompileEngine(loaded.graph, precision),
        "onnxruntime": ort,
        "tensorrt": trt,
    }


def resolve(
    requested: str,
    device: torch.device,
    factories: Mapping[str, Callable[[], Engine]],
    reference: GeneratorGraph,
    size: int,
    cpu_candidates: tuple[str, ...] = CPU_CANDIDATES,
    probe_runs: int = 5,
    check_parity: bool = True,
) -> Resolution:
    """The resolver's loop over candidates (see the module docstring). ``reference``: the
    float32 graph parity is measured against; ``size``: the working size to prepare and probe."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {requested!r}; choose from {', '.join(BACKEND_CHOICES)}")
    ref_device = next(reference.parameters()).device
    cond, noise = probe_inputs(reference.unet.config.cond_channels, size, ref_device)
    with torch.inference_mode():
        ref = reference(cond, noise)
    fallbacks: list[Fallback] = []
    parity: dict[str, dict[str, float]] = {}

    def build(name: str) -> Engine:
        engine = factories[name]()
        try:
            engine.prepare(size)
        except BackendUnavailable:
            raise
        except Exception as e:
            raise BackendUnavailable(name, "build failed", f"{type(e).__name__}: {e}") from e
        if check_parity and name != "eager":  # eager runs the reference graph itself
            try:
                out = engine(cond.to(engine.device), noise.to(engine.device))
            except Exception as e:
                raise BackendUnavailable(name, "build failed", f"first run: {type(e).__name__}: {e}") from e
            stats = parity_stats(out, ref)
            parity[name] = {k: round(v, 6) for k, v in stats.items()}
            if not parity_ok(stats, engine.precision):
                raise BackendUnavailable(
                    name,
                    "parity failed",
                    f"max abs {stats['max_abs']:.3g}, PSNR {stats['psnr']:.1f} dB ({engine.precision})",
                )
        return engine

    def note(err: BackendUnavailable) -> None:
        fallbacks.append(Fallback(err.backend, err.reason, err.detail))
        log.warning("generator backend %s not used: %s: %s", err.backend, err.reason, err.detail)

    if requested != "auto":
        try:
            engine = build(requested)
        except BackendUnavailable as e:
            raise ValueError(f"--backend {requested}: {e.reason}: {e.detail}") from e
        log.info("generator backend: %s", engine.describe())
        return Resolution(engine, requested, fallbacks, {}, parity)

    if device.type == "cuda":
        for name in GPU_ORDER:
            try:
                engine = build(name)
            except BackendUnavailable as e:
                note(e)
                continue
            log.info("generator backend (auto): %s", engine.describe())
            return Resolution(engine, requested, fallbacks, {}, parity)
        raise RuntimeError("no generator backend could be built (see the log)")

    built: dict[str, Engine] = {}
    for name in BACKENDS:
        if name not in cpu_candidates:
            continue
        try:
            built[name] = build(name)
        except BackendUnavailable as e:
            note(e)
    if not built:
        raise RuntimeError("no generator backend could be built on the CPU (see the log)")
    # a many-step graph (the teacher) costs steps forwards a call: keep the probe short
    steps = reference.spec.steps
    runs, warmup = max(2, probe_runs // steps), 2 if steps == 1 else 1
    probed = probe_ms(built, cond, noise, runs, warmup)
    best = min(probed, key=lambda k: probed[k])
    for name, ms in probed.items():
        if name != best:
            fallbacks.append(
                Fallback(name, "slower", f"{ms:.1f} ms vs {best} {probed[best]:.1f} ms at {size}")
            )
            log.info("generator backend %s not used: slower (%.1f ms vs %.1f ms)", name, ms, probed[best])
    engine = built[best]
    log.info("generator backend (auto, CPU probe): %s, %.1f ms at %d", engine.describe(), probed[best], size)
    return Resolution(engine, requested, fallbacks, probed, parity)


def resolve_engine(loaded: LoadedGraph, size: int, config: EngineConfig | None = None) -> Resolution:
    """Resolve the backend for a loaded graph (float32, on ``config.device``)."""
    config = config or EngineConfig()
    device = torch.device(config.device)
    loaded.graph.to(device)
    return resolve(
        config.backend,
        device,
        engine_factories(loaded, config),
        loaded.graph,
        size,
        cpu_candidates=config.cpu_candidates,
        probe_runs=config.probe_runs,
        check_parity=config.check_parity,
    )
