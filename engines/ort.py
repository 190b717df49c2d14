"""ONNX Runtime backend: the exported graph on the CPU provider, or on the CUDA provider with
I/O binding (torch's CUDA tensors bound in place: no host copies, ORT runs on torch's stream).

One ``InferenceSession`` per working size (one ONNX file per size), created at start-up for
the configured size by :meth:`OrtEngine.prepare`. ``onnxruntime`` is imported lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rt_portrait.engines.base import BackendUnavailable, check_batch
from rt_portrait.engines.onnx_export import INPUTS, OUTPUT, OnnxInfo, read_onnx_info


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(
            "onnxruntime", "package missing", "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from e
    return onnxruntime


class OrtEngine:
    """``(cond, noise) -> face`` through ONNX Runtime.

    ``onnx_for_size(size) -> OnnxInfo`` supplies the file for a size (exporting it if need
    be); ``threads``: intra-op threads on the CPU (the rest of the pipeline shares the cores).
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_for_size: Callable[[int], OnnxInfo],
        device: torch.device | str = "cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
    ) -> None:
        """``io_binding``: bind torch's tensors in place (default: on CUDA; on the CPU it
        saves no copy worth having, and ``run`` is the plain path)."""
        self.ort = import_onnxruntime()
        self.device = torch.device(device)
        self.io_binding = self.device.type == "cuda" if io_binding is None else io_binding
        available = self.ort.get_available_providers()
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(
                    "onnxruntime",
                    "package missing",
                    f"no CUDAExecutionProvider (have {available}): pip install onnxruntime-gpu",
                )
            self.provider = "CUDAExecutionProvider"
        elif self.device.type == "cpu":
            self.provider = "CPUExecutionProvider"
        else:
            raise BackendUnavailable(
                "onnxruntime", "no device", f"no ONNX Runtime provider for {self.device}"
            )
        self._onnx_for_size = onnx_for_size
        self.threads = threads if threads is not None else torch.get_num_threads()
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()  # sessions are created once per size, whichever thread asks first
        self.files: dict[int, OnnxInfo] = {}
        self.precision = "float32"

    @staticmethod
    def from_files(
        paths: list[str | Path],
        device: torch.device | str = "cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
    ) -> OrtEngine:
        """An engine over already exported files (one per size)."""
        infos = {i.size: i for i in (read_onnx_info(p) for p in paths)}

        def lookup(size: int) -> OnnxInfo:
            if size not in infos:
                raise ValueError(f"no ONNX file for size {size} (have {sorted(infos)})")
            return infos[size]

        return OrtEngine(lookup, device, threads, io_binding)

    def _session(self, size: int) -> Any:
        with self._lock:
            return self._create(size)

    def _create(self, size: int) -> Any:
        if size not in self._sessions:
            info = self._onnx_for_size(size)
            so = self.ort.SessionOptions()
            so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            # no busy-waiting between runs: ORT's pool spins by default, and with two or more
            # threads it took cores from the rest of each frame (the flow stage ran 28 ms
            # instead of 17 beside it on the 2-core CPU)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if self.provider == "CUDAExecutionProvider":
                dev = self.device.index if self.device.index is not None else torch.cuda.current_device()
                opts = {
                    "device_id": dev,
                    # run on torch's current stream, so torch's producers and consumers are ordered with it
                    "user_compute_stream": str(torch.cuda.current_stream(dev).cuda_stream),
                    "cudnn_conv_algo_search": "EXHAUSTIVE",
                }
                providers: list[Any] = [(self.provider, opts)]
            else:
                providers = [self.provider]
            try:
                sess = self.ort.InferenceSession(str(info.path), so, providers=providers)
            except Exception as e:
                raise BackendUnavailable("onnxruntime", "build failed", f"{type(e).__name__}: {e}") from e
            if self.provider not in sess.get_providers():
                raise BackendUnavailable(
                    "onnxruntime", "build failed", f"{self.provider} not used by the session"
                )
            self._sessions[size] = sess
            self.files[size] = info
        return self._sessions[size]

    def prepare(self, size: int) -> None:
        self._session(size)

    def is_prepared(self, size: int) -> bool:
        return size in self._sessions

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        check_batch(cond, noise)
        sess = self._session(cond.shape[-1])
        if not self.io_binding:
            feeds = {
                "cond": cond.detach().float().cpu().contiguous().numpy(),
                "noise": noise.detach().float().cpu().contiguous().numpy(),
            }
            (out,) = sess.run([OUTPUT], feeds)
            return torch.from_numpy(out)
        return self._run_bound(sess, cond, noise)

    def _run_bound(self, sess: Any, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """I/O binding: ORT reads the inputs and writes the output in torch's own memory."""
        cond = cond.detach().to(self.device, torch.float32).contiguous()
        noise = noise.detach().to(self.device, torch.float32).contiguous()
        channels = int(sess.get_outputs()[0].shape[1])  # 3, or 5 for a displacing model
        out = torch.empty(cond.shape[0], channels, *cond.shape[-2:], device=self.device)
        kind, dev = self.device.type, self.device.index or 0
        binding = sess.io_binding()
        for name, t in zip(INPUTS, (cond, noise), strict=True):
            binding.bind_input(name, kind, dev, np.float32, list(t.shape), t.data_ptr())
        binding.bind_output(OUTPUT, kind, dev, np.float32, list(out.shape), out.data_ptr())
        sess.run_with_iobinding(binding)
        return out

    def describe(self) -> str:
        binding = ", I/O binding" if self.io_binding else ""
        return f"onnxruntime ({self.provider}{binding}, float32, {self.threads} threads)"
