"""bench/gpu_suite.py: its clean exit without a GPU, and every code path in its CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the suite would measure it")
def test_without_a_gpu_it_says_so_and_exits_cleanly(suite, tmp_path, capsys) -> None:
    out = tmp_path / "gpu.json"
    assert suite.main(["--out", str(out)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["status"] == "skipped: no CUDA GPU" and "torch" in report["environment"]


def test_dry_run_exercises_every_section(suite, tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "dry.json"
    assert suite.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["status"] == "dry run (CPU)"
    for section in ("flow", "generator", "ort_parity", "loop"):
        assert section in report and "error" not in report[section], (section, report.get(section))
    assert report["ort_parity"]["pass"] and report["ort_parity"]["max_abs"] <= 2e-3
    gen = report["generator"]
    assert set(gen) == {"eager", "onnxruntime"}
    assert set(gen["onnxruntime"]["timings"]) == {"64x1", "64x2"}
    assert report["loop"]["backend"]["backend"] in ("eager", "onnxruntime")
    table = out.with_suffix(".md").read_text()
    assert "## generator" in table and "## whole loop at 128" in table and "parity" in table
    assert "wrote" in capsys.readouterr().out


def test_a_section_over_budget_is_skipped_not_run(suite) -> None:
    plan = suite.Plan("cpu", (64,), (1,), 128, 2, 1, ("eager",), True)
    s = suite.Suite(plan, budget_s=1.0)
    ran = []
    s.section("slow", lambda: ran.append(1), needs_s=60)
    assert not ran and "time budget" in s.results["slow"]["skipped"]
    s.section("broken", lambda: 1 / 0, needs_s=0)
    assert "ZeroDivisionError" in s.results["broken"]["error"]
