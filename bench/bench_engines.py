"""The 1-step generator at 256^2 under each CPU backend, in one run, with the ratios to eager.

    OMP_NUM_THREADS=1 python -m pytest bench/bench_engines.py --benchmark-enable -s

On a shared machine the sequential pytest-benchmark rows drift with the load; the
``interleaved`` test measures the same backends round-robin and is the fair comparison.

Backends (one torch / ONNX Runtime thread, the product default):

- ``eager``: the generator as it ships (``DiffusionGenerator``: bf16 autocast and channels_last
  on the CPU), the baseline of the ratios;
- ``eager-fp32``: the same in float32 (the reference the exports are checked against);
- ``onnxruntime``: the ONNX export on the CPU provider (float32: ORT has no bf16 convolution
  on a CPU without AMX);
- ``compile``: ``torch.compile`` (inductor, C++ codegen with gcc) of the same graph under the
  same bf16 autocast; its compile time is reported separately.

Goal (issue 11): the best CPU backend at least 1.5x faster than eager, or a reason why not.
The conditioning is real (the registry portrait through the runtime, turned and smiling).
Weights: the shipped 1-step student when installed, otherwise a randomly initialised UNet of
the same shape (speed does not depend on the values).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rt_portrait.core.assets import default_portrait
from rt_portrait.engines.base import Engine, Precision
from rt_portrait.engines.generator import graph_of
from rt_portrait.engines.onnx_export import export_onnx
from rt_portrait.engines.ort import OrtEngine
from rt_portrait.engines.resolver import parity_stats
from rt_portrait.engines.torch_engines import CompileEngine, EagerEngine, compiler_available
from rt_portrait.generator.conditioning import build_condition_batch
from rt_portrait.generator.diffusion import DEFAULT_WEIGHTS, DiffusionConfig, DiffusionGenerator, save_weights
from rt_portrait.generator.types import GeneratorInput, GeneratorOutput
from rt_portrait.generator.unet import ConditionalUNet
from rt_portrait.generator.warp_fill import WarpFillGenerator

SIZE = 256
RESULTS: dict[str, float] = {}  # median ms per backend, filled by the benchmarks below
NOTES: dict[str, str] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    if DEFAULT_WEIGHTS.is_file():
        NOTES["weights"] = f"shipped {DEFAULT_WEIGHTS.name}"
        return DEFAULT_WEIGHTS
    torch.manual_seed(0)
    unet = ConditionalUNet()
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_weights(unet, path, residual_scale=2.0)
    NOTES["weights"] = "random init (no shipped weights installed)"
    return path


@pytest.fixture(scope="module")
def generator(weights) -> DiffusionGenerator:
    return DiffusionGenerator(DiffusionConfig(weights=weights, steps=1))


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """One real condition at 256 (the runtime's own conditioning) and the fixed noise."""
    from rt_portrait.head.types import Edits
    from rt_portrait.pipeline import Animator, AnimatorConfig

    seen: list[GeneratorInput] = []
    warp = WarpFillGenerator()

    def capture(x: GeneratorInput) -> GeneratorOutput:
        seen.append(x)
        return warp(x)

    animator = Animator(default_portrait("astronaut"), AnimatorConfig(size=SIZE), generator=capture)
    animator.render_edits(Edits(yaw=20.0, smile=0.6, jaw_open=0.4))
    with torch.inference_mode():
        cond = build_condition_batch(seen[:1])
    noise = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return cond, noise


def _run(benchmark, name: str, engine: Engine, inputs) -> torch.Tensor:
    cond, noise = inputs
    out = benchmark.pedantic(lambda: engine(cond, noise), rounds=25, warmup_rounds=3)
    assert out.shape == (1, 3, SIZE, SIZE)
    if benchmark.stats is not None:  # None under --benchmark-disable (the test suite's default)
        RESULTS[name] = benchmark.stats.stats.median * 1e3
    return out


def test_eager(benchmark, generator, inputs) -> None:
    benchmark.group = "generator 1-step 256"
    engine = EagerEngine(
        graph_of(generator).graph, Precision.resolve(generator.config.dtype, generator.device)
    )
    _run(benchmark, "eager", engine, inputs)


def test_eager_fp32(benchmark, generator, inputs) -> None:
    benchmark.group = "generator 1-step 256"
    _run(benchmark, "eager-fp32", EagerEngine(graph_of(generator).graph, Precision("float32")), inputs)


def test_onnxruntime(benchmark, generator, inputs, tmp_path) -> None:
    benchmark.group = "generator 1-step 256"
    loaded = graph_of(generator)
    info = export_onnx(loaded, tmp_path / "g.onnx", SIZE)
    engine = OrtEngine.from_files([info.path], threads=1)
    out = _run(benchmark, "onnxruntime", engine, inputs)
    with torch.inference_mode():
        ref = loaded.graph(*inputs)
    stats = parity_stats(out, ref)
    NOTES["onnxruntime parity"] = f"max abs {stats['max_abs']:.2e}, PSNR {stats['psnr']:.1f} dB vs eager fp32"
    assert stats["max_abs"] <= 2e-3


@pytest.mark.skipif(not compiler_available(), reason="inductor's CPU backend needs a C++ compiler")
def test_compile(benchmark, generator, inputs) -> None:
    benchmark.group = "generator 1-step 256"
    engine = CompileEngine(
        graph_of(generator).graph, Precision.resolve(generator.config.dtype, generator.device)
    )
    t0 = time.perf_counter()
    engine.prepare(SIZE)
    NOTES["compile time"] = f"{time.perf_counter() - t0:.0f} s (first call, inductor cache as found)"
    _run(benchmark, "compile", engine, inputs)


def test_interleaved(generator, inputs, tmp_path) -> None:
    """The same backends measured round-robin (one call each per round), so that the load of a
    shared machine falls on all of them alike; prints median and min ms and the ratios."""
    if not compiler_available():
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    cond, noise = inputs
    loaded = graph_of(generator)
    precision = Precision.resolve(generator.config.dtype, generator.device)
    engines: dict[str, Engine] = {
        "eager": EagerEngine(loaded.graph, precision),
        "eager-fp32": EagerEngine(loaded.graph, Precision("float32")),
        "onnxruntime": OrtEngine.from_files([export_onnx(loaded, tmp_path / "g.onnx", SIZE).path], threads=1),
        "compile": CompileEngine(loaded.graph, precision),
    }
    engines["compile"].prepare(SIZE)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(3):
        for e in engines.values():
            e(cond, noise)
    for _ in range(int(os.environ.get("RT_BENCH_ROUNDS", "30"))):
        for name, e in engines.items():
            t0 = time.perf_counter()
            e(cond, noise)
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: float(np.min(v)) for k, v in times.items()}
    lines = [
        f"interleaved, {len(times['eager'])} rounds: backend, median ms, min ms, x eager (median), x eager (min)"
    ]
    for name in sorted(med, key=lambda k: med[k]):
        lines.append(
            f"{name:<14}{med[name]:>8.1f}{low[name]:>8.1f}{med['eager'] / med[name]:>8.2f}{low['eager'] / low[name]:>8.2f}"
        )
    print("\n" + "\n".join(lines))
    assert all(np.isfinite(v) for v in med.values())


