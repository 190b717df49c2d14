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


def test_each_section_is_on_disk_before_the_next_starts(suite, tmp_path) -> None:
    """A run killed mid-way (the device tool's time limit, ``timeout``) keeps what it measured."""
    plan = suite.Plan("cpu", (64,), (1,), 128, 2, 1, ("eager",), True)
    out = tmp_path / "gpu.json"
    s = suite.Suite(plan, budget_s=100.0, out=out)
    seen = []

    def second():
        seen.append(json.loads(out.read_text()))
        raise KeyboardInterrupt  # the kill

    s.section("first", lambda: {"ms": 1.5}, needs_s=0)
    with pytest.raises(KeyboardInterrupt):
        s.section("second", second, needs_s=0)
    assert seen[0]["first"] == {"ms": 1.5} and "second" not in seen[0]
    assert out.with_suffix(".md").exists()


def test_flow_section_runs_without_the_tracker(suite, monkeypatch) -> None:
    """On a GPU machine without mediapipe the flow section reads the packaged landmarks."""
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # any tracking would fail now
    plan = suite.Plan("cpu", (64,), (1,), 128, 2, 1, ("eager",), True)
    s = suite.Suite(plan, budget_s=100.0)
    s.section("flow", lambda: suite.flow_section(s), needs_s=0)
    assert "error" not in s.results["flow"], s.results["flow"]
    assert s.results["flow"]["64"]["ms"]["torch"] > 0
