"""Triton flow kernels vs their torch twins.

On the CPU the kernels run in Triton's interpreter, which must be enabled before triton is
imported; so the comparisons run in one fresh subprocess with TRITON_INTERPRET=1 (this
process may already have imported triton compiled-mode). Tolerances: z-buffer and the
K-nearest keys exact (integer atomics); splat accumulations 1e-5 relative (atomic float sums
reorder additions); finalize and end-to-end fields 1e-5 absolute (exp/division rounding).
The ``gpu`` variants run the same checks compiled on CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# Runs in the subprocess: every check, results or errors as JSON on the last stdout line.
_SCRIPT = textwrap.dedent(
    """
    import json, os, traceback
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from rt_portrait.kernels import finalize, splat, zbuffer
    from rt_portrait.flow import FlowConfig, PointCloud, compute_flow

    def end_to_end():
        g = torch.Generator().manual_seed(5)
        n, size = 400, 40
        xyz = torch.rand(n, 3, generator=g) * torch.tensor([size + 6.0, size + 6.0, 30.0]) - torch.tensor([3.0, 3.0, 0.0])
        nrm = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        nrm[:, 2] = -nrm[:, 2].abs()
        lab = torch.randint(0, 8, (n,), generator=g, dtype=torch.int32)
        tgt = PointCloud(xyz.contiguous(), nrm.contiguous(), lab)
        src = PointCloud((xyz + torch.randn(n, 3, generator=g)).contiguous(), nrm.contiguous(), lab)
        out = {}
        a = compute_flow(tgt, src, FlowConfig(size=size, backend="triton"))
        b = compute_flow(tgt, src, FlowConfig(size=size, backend="torch"))
        for name in ("flow", "visibility", "depth", "normal", "encoding"):
            out[name] = float((getattr(a, name) - getattr(b, name)).abs().max())
        out["labels_equal"] = bool(torch.equal(a.labels, b.labels))
        return out

    checks = {
        "zbuffer": lambda: zbuffer.check(),
        "zbuffer_r45": lambda: zbuffer.check(size=40, radius=4.5, seed=1),
        "splat": lambda: splat.check(),
        "splat_r45_k3": lambda: splat.check(size=40, radius=4.5, k=3, seed=3),
        "finalize": lambda: finalize.check(),
        "finalize_k2": lambda: finalize.check(size=32, radius=2.0, k=2, seed=4),
        "end_to_end": end_to_end,
    }
    results = {}
    for name, fn in checks.items():
        try:
            results[name] = {"ok": True, "value": fn()}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"kernel check subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _result(results: dict, name: str):
    r = results[name]
    assert r["ok"], r.get("error")
    return r["value"]


@needs_triton
@pytest.mark.parametrize("name", ["zbuffer", "zbuffer_r45"])
def test_zbuffer_triton_matches_torch_exactly(interpreted: dict, name: str) -> None:
    assert _result(interpreted, name) == 0.0


@needs_triton
@pytest.mark.parametrize("name", ["splat", "splat_r45_k3"])
def test_splat_triton_matches_torch(interpreted: dict, name: str) -> None:
    value = _result(interpreted, name)
    assert value["keys_equal"] == 1.0
    assert value["acc_rel_err"] <= 1e-5


@needs_triton
@pytest.mark.parametrize("name", ["finalize", "finalize_k2"])
def test_finalize_triton_matches_torch(interpreted: dict, name: str) -> None:
    assert _result(interpreted, name) <= 1e-5


@needs_triton
def test_compute_flow_triton_matches_torch(interpreted: dict) -> None:
    value = _result(interpreted, "end_to_end")
    assert value.pop("labels_equal")
    for name, err in value.items():
        assert err <= 1e-4, f"{name}: max |triton - torch| = {err}"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_kernels_compiled_on_cuda() -> None:
    from rt_portrait.kernels import finalize, splat, zbuffer

    assert zbuffer.check(n=5000, size=256, radius=3.0, device="cuda") == 0.0
    value = splat.check(n=5000, size=256, radius=3.0, device="cuda")
    assert value["keys_equal"] == 1.0 and value["acc_rel_err"] <= 1e-5
    assert finalize.check(n=5000, size=256, radius=3.0, device="cuda") <= 1e-5
