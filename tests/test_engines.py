"""Engines: the folded graph, ONNX export and parity, the backends, the resolver and its fallbacks.

Weights: the shipped generator when installed, and always a randomly initialised UNet saved
in the same format (its zero-initialised last layer re-drawn, so the residual is not zero and
parity means something).
"""

from __future__ import annotations

import builtins
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rt_portrait.core.assets import default_portrait_landmarks
from rt_portrait.engines.base import BackendUnavailable, Precision
from rt_portrait.engines.graph import GeneratorGraph, GraphSpec, LoadedGraph, load_graph
from rt_portrait.engines.resolver import (
    CPU_CANDIDATES,
    EngineConfig,
    parity_stats,
    resolve,
    resolve_engine,
)
from rt_portrait.engines.torch_engines import EagerEngine
from rt_portrait.generator.conditioning import NUM_CHANNELS, build_condition_batch
from rt_portrait.generator.diffusion import DEFAULT_WEIGHTS, DiffusionConfig, DiffusionGenerator, save_weights
from rt_portrait.generator.types import GeneratorInput, GeneratorOutput
from rt_portrait.generator.unet import ConditionalUNet, UNetConfig
from rt_portrait.generator.warp_fill import WarpFillGenerator
from rt_portrait.tracking.types import TrackResult

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    unet = ConditionalUNet(UNetConfig())
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    torch.nn.init.normal_(unet.out.bias, std=0.05)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(unet, path, residual_scale=2.0, extra={"note": "random init for engine tests"})
    return path


WEIGHTS = ["random"] + (["shipped"] if DEFAULT_WEIGHTS.is_file() else [])


@pytest.fixture(scope="module", params=WEIGHTS)
def weights(request, random_weights) -> Path:
    return random_weights if request.param == "random" else DEFAULT_WEIGHTS


class _Capture:
    """A generator that records its inputs and answers like the warp fill."""

    def __init__(self) -> None:
        self.inputs: list[GeneratorInput] = []
        self.warp = WarpFillGenerator()

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        self.inputs.append(inputs)
        return self.warp(inputs)


@pytest.fixture(scope="module")
def real_inputs(astronaut) -> list[GeneratorInput]:
    """Generator inputs from the runtime itself: the registry portrait, turned and smiling."""
    from rt_portrait.head.types import Edits
    from rt_portrait.pipeline import Animator, AnimatorConfig

    cap = _Capture()
    # the packaged landmarks, not the tracker: these tests also run on GPU machines without mediapipe
    track = TrackResult.from_landmarks(default_portrait_landmarks("astronaut"), astronaut.shape[:2])
    # still_sigma None: only the two frames' inputs (no measurement of the still source)
    config = AnimatorConfig(size=128, still_sigma=None)
    animator = Animator(astronaut, config, generator=cap, source_track=track)
    animator.render_edits(Edits(yaw=20.0, smile=0.6, jaw_open=0.4))
    animator.render_edits(Edits(pitch=-10.0, blink_left=1.0))
    assert len(cap.inputs) == 2
    return cap.inputs


@pytest.fixture(scope="module")
def real_cond(real_inputs) -> torch.Tensor:
    cond = build_condition_batch(real_inputs)
    assert cond.shape == (2, NUM_CHANNELS, 128, 128)
    return cond


def _noise(n: int, size: int) -> torch.Tensor:
    return (
        torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        .expand(n, -1, -1, -1)
        .contiguous()
    )


def test_graph_matches_the_diffusion_generator(random_weights, real_inputs) -> None:
    """The folded graph computes the diffusion generator's face exactly (float32), for 1 and 2
    steps and with fusion weights."""
    for steps, mw in ((1, 1.0), (2, 1.0), (1, 1.5)):
        gen = DiffusionGenerator(
            # the texture match and the source detail split run around the graph
            # (test_engine_generator_matches_...): off here
            DiffusionConfig(
                weights=random_weights,
                steps=steps,
                motion_weight=mw,
                dtype="float32",
                texture_gain=1,
                source_detail=0,
            )
        )
        want = torch.stack([o.face for o in gen.generate_batch(real_inputs)])
        loaded = load_graph(random_weights, GraphSpec(steps=steps, motion_weight=mw))
        with torch.inference_mode():
            cond = build_condition_batch(real_inputs)
            got = loaded.graph(cond, gen.noise(128, 128).expand(len(real_inputs), -1, -1, -1))
        assert torch.allclose(got, want, atol=1e-5), (steps, mw, float((got - want).abs().max()))
        # and the residual is really there: the face is not the warp
        warped = torch.stack([x.warped for x in real_inputs])
        assert float((got - warped).abs().mean()) > 1e-3


