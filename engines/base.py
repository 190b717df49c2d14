"""What every generator backend is: a batch of conditions (+ noise) -> a batch of faces."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from rt_portrait.core.cpu import auto_dtype

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKENDS)


class BackendUnavailable(RuntimeError):
    """A backend cannot be used here; ``reason`` is one of REASONS, ``detail`` says why."""

    REASONS = ("package missing", "no device", "build failed", "parity failed", "slower")

    def __init__(self, backend: str, reason: str, detail: str) -> None:
        super().__init__(f"{backend}: {reason}: {detail}")
        self.backend = backend
        self.reason = reason
        self.detail = detail


class Engine(Protocol):
    """A generator backend. ``__call__(cond (N, C, R, R), noise (N, 3, R, R)) -> face (N, 3, R, R)``,
    float32 on the engine's device; the face is in [0, 1]."""

    name: str  # one of BACKENDS
    device: torch.device
    precision: str  # float32, bfloat16 or float16: what the network computes in

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...

    def prepare(self, size: int) -> None:
        """Build or load whatever one working size needs (at start-up, never per frame)."""
        ...

    def is_prepared(self, size: int) -> bool:
        """Whether a call at ``size`` runs without building anything first."""
        ...

    def describe(self) -> str:
        """One line for logs, /stats and bench output."""
        ...


@dataclass(frozen=True)
class Precision:
    """A working precision and its autocast (None for float32)."""

    name: str

    @staticmethod
    def resolve(dtype: str, device: torch.device) -> Precision:
        """DiffusionConfig.dtype semantics: ``auto`` is fp16 on CUDA, bf16 autocast on a CPU with
        bf16 instructions, else float32 (:func:`rt_portrait.core.cpu.auto_dtype`)."""
        if dtype == "auto":
            return Precision(auto_dtype(device))
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {dtype!r} (auto, float32, bfloat16 or float16)")
        return Precision(dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.name]

    def autocast(self, device: torch.device) -> AbstractContextManager[object]:
        if self.name == "float32":
            return nullcontext()
        return torch.autocast(device.type, dtype=self.torch_dtype)


def check_batch(cond: torch.Tensor, noise: torch.Tensor) -> None:
    """Clear errors for inputs no backend can take (rather than an opaque runtime failure)."""
    if cond.ndim != 4 or noise.ndim != 4:
        raise ValueError(
            f"engines take (N, C, R, R) tensors, got cond {tuple(cond.shape)}, noise {tuple(noise.shape)}"
        )
    if noise.shape[0] != cond.shape[0] or noise.shape[1] != 3 or noise.shape[-2:] != cond.shape[-2:]:
        raise ValueError(
            f"noise {tuple(noise.shape)} does not match cond {tuple(cond.shape)} (want (N, 3, R, R))"
        )
