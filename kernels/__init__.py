"""Triton kernels (installed as ``rt_portrait.kernels``), each module holding one op: the
``@triton.jit`` kernel, its host wrapper and its pure-torch twin with the same signature.

Triton is imported lazily by each module, so importing this package never needs it.
"""