def test_in_loop_interleaved(generator, tmp_path) -> None:
    """The generator stage inside the whole animate loop (tracking, flow, history and compose
    between its calls), one session per backend, fed the same driver frames round-robin."""
    if not compiler_available():
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    from rt_portrait.core.assets import pyfeat_file
    from rt_portrait.core.video import read_frames
    from rt_portrait.engines.generator import with_backend
    from rt_portrait.engines.resolver import EngineConfig
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking import fit_long_side

    frames = [
        fit_long_side(f, SIZE)
        for f in read_frames(
            pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=int(os.environ.get("RT_BENCH_FRAMES", "40"))
        )
    ]
    source = fit_long_side(default_portrait("astronaut"), SIZE)
    sessions = {}
    for name in ("eager", "onnxruntime", "compile"):
        gen = with_backend(generator, SIZE, EngineConfig(backend=name, cache_dir=tmp_path, threads=1))
        sessions[name] = Animator(source, AnimatorConfig(size=SIZE), generator=gen).session(fps=24.0)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    totals: dict[str, list[float]] = {k: [] for k in sessions}
    for i, frame in enumerate(frames):
        for name, session in sessions.items():
            out = session(frame)
            if i >= 5:
                times[name].append(out.timings_ms["generator"])
                totals[name].append(out.timings_ms["total"])
    for session in sessions.values():
        session.close()
    med = {k: float(np.median(v)) for k, v in times.items()}
    lines = [
        f"in the loop at {SIZE}^2, {len(times['eager'])} frames each: backend, generator ms, x eager, loop ms, fps"
    ]
    for name in sorted(med, key=lambda k: med[k]):
        total = float(np.median(totals[name]))
        lines.append(
            f"{name:<14}{med[name]:>8.1f}{med['eager'] / med[name]:>8.2f}{total:>8.1f}{1000 / total:>8.1f}"
        )
    print("\n" + "\n".join(lines))
    assert all(np.isfinite(v) for v in med.values())


def test_ratios() -> None:
    """The table: ms per backend and the speed-up over eager (printed with -s)."""
    if "eager" not in RESULTS:
        pytest.skip("timings need --benchmark-enable")
    base = RESULTS["eager"]
    lines = [f"generator 1-step at {SIZE}^2, 1 thread, {torch.__version__}, {NOTES.get('weights', '')}"]
    lines.append(f"{'backend':<14}{'median ms':>10}{'x eager':>9}")
    for name, ms in sorted(RESULTS.items(), key=lambda kv: kv[1]):
        lines.append(f"{name:<14}{ms:>10.1f}{base / ms:>9.2f}")
    lines += [f"{k}: {v}" for k, v in NOTES.items() if k != "weights"]
    best = min(RESULTS, key=lambda k: RESULTS[k])
    lines.append(f"best: {best}, {base / RESULTS[best]:.2f}x eager (goal 1.5x)")
    print("\n" + "\n".join(lines))