@pytest.mark.parametrize("prediction", ["sample", "velocity", "regression"])
def test_graph_follows_every_prediction_type(prediction, real_inputs, tmp_path) -> None:
    torch.manual_seed(3)
    unet = ConditionalUNet()
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    path = tmp_path / f"{prediction}.safetensors"
    save_weights(unet, path, residual_scale=2.0, prediction=prediction)
    gen = DiffusionGenerator(
        DiffusionConfig(weights=path, steps=2, dtype="float32", texture_gain=1, source_detail=0)
    )
    want = torch.stack([o.face for o in gen.generate_batch(real_inputs)])
    loaded = load_graph(path, GraphSpec(steps=2))
    assert loaded.graph.prediction == prediction
    with torch.inference_mode():
        got = loaded.graph(build_condition_batch(real_inputs), gen.noise(128, 128).expand(2, -1, -1, -1))
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_onnx_export_checks_and_metadata(random_weights, tmp_path) -> None:
    from rt_portrait.engines.graph import file_hash
    from rt_portrait.engines.onnx_export import export_onnx, read_onnx_info

    loaded = load_graph(random_weights, GraphSpec(steps=2))
    info = export_onnx(loaded, tmp_path / "g.onnx", 64)
    model = onnx.load(str(info.path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["cond", "noise"]
    assert [o.name for o in model.graph.output] == ["face"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [NUM_CHANNELS, 64, 64]
    assert info.size == 64 and info.steps == 2 and info.precision == "float32"
    assert info.weights_hash == file_hash(random_weights)
    assert info.channel_layout == "rt-portrait-cond-v1" and info.cond_channels == NUM_CHANNELS
    # the sampler loop is unrolled: no Loop/If nodes, two UNet passes (two stems)
    ops = [n.op_type for n in model.graph.node]
    assert "Loop" not in ops and "If" not in ops
    assert sum(1 for n in model.graph.node if "stem_x" in n.name and n.op_type == "Conv") == 2
    assert read_onnx_info(info.path) == info


def test_onnx_export_rejects_bad_sizes_and_files(random_weights, tmp_path) -> None:
    from rt_portrait.engines.onnx_export import export_onnx, read_onnx_info

    loaded = load_graph(random_weights)
    with pytest.raises(ValueError, match="divisible by 8"):
        export_onnx(loaded, tmp_path / "g.onnx", 60)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(loaded, tmp_path / "g.onnx", 64, opset=13)
    bare = tmp_path / "bare.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(bare))
    with pytest.raises(ValueError, match="not an rt-portrait generator"):
        read_onnx_info(bare)


def test_onnxruntime_cpu_parity_on_real_conditioning(weights, real_cond, tmp_path) -> None:
    """The issue's bar: ONNX Runtime CPU vs torch on real conditioning tensors, fp32:
    max abs diff <= 2e-3 and PSNR >= 45 dB, for a batch of 2 and a batch of 1."""
    from rt_portrait.engines.onnx_export import export_onnx
    from rt_portrait.engines.ort import OrtEngine

    for steps in (1, 2):
        loaded = load_graph(weights, GraphSpec(steps=steps))
        info = export_onnx(loaded, tmp_path / f"g{steps}.onnx", 128)
        engine = OrtEngine.from_files([info.path], threads=1)
        for n in (2, 1):
            cond, noise = real_cond[:n], _noise(n, 128)
            with torch.inference_mode():
                want = loaded.graph(cond, noise)
            got = engine(cond, noise)
            assert got.shape == (n, 3, 128, 128) and got.dtype == torch.float32
            stats = parity_stats(got, want)
            assert stats["max_abs"] <= 2e-3, stats
            assert stats["psnr"] >= 45.0, stats


def test_onnxruntime_io_binding_path(random_weights, real_cond, tmp_path) -> None:
    """The I/O-binding path CUDA uses (torch tensors bound in place), run on the CPU device."""
    from rt_portrait.engines.onnx_export import export_onnx
    from rt_portrait.engines.ort import OrtEngine

    info = export_onnx(load_graph(random_weights), tmp_path / "g.onnx", 128)
    plain = OrtEngine.from_files([info.path], threads=1)
    bound = OrtEngine.from_files([info.path], threads=1, io_binding=True)
    assert not plain.io_binding and bound.io_binding and "I/O binding" in bound.describe()
    noise = _noise(2, 128)
    assert torch.equal(bound(real_cond, noise), plain(real_cond, noise))


def test_every_cpu_backend_takes_a_batch(random_weights, real_cond, tmp_path) -> None:
    """N conditions in, N faces out, each face that of its own condition."""
    loaded = load_graph(random_weights)
    res = resolve_engine(loaded, 128, EngineConfig(backend="onnxruntime", cache_dir=tmp_path, threads=1))
    eager = EagerEngine(loaded.graph, Precision("float32"))
    cond = torch.cat([real_cond, real_cond.flip(0)])
    noise = _noise(4, 128)
    for engine in (eager, res.engine):
        out = engine(cond, noise)
        assert out.shape == (4, 3, 128, 128)
        assert torch.allclose(out[0], out[3], atol=1e-5) and torch.allclose(out[1], out[2], atol=1e-5)
        single = engine(cond[1:2], noise[1:2])
        assert torch.allclose(out[1:2], single, atol=1e-4)
        assert float((out[0] - out[1]).abs().mean()) > 1e-3


def test_engine_generator_matches_the_diffusion_generator(random_weights, real_inputs, tmp_path) -> None:
    from rt_portrait.engines.generator import EngineGenerator, with_backend

    gen = DiffusionGenerator(DiffusionConfig(weights=random_weights, dtype="float32"))
    want = gen.generate_batch(real_inputs)
    # the sharp registry photo is split (DiffusionConfig.source_detail's default): around the
    # engine's graph as around the eager sampler
    assert gen.source_sigma(real_inputs[0]) > 0
    for backend in ("eager", "onnxruntime"):
        eg = with_backend(gen, 128, EngineConfig(backend=backend, cache_dir=tmp_path, threads=1))
        assert isinstance(eg, EngineGenerator) and eg.engine.name == backend
        got = eg.generate_batch(real_inputs)
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g.face, w.face, atol=2e-3)
            assert torch.equal(g.alpha, w.alpha)
        one = eg(real_inputs[0])
        assert torch.allclose(one.face, got[0].face, atol=1e-4)
        assert eg.summary()["backend"] == backend
        assert isinstance(eg, DiffusionGenerator) and eg.model is gen.model  # shared, not reloaded
    # a view with another step count (a degrading server) is not the folded graph: eager path
    from rt_portrait.generator.select import generator_kind, with_steps

    two = with_steps(eg, 2)
    assert generator_kind(eg) == "diffusion" and not two.uses_engine() and eg.uses_engine()
    want2 = DiffusionGenerator(DiffusionConfig(weights=random_weights, steps=2, dtype="float32"))(
        real_inputs[0]
    )
    assert torch.allclose(two(real_inputs[0]).face, want2.face, atol=1e-5)
    assert two.summary()["backend"] == "eager"
    # the warp-detail and texture post-processes run after the engine's graph, as after the
    # eager sampler (the texture match is on in both generators: DiffusionConfig's default)
    from dataclasses import replace

    sharp = DiffusionGenerator(DiffusionConfig(weights=random_weights, dtype="float32", detail=2.0))
    eg.config = replace(eg.config, detail=2.0)
    assert eg.uses_engine()  # detail is not part of the folded graph
    for g, w in zip(eg.generate_batch(real_inputs), sharp.generate_batch(real_inputs), strict=True):
        assert torch.allclose(g.face, w.face, atol=2e-3)


def test_bfloat16_on_the_cpu_runs_a_cast_copy_near_float32(random_weights, real_inputs, real_cond) -> None:
    # bf16 on the CPU runs a copy of the UNet cast to bf16, not float32 under autocast
    # (core.cpu.casts_weights: faster there); the float32 module that graphs, exports and
    # parity read is left as it is
    full = DiffusionGenerator(DiffusionConfig(weights=random_weights, dtype="float32"))
    half = DiffusionGenerator(DiffusionConfig(weights=random_weights, dtype="bfloat16"))
    assert full.net is full.model and half.net is not half.model
    assert next(half.model.parameters()).dtype == torch.float32
    assert next(half.net.parameters()).dtype == torch.bfloat16
    for got, want in zip(half.generate_batch(real_inputs), full.generate_batch(real_inputs), strict=True):
        assert got.face.dtype == torch.float32
        assert parity_stats(got.face, want.face)["psnr"] >= 30  # the reduced-precision bar
    graph = load_graph(random_weights).graph
    eager = EagerEngine(graph, Precision("bfloat16"))
    assert eager.precision == "bfloat16"
    assert next(graph.unet.parameters()).dtype == torch.float32
    assert next(eager.graph.unet.parameters()).dtype == torch.bfloat16
    noise = _noise(real_cond.shape[0], real_cond.shape[-1])
    with torch.inference_mode():
        stats = parity_stats(eager(real_cond, noise), graph(real_cond, noise))
    assert 30 <= stats["psnr"] < 100  # close, and not the float32 graph itself


def test_onnx_cache_is_reused_and_keyed_by_weights(random_weights, tmp_path) -> None:
    from rt_portrait.engines.onnx_export import cached_onnx

    loaded = load_graph(random_weights)
    a = cached_onnx(loaded, 64, tmp_path)
    mtime = a.path.stat().st_mtime_ns
    b = cached_onnx(loaded, 64, tmp_path)
    assert b.path == a.path and b.path.stat().st_mtime_ns == mtime  # not exported again
    c = cached_onnx(load_graph(random_weights, GraphSpec(steps=2)), 64, tmp_path)
    assert c.path != a.path and c.steps == 2
    a.path.write_bytes(b"truncated")  # an interrupted export is redone, not trusted
    assert cached_onnx(loaded, 64, tmp_path).onnx_hash == a.onnx_hash


# ---------------------------------------------------------------- the resolver


class _Fake:
    """An engine that runs the reference graph, optionally wrong or broken."""

    def __init__(self, name: str, graph: GeneratorGraph, offset: float = 0.0, broken: bool = False) -> None:
        self.name = name
        self.graph = graph
        self.device = torch.device("cpu")
        self.precision = "float32"
        self.offset = offset
        self.broken = broken

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.graph(cond, noise) + self.offset

    def prepare(self, size: int) -> None:
        if self.broken:
            raise RuntimeError("simulated build error")

    def describe(self) -> str:
        return f"fake {self.name}"


def _unavailable(name: str, reason: str):
    def make():
        raise BackendUnavailable(name, reason, "simulated")

    return make


@pytest.fixture(scope="module")
def small_graph(random_weights) -> GeneratorGraph:
    return load_graph(random_weights).graph


def test_auto_on_a_gpu_takes_the_first_that_works_in_order(small_graph, caplog) -> None:
    """TensorRT, then compile, then ONNX Runtime CUDA, then eager; each skip logged with its reason."""
    g = small_graph
    factories = {
        "tensorrt": _unavailable("tensorrt", "package missing"),
        "compile": lambda: _Fake("compile", g, broken=True),
        "onnxruntime": lambda: _Fake("onnxruntime", g, offset=0.1),
        "eager": lambda: _Fake("eager", g),
    }
    with caplog.at_level(logging.WARNING, logger="rt_portrait.engines.resolver"):
        res = resolve("auto", torch.device("cuda"), factories, g, 32)
    assert res.backend == "eager"
    assert [(f.backend, f.reason) for f in res.fallbacks] == [
        ("tensorrt", "package missing"),
        ("compile", "build failed"),
        ("onnxruntime", "parity failed"),
    ]
    for name in ("tensorrt", "compile", "onnxruntime"):
        assert any(name in r.getMessage() for r in caplog.records)
    summary = res.summary()
    assert summary["backend"] == "eager" and len(summary["fallbacks"]) == 3  # type: ignore[arg-type]

    factories["tensorrt"] = lambda: _Fake("tensorrt", g)
    assert resolve("auto", torch.device("cuda"), factories, g, 32).backend == "tensorrt"


def test_auto_on_the_cpu_takes_the_faster(small_graph) -> None:
    import time as _time

    g = small_graph

    class Slow(_Fake):
        def __call__(self, cond, noise):
            # a margin no scheduling hiccup of a loaded machine reaches (20 ms did, beside a
            # second test run)
            _time.sleep(0.1)
            return super().__call__(cond, noise)

    factories = {
        "eager": lambda: Slow("eager", g),
        "onnxruntime": lambda: _Fake("onnxruntime", g),
        "compile": _unavailable("compile", "build failed"),
        "tensorrt": _unavailable("tensorrt", "package missing"),
    }
    res = resolve("auto", torch.device("cpu"), factories, g, 32, probe_runs=3)
    assert res.backend == "onnxruntime"
    assert set(res.probe_ms) == set(CPU_CANDIDATES)
    assert [(f.backend, f.reason) for f in res.fallbacks] == [("eager", "slower")]
    # the probe runs only the CPU candidates (compile is not one by default)
    res = resolve(
        "auto", torch.device("cpu"), factories, g, 32, cpu_candidates=("eager", "compile"), probe_runs=1
    )
    assert res.backend == "eager" and res.fallbacks[0].reason == "build failed"


def test_the_cpu_probe_takes_turns_so_a_burst_of_load_hits_every_candidate(small_graph) -> None:
    import time as _time

    from rt_portrait.engines.resolver import probe_ms

    calls: list[str] = []

    class Timed(_Fake):
        def __init__(self, name: str, cost_s: float) -> None:
            super().__init__(name, small_graph)
            self.cost_s = cost_s

        def __call__(self, cond, noise):
            calls.append(self.name)
            timed = len(calls) - 2  # after one warm-up round of the two
            burst = 0.2 if 0 < timed <= 4 else 0.0  # the machine busy for a moment
            _time.sleep(self.cost_s + burst)
            return noise

    engines = {"fast": Timed("fast", 0.0), "slow": Timed("slow", 0.05)}
    cond, noise = torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8)
    got = probe_ms(engines, cond, noise, runs=5, warmup=1)
    assert calls == ["fast", "slow"] * 6  # in turn: the burst took two runs of each
    assert got["fast"] < 40 < got["slow"] < 200  # timed one after the other, "fast" lost 4 of 5


def test_onnxruntime_does_not_spin_between_runs(random_weights, tmp_path) -> None:
    """ORT's CPU pool busy-waits by default, taking the cores the rest of the frame needs."""
    from rt_portrait.engines.onnx_export import export_onnx
    from rt_portrait.engines.ort import OrtEngine

    info = export_onnx(load_graph(random_weights), tmp_path / "g.onnx", 64)
    engine = OrtEngine.from_files([info.path], threads=2)
    options = engine._session(64).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_explicit_backend_that_fails_is_an_error_naming_the_reason(small_graph) -> None:
    g = small_graph
    factories = {
        "eager": lambda: _Fake("eager", g),
        "onnxruntime": lambda: _Fake("onnxruntime", g, offset=0.5),
    }
    with pytest.raises(ValueError, match="onnxruntime: parity failed"):
        resolve("onnxruntime", torch.device("cpu"), factories, g, 32)
    with pytest.raises(ValueError, match="unknown backend"):
        resolve("fastest", torch.device("cpu"), factories, g, 32)
    with pytest.raises(ValueError, match="unknown backend"):
        EngineConfig(backend="triton")


def _hide(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail as it does when the package is not installed."""
    for name in names:
        for mod in list(sys.modules):
            if mod == name or mod.startswith(name + "."):
                monkeypatch.delitem(sys.modules, mod)
    real_import = builtins.__import__

    def fake_import(name_, *args, **kwargs):
        if name_.split(".")[0] in names:
            raise ImportError(f"No module named {name_!r} (hidden by the test)")
        return real_import(name_, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_auto_without_onnxruntime_falls_back_to_eager(random_weights, tmp_path, monkeypatch, caplog) -> None:
    _hide(monkeypatch, "onnxruntime")
    loaded = load_graph(random_weights)
    with caplog.at_level(logging.WARNING, logger="rt_portrait.engines.resolver"):
        res = resolve_engine(loaded, 32, EngineConfig(cache_dir=tmp_path, probe_runs=1))
    assert res.backend == "eager"
    assert [(f.backend, f.reason) for f in res.fallbacks] == [("onnxruntime", "package missing")]
    assert "onnxruntime" in caplog.text and "package missing" in caplog.text
    assert not list(tmp_path.glob("*.onnx"))  # nothing exported for a backend that cannot run
    with pytest.raises(ValueError, match="onnxruntime: package missing"):
        resolve_engine(loaded, 32, EngineConfig(backend="onnxruntime", cache_dir=tmp_path))


def test_tensorrt_missing_or_without_a_gpu_is_reported(random_weights, tmp_path, monkeypatch) -> None:
    loaded = load_graph(random_weights)
    _hide(monkeypatch, "tensorrt")
    with pytest.raises(ValueError, match="tensorrt: package missing"):
        resolve_engine(loaded, 32, EngineConfig(backend="tensorrt", cache_dir=tmp_path))
    monkeypatch.undo()
    # with a (fake) tensorrt module importable, a CPU device is "no device"
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    with pytest.raises(ValueError, match="tensorrt: no device"):
        resolve_engine(loaded, 32, EngineConfig(backend="tensorrt", cache_dir=tmp_path))


def test_compile_without_a_compiler_is_package_missing(small_graph, monkeypatch) -> None:
    from rt_portrait.engines import torch_engines

    monkeypatch.setattr(torch_engines.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailable) as err:
        torch_engines.CompileEngine(small_graph, Precision("float32"))
    assert err.value.reason == "package missing"


def test_auto_on_the_cpu_with_real_backends(random_weights, tmp_path) -> None:
    """The real resolver on this CPU: eager and ONNX Runtime both build, ORT passes parity,
    the faster one is chosen and the other is reported as slower."""
    loaded = load_graph(random_weights)
    res = resolve_engine(loaded, 64, EngineConfig(cache_dir=tmp_path, probe_runs=2, threads=1))
    assert res.backend in CPU_CANDIDATES
    assert set(res.probe_ms) == set(CPU_CANDIDATES)
    assert res.parity["onnxruntime"]["max_abs"] <= 2e-3
    assert [f.reason for f in res.fallbacks] == ["slower"]
    assert np.isfinite(res.probe_ms[res.backend])


def test_precision_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert Precision.resolve("auto", torch.device("cpu")).name == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert Precision.resolve("auto", torch.device("cpu")).name == "float32"  # emulated bf16 is slower
    assert Precision.resolve("auto", torch.device("cuda")).name == "float16"
    with pytest.raises(ValueError, match="unknown dtype"):
        Precision.resolve("int8", torch.device("cpu"))
    spec = GraphSpec()
    assert replace(spec, steps=2).steps == 2
    with pytest.raises(ValueError, match="steps"):
        GraphSpec(steps=0)
    with pytest.raises(ValueError, match="sampler"):
        GraphSpec(sampler="ddim")
    assert isinstance(LoadedGraph, type)


def test_server_stats_name_the_backend(random_weights) -> None:
    from rt_portrait.server.app import ServerConfig, ServerState

    state = ServerState(
        ServerConfig(generator="diffusion", generator_weights=str(random_weights), backend="eager", size=64)
    )
    try:
        assert state.backend_summary() is None  # nothing built yet
        assert state.generator is not None
        summary = state.backend_summary()
        assert summary is not None and summary["backend"] == "eager" and summary["requested"] == "eager"
    finally:
        state.build_executor.shutdown()
    warp = ServerState(ServerConfig(generator="warp"))
    try:
        assert warp.generator is not None and warp.backend_summary() is None
    finally:
        warp.build_executor.shutdown()


def test_bench_flag_for_the_flow_is_renamed() -> None:
    from rt_portrait.cli import build_parser

    args = build_parser().parse_args(["bench", "--flow-backend", "torch", "--backend", "onnxruntime"])
    assert (args.flow_backend, args.backend) == ("torch", "onnxruntime")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--backend", "triton"])  # the flow's values are not engines


def test_animator_config_backend_reaches_the_generator(
    astronaut, random_weights, tmp_path, monkeypatch
) -> None:
    from rt_portrait.head.types import Edits
    from rt_portrait.pipeline import Animator, AnimatorConfig

    monkeypatch.setenv("RT_PORTRAIT_CACHE", str(tmp_path))  # exports land in the test's folder
    cfg = AnimatorConfig(
        size=128, generator="diffusion", generator_weights=str(random_weights), backend="onnxruntime"
    )
    animator = Animator(astronaut, cfg)
    summary = animator.backend_summary()
    assert (
        summary is not None and summary["backend"] == "onnxruntime" and summary["requested"] == "onnxruntime"
    )
    assert list((tmp_path / "engines").glob("*_128.onnx"))
    out = animator.render_edits(Edits(yaw=10.0))
    assert out.image.shape == astronaut.shape and "generator" in out.timings_ms
    assert Animator(astronaut, AnimatorConfig(size=128, generator="warp")).backend_summary() is None


def test_export_cli_writes_checked_files(random_weights, tmp_path, capsys) -> None:
    import json

    from rt_portrait.cli import main

    out = tmp_path / "gen.onnx"
    argv = [
        "export",
        "onnx",
        "--size",
        "64",
        "128",
        "--steps",
        "2",
        "--weights",
        str(random_weights),
        "-o",
        str(out),
    ]
    assert main([*argv, "--verify"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["size"] for r in rows] == [64, 128] and all(r["steps"] == 2 for r in rows)
    assert all(r["parity_cpu"]["max_abs"] <= 2e-3 for r in rows)
    assert (tmp_path / "gen_64.onnx").is_file() and (tmp_path / "gen_128.onnx").is_file()
    # TensorRT without the package (or a GPU): a clear error, not a trace
    if not torch.cuda.is_available():
        assert main(["export", "tensorrt", "--size", "64", "--weights", str(random_weights)]) == 2
        assert "tensorrt" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_backend_matches_eager_on_a_small_unet() -> None:
    """torch.compile for real (inductor's C++ codegen; tens of seconds on a small CPU)."""
    from rt_portrait.engines.torch_engines import CompileEngine, compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler")
    torch.manual_seed(0)
    unet = ConditionalUNet(UNetConfig(channels=8, mults=(1, 2), groups=4, time_dim=16)).eval()
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    graph = GeneratorGraph(unet, GraphSpec(steps=2)).eval()
    engine = CompileEngine(graph, Precision("float32"))
    engine.prepare(32)
    cond, noise = torch.rand(1, NUM_CHANNELS, 32, 32) * 2 - 1, torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        ref = graph(cond, noise)
    assert parity_stats(engine(cond, noise), ref)["max_abs"] <= 1e-4
    assert "inductor" in engine.describe()


def test_an_unprepared_size_runs_eager_rather_than_building_mid_stream(
    random_weights, real_inputs, tmp_path
) -> None:
    from rt_portrait.engines.generator import with_backend

    gen = DiffusionGenerator(DiffusionConfig(weights=random_weights, dtype="float32"))
    eg = with_backend(gen, 64, EngineConfig(backend="onnxruntime", cache_dir=tmp_path, threads=1))
    assert eg.uses_engine(64) and not eg.uses_engine(128)
    got = eg.generate_batch(real_inputs)  # 128: not prepared
    want = gen.generate_batch(real_inputs)
    assert all(torch.equal(g.face, w.face) for g, w in zip(got, want, strict=True))  # the eager path itself
    assert not list(tmp_path.glob("*_128.onnx"))  # nothing was exported for it


@pytest.fixture(scope="module")
def displacing_weights(tmp_path_factory) -> Path:
    """A random UNet with two flow channels (a displacing model), its flow head drawn large
    enough that the displacement is a few working pixels."""
    torch.manual_seed(5)
    unet = ConditionalUNet(UNetConfig(flow_channels=2))
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    with torch.no_grad():
        unet.out.weight[12:] *= 40  # the flow channels (PixelShuffle: conv channels 12..19)
    path = tmp_path_factory.mktemp("weights") / "displacing.safetensors"
    save_weights(unet, path, residual_scale=2.0)
    return path


def test_a_displacing_model_runs_the_same_on_every_cpu_path(
    displacing_weights, real_inputs, tmp_path
) -> None:
    """Graph (1 and 2 steps, fusion), engine generator (eager, ONNX Runtime) and ORT's I/O
    binding all give the diffusion generator's face and displacement."""
    from rt_portrait.engines.generator import EngineGenerator, with_backend
    from rt_portrait.engines.onnx_export import export_onnx
    from rt_portrait.engines.ort import OrtEngine

    for steps, mw in ((1, 1.0), (2, 1.0), (1, 1.5)):
        gen = DiffusionGenerator(
            DiffusionConfig(  # the post-processes around the graph: off
                weights=displacing_weights,
                steps=steps,
                motion_weight=mw,
                dtype="float32",
                texture_gain=1,
                source_detail=0,
            )
        )
        want = gen.generate_batch(real_inputs)
        disp = torch.stack([o.displacement for o in want])  # type: ignore[misc]
        assert disp.shape == (2, 2, 128, 128) and 0.5 < float(disp.abs().max()) <= 8.0
        loaded = load_graph(displacing_weights, GraphSpec(steps=steps, motion_weight=mw))
        with torch.inference_mode():
            got = loaded.graph(build_condition_batch(real_inputs), gen.noise(128, 128).expand(2, -1, -1, -1))
        assert got.shape == (2, 5, 128, 128)
        # float32 rounding: the graph folds the bicubic displaced base differently (1.4e-5 at
        # 7 of 98k values on today's inputs); the displacement has the same 1e-4 below
        assert torch.allclose(got[:, :3], torch.stack([o.face for o in want]), atol=1e-4)
        assert torch.allclose(got[:, 3:], disp, atol=1e-4), (
            steps,
            mw,
            float((got[:, 3:] - disp).abs().max()),
        )
    gen = DiffusionGenerator(DiffusionConfig(weights=displacing_weights, dtype="float32"))
    want = gen.generate_batch(real_inputs)
    for backend in ("eager", "onnxruntime"):
        eg = with_backend(gen, 128, EngineConfig(backend=backend, cache_dir=tmp_path, threads=1))
        assert isinstance(eg, EngineGenerator) and eg.engine.name == backend
        for g, w in zip(eg.generate_batch(real_inputs), want, strict=True):
            assert g.displacement is not None and w.displacement is not None
            assert torch.allclose(g.face, w.face, atol=2e-3)
            assert torch.allclose(g.displacement, w.displacement, atol=2e-3)
    info = export_onnx(load_graph(displacing_weights), tmp_path / "d.onnx", 128)
    cond, noise = build_condition_batch(real_inputs), _noise(2, 128)
    plain = OrtEngine.from_files([info.path], threads=1)(cond, noise)
    bound = OrtEngine.from_files([info.path], threads=1, io_binding=True)(cond, noise)
    assert plain.shape == (2, 5, 128, 128) and torch.equal(bound, plain)
