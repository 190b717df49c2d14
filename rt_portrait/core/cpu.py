"""What the CPU computes natively, for the precision an ``auto`` setting picks.

bf16 autocast pays on a CPU with bf16 instructions (AVX-512 BF16 or AMX): on one without,
PyTorch emulates bf16 and the generator ran 4x slower than in float32 (178 vs 714 ms at 256^2
on an AVX2-only EPYC, one thread).
"""

from __future__ import annotations

import torch


def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # private helpers of torch.cpu: a torch without them gets the safe answer (float32)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_dtype(device: torch.device) -> str:
    """The working precision ``auto`` means on ``device``: float16 on CUDA, bfloat16 on a CPU
    with bf16 instructions, else float32."""
    if device.type == "cuda":
        return "float16"
    return "bfloat16" if device.type == "cpu" and native_bf16() else "float32"


def casts_weights(device: torch.device, dtype: str) -> bool:
    """Whether a network runs at ``dtype`` as a copy with its weights cast to it, rather than
    in float32 under autocast: bf16 on the CPU. Autocast keeps GroupNorm in float32 and casts
    every activation back and forth; the generator's UNet at 256^2 ran in 22-26 ms cast
    against 27-29 ms under autocast (one thread, the 2-core development machine), at the same
    distance from float32 (49.5 dB PSNR on its output). On CUDA fp16 stays autocast (a float16
    GroupNorm can overflow)."""
    return device.type == "cpu" and dtype == "bfloat16"
