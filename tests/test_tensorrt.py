"""TensorRT backend: cache keys, the reduced-precision exports it builds from, the builder's
flow against a recording stand-in for the ``tensorrt`` module (no GPU or TensorRT here), the
real API names where TensorRT imports, and a real build and run where a GPU is present."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from rt_portrait.engines import trt as trt_engine
from rt_portrait.engines.graph import GraphSpec, load_graph
from rt_portrait.engines.trt import EngineKey, export_for_tensorrt, precision_name
from rt_portrait.generator.diffusion import save_weights
from rt_portrait.generator.unet import ConditionalUNet

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    unet = ConditionalUNet()
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_weights(unet, path, residual_scale=2.0)
    return path


def test_engine_key_names_every_dependency() -> None:
    a = EngineKey("abc123", "11.4.0.106", "NVIDIA H100 80GB HBM3", "float16")
    name = a.filename()
    assert "abc123" in name and "11.4.0.106" in name and "NVIDIA-H100-80GB-HBM3" in name and "float16" in name
    others = [
        EngineKey("abc124", "11.4.0.106", "NVIDIA H100 80GB HBM3", "float16"),
        EngineKey("abc123", "10.13.0", "NVIDIA H100 80GB HBM3", "float16"),
        EngineKey("abc123", "11.4.0.106", "NVIDIA H200", "float16"),
        EngineKey("abc123", "11.4.0.106", "NVIDIA H100 80GB HBM3", "bfloat16"),
    ]
    assert len({name, *(o.filename() for o in others)}) == 5
    assert precision_name("fp16") == "float16" and precision_name("bf16") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        precision_name("int8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_exports_keep_float32_io(weights, tmp_path, precision) -> None:
    """TensorRT 11 networks are strongly typed: the precision lives in the ONNX file, its I/O
    stays float32 (so the runtime binds the same torch tensors at every precision)."""
    loaded = load_graph(weights, GraphSpec())
    info = export_for_tensorrt(loaded, 64, precision, tmp_path)
    assert info.precision == precision_name(precision)
    model = onnx.load(str(info.path))
    f32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32, f32]
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    low = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert any(init.data_type == low for init in model.graph.initializer)
    if precision == "bf16":
        assert model.opset_import[0].version >= 22  # bfloat16 Conv


class _Recorder:
    """A stand-in ``tensorrt`` module that records what the builder asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.builds = 0
        rec = self

        class ILogger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
            Severity = int

            def __init__(self) -> None:
                pass

        class Flag:
            STRONGLY_TYPED = 0

        class Pool:
            WORKSPACE = 0

        class Profile:
            def set_shape(self, name, lo, opt, hi) -> None:
                rec.calls.append(f"profile {name} {list(lo)} {list(opt)} {list(hi)}")

        class Cache:
            def serialize(self) -> bytes:
                return b"timing"

        class Config:
            def set_memory_pool_limit(self, pool, size) -> None:
                rec.calls.append(f"workspace {size}")

            def create_timing_cache(self, data: bytes) -> Cache:
                rec.calls.append(f"timing cache in {data!r}")
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch) -> bool:
                return True

            def get_timing_cache(self) -> Cache:
                return Cache()

            def add_optimization_profile(self, p) -> int:
                return 0

        class Builder:
            def __init__(self, logger) -> None:
                pass

            def create_network(self, flags: int) -> object:
                rec.calls.append(f"network flags {flags}")
                return object()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network, config) -> bytes:
                rec.builds += 1
                return b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                rec.calls.append("parse")
                return True

        self.module = types.ModuleType("tensorrt")
        self.module.__dict__.update(
            __version__="11.4.0.106",
            ILogger=ILogger,
            NetworkDefinitionCreationFlag=Flag,
            MemoryPoolType=Pool,
            Builder=Builder,
            OnnxParser=OnnxParser,
            Dims=list,
        )


def test_builder_flow_and_engine_cache(weights, tmp_path, monkeypatch) -> None:
    rec = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    loaded = load_graph(weights, GraphSpec())
    info = export_for_tensorrt(loaded, 64, "fp16", tmp_path)
    plan = trt_engine.build_engine(info.path, tmp_path / "trt")
    assert plan.read_bytes() == b"plan" and rec.builds == 1
    assert EngineKey(info.onnx_hash, "11.4.0.106", "Fake GPU", "float16").filename() == plan.name
    assert "network flags 1" in rec.calls  # strongly typed
    assert "profile cond [1, 40, 64, 64] [1, 40, 64, 64] [8, 40, 64, 64]" in rec.calls
    assert "profile noise [1, 3, 64, 64] [1, 3, 64, 64] [8, 3, 64, 64]" in rec.calls
    timing = list((tmp_path / "trt").glob("timing_*.cache"))
    assert len(timing) == 1 and timing[0].read_bytes() == b"timing"
    # a second build is a cache hit; the timing cache is read back when a build does happen
    assert trt_engine.build_engine(info.path, tmp_path / "trt") == plan and rec.builds == 1
    trt_engine.build_engine(info.path, tmp_path / "trt", force=True)
    assert rec.builds == 2 and "timing cache in b'timing'" in rec.calls


try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except (ImportError, OSError):
    HAVE_TRT = False


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installed (pip install 'rt-portrait[tensorrt]')")
def test_the_api_we_call_exists() -> None:
    import tensorrt as trt

    assert int(trt.__version__.split(".")[0]) >= 10
    for name in (
        "Builder",
        "OnnxParser",
        "Runtime",
        "ILogger",
        "Dims",
        "MemoryPoolType",
        "NetworkDefinitionCreationFlag",
    ):
        assert hasattr(trt, name), name
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    for name in ("set_input_shape", "set_tensor_address", "execute_async_v3"):
        assert hasattr(trt.IExecutionContext, name), name
    for name in ("create_timing_cache", "set_timing_cache", "get_timing_cache", "set_memory_pool_limit"):
        assert hasattr(trt.IBuilderConfig, name), name
    for name in ("num_io_tensors", "get_tensor_name", "get_tensor_dtype", "create_execution_context"):
        assert hasattr(trt.ICudaEngine, name), name


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAVE_TRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_build_and_run_on_the_gpu(weights, tmp_path, precision) -> None:
    from rt_portrait.engines.resolver import parity_stats, probe_inputs

    loaded = load_graph(weights, GraphSpec(), "cuda")
    engine = trt_engine.tensorrt_engine(loaded, "cuda", precision, tmp_path)
    for n in (1, 3):
        cond, noise = probe_inputs(40, 64, torch.device("cuda"), n)
        out = engine(cond, noise)
        assert out.shape == (n, 3, 64, 64) and out.is_cuda
        with torch.inference_mode():
            ref = loaded.graph(cond, noise)
        assert parity_stats(out, ref)["psnr"] >= 30
