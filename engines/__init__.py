"""Generator engines (installed as ``rt_portrait.engines``; stage: generator).

- :mod:`.graph`: the generator as one module, ``(cond, noise) -> face``, sampler steps folded in;
- :mod:`.onnx_export`: its ONNX export (one file per working size, dynamic batch, metadata);
- backends, each ``(cond (N, C, R, R), noise (N, 3, R, R)) -> face (N, 3, R, R)``:
  :mod:`.torch_engines` (eager; ``torch.compile`` with CUDA graphs on CUDA), :mod:`.ort`
  (ONNX Runtime CPU, CUDA with I/O binding), :mod:`.trt` (TensorRT builder and runtime);
- :mod:`.resolver`: one choice at start-up (``auto`` or explicit), fallbacks logged with
  their reasons;
- :mod:`.generator`: the diffusion generator with its network run by the chosen engine;
- :mod:`.cupy_kernels`: CuPy RawKernels for I420 <-> RGB and the final compose, with NumPy twins.

Optional packages (onnx, onnxruntime, tensorrt, cupy) are imported lazily, inside the
functions that need them.
"""

from rt_portrait.engines.base import BACKEND_CHOICES, BACKENDS, BackendUnavailable, Engine
from rt_portrait.engines.resolver import EngineConfig, Resolution, resolve_engine

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "BackendUnavailable",
    "Engine",
    "EngineConfig",
    "Resolution",
    "resolve_engine",
]
