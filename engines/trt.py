"""TensorRT backend: an engine builder from the ONNX export, and a runtime on torch's CUDA stream.

Builder (:func:`build_engine`, ``rt-portrait export tensorrt``):

- parses one exported ONNX file (one working size) and builds a serialized engine with an
  optimization profile for batch 1 to 8 (``opt`` = 1, the live case) at that size; the usual
  sizes are 128, 256 and 512, one engine each;
- precision: TensorRT 11 builds *strongly typed* networks only (the fp16 builder flag is
  gone), so the precision comes from the ONNX file itself: fp16 and bf16 files are exported
  with the UNet in that dtype and float32 inputs and output (:func:`export_for_tensorrt`);
  TensorRT 10 is asked for a strongly typed network too, so both behave the same;
- a timing cache per TensorRT version and GPU, loaded before and saved after each build;
- an engine cache keyed by the ONNX file's hash, the TensorRT version, the GPU's name and
  the precision: a rebuild happens only when one of them changes.

Runtime (:class:`TrtEngine`): TensorRT 10+'s name-based tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) on torch's current CUDA stream, torch tensors
in and out (no host copies, no pycuda).

``tensorrt`` is imported lazily (``pip install 'rt-portrait[tensorrt]'``); nothing here runs
without a GPU.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rt_portrait.engines.base import BackendUnavailable, check_batch
from rt_portrait.engines.graph import LoadedGraph, load_graph
from rt_portrait.engines.onnx_export import INPUTS, OUTPUT, OnnxInfo, cached_onnx, read_onnx_info

log = logging.getLogger(__name__)

PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
MAX_BATCH = 8
SIZES = (128, 256, 512)


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailable naming the fix. (Callers then ``import
    tensorrt as trt`` themselves, so that type checkers with ``tensorrt-stubs`` see its types.)"""
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(
            "tensorrt", "package missing", "pip install 'rt-portrait[tensorrt]' (tensorrt-cu13)"
        ) from e
    except OSError as e:  # the bindings without their libraries
        raise BackendUnavailable(
            "tensorrt", "package missing", f"TensorRT libraries failed to load: {e}"
        ) from e
    return tensorrt


def precision_name(p: str) -> str:
    name = ALIASES.get(p, p)
    if name not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {p!r} (fp16, bf16 or fp32)")
    return name


def gpu_name(device: torch.device | None = None) -> str:
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no-gpu"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")


@dataclass(frozen=True)
class EngineKey:
    """What an engine file depends on (besides the builder's own options, fixed here)."""

    onnx_hash: str
    trt_version: str
    gpu: str
    precision: str

    def filename(self) -> str:
        return (
            f"generator_{self.onnx_hash}_trt{_slug(self.trt_version)}_{_slug(self.gpu)}_{self.precision}.plan"
        )


def export_for_tensorrt(loaded_fp32: LoadedGraph, size: int, precision: str, cache_dir: Path) -> OnnxInfo:
    """The ONNX file TensorRT builds from at ``precision`` (the UNet in that dtype inside)."""
    name = precision_name(precision)
    if name == "float32":
        return cached_onnx(loaded_fp32, size, cache_dir)
    g = loaded_fp32.graph
    low = load_graph(loaded_fp32.weights, g.spec, "cpu", compute_dtype=PRECISIONS[name])
    return cached_onnx(low, size, cache_dir)


def _logger() -> Any:
    """A TensorRT logger that forwards to :mod:`logging`."""
    import tensorrt as trt

    class Forward(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = {
                trt.ILogger.INTERNAL_ERROR: logging.ERROR,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return Forward()


def build_engine(
    onnx_path: str | Path,
    cache_dir: Path,
    max_batch: int = MAX_BATCH,
    opt_batch: int = 1,
    workspace_gib: float = 4.0,
    force: bool = False,
) -> Path:
    """Build (or find in ``cache_dir``) the engine for one exported ONNX file; returns its path."""
    import_tensorrt()
    import tensorrt as trt

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt", "no device", "TensorRT needs a CUDA GPU")
    info = read_onnx_info(onnx_path)
    key = EngineKey(info.onnx_hash, trt.__version__, gpu_name(), info.precision)
    cache_dir.mkdir(parents=True, exist_ok=True)
    plan = cache_dir / key.filename()
    if plan.is_file() and not force:
        log.info("TensorRT engine from cache: %s", plan)
        return plan
    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(info.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable("tensorrt", "build failed", f"ONNX parse of {info.path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    timing_path = cache_dir / f"timing_trt{_slug(trt.__version__)}_{_slug(gpu_name())}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    r = info.size
    for name, c in (("cond", info.cond_channels), ("noise", 3)):
        profile.set_shape(
            name, trt.Dims([1, c, r, r]), trt.Dims([opt_batch, c, r, r]), trt.Dims([max_batch, c, r, r])
        )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(
            "tensorrt", "build failed", f"TensorRT could not build {info.path} (see the log)"
        )
    timing_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    tmp = plan.with_name(plan.name + ".tmp")
    tmp.write_bytes(bytes(memoryview(serialized)))
    tmp.replace(plan)
    log.info("TensorRT engine built: %s", plan)
    return plan


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}


@dataclass
class _Loaded:
    engine: Any
    context: Any
    out_dtype: torch.dtype
    out_channels: int  # 3 (the face), 5 for a displacing model (face, displacement)


class TrtEngine:
    """``(cond, noise) -> face`` through TensorRT engines (one per working size).

    ``plan_for_size(size) -> Path`` supplies (building if need be) the engine file of a size.
    """

    name = "tensorrt"

    def __init__(
        self, plan_for_size: Callable[[int], Path], device: torch.device | str, precision: str
    ) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.version = trt.__version__
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt", "no device", "TensorRT needs a CUDA device")
        self.precision = precision_name(precision)
        self._plan_for_size = plan_for_size
        self._runtime = trt.Runtime(_logger())
        self._engines: dict[int, _Loaded] = {}
        # an execution context is not thread-safe, and the server's sessions share the generator
        self._lock = threading.Lock()

    def _load(self, size: int) -> _Loaded:
        if size not in self._engines:
            plan = self._plan_for_size(size)
            engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise BackendUnavailable("tensorrt", "build failed", f"could not deserialize {plan}")
            names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
            if names != {*INPUTS, OUTPUT}:
                raise BackendUnavailable(
                    "tensorrt", "build failed", f"{plan}: unexpected I/O tensors {sorted(names)}"
                )
            out_dtype = _TORCH_DTYPES.get(engine.get_tensor_dtype(OUTPUT).name, torch.float32)
            channels = int(engine.get_tensor_shape(OUTPUT)[1])
            self._engines[size] = _Loaded(engine, engine.create_execution_context(), out_dtype, channels)
        return self._engines[size]

    def prepare(self, size: int) -> None:
        with self._lock:
            self._load(size)

    def is_prepared(self, size: int) -> bool:
        return size in self._engines

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        check_batch(cond, noise)
        if cond.shape[0] > MAX_BATCH:  # beyond the profile: split
            return torch.cat(
                [self(c, n) for c, n in zip(cond.split(MAX_BATCH), noise.split(MAX_BATCH), strict=True)]
            )
        cond = cond.to(self.device, torch.float32).contiguous()
        noise = noise.to(self.device, torch.float32).contiguous()
        with self._lock:
            loaded = self._load(cond.shape[-1])
            ctx = loaded.context
            out = torch.empty(
                cond.shape[0],
                loaded.out_channels,
                *cond.shape[-2:],
                device=self.device,
                dtype=loaded.out_dtype,
            )
            for name, t in (("cond", cond), ("noise", noise)):
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
            ctx.set_tensor_address(OUTPUT, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the log)")
        return out.float()

    def describe(self) -> str:
        return f"tensorrt {self.version} ({self.precision}, {gpu_name(self.device)})"


def tensorrt_engine(
    loaded: LoadedGraph, device: torch.device | str, precision: str, cache_dir: Path
) -> TrtEngine:
    """A TensorRT engine for ``loaded``'s weights and spec: exports and builds per size on demand
    (both cached: a second start-up loads the plan file)."""
    name = precision_name(precision)
    trt_dir = cache_dir / "tensorrt"

    def plan_for_size(size: int) -> Path:
        info = export_for_tensorrt(loaded, size, name, cache_dir)
        return build_engine(info.path, trt_dir)

    return TrtEngine(plan_for_size, device, name)
