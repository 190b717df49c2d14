"""Stage order: a module imports only from its own stage or from earlier ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_from_a_later_stage(graph) -> None:
    bad = graph.violations()
    assert not bad, "imports against the data path:\n" + "\n".join(bad)


def test_every_module_has_a_stage(graph) -> None:
    for name, _ in graph.modules():
        graph.stage_of(name)  # raises, naming the module, when no stage claims it


def test_the_walker_sees_kernels_and_lazy_imports(graph) -> None:
    found = {(i.module, i.target) for i in graph.imports()}
    # flow/dispatch.py imports the kernels lazily, inside functions
    assert any(m == "rt_portrait.flow.dispatch" and t.startswith("rt_portrait.kernels") for m, t in found)
    # kernels import each other by relative imports
    assert ("rt_portrait.kernels.splat", "rt_portrait.kernels.zbuffer") in found


def test_a_backward_import_is_reported_by_name(graph, tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "rt_portrait"
    (pkg / "head").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "head" / "__init__.py").write_text("")
    (pkg / "head" / "bad.py").write_text("def f():\n    from rt_portrait.flow.types import Window\n")
    monkeypatch.setattr(graph, "ROOT", tmp_path)
    monkeypatch.setattr(graph, "PACKAGE_DIRS", {"rt_portrait": pkg})
    bad = graph.violations()
    assert len(bad) == 1
    assert "rt_portrait.head.bad (head) imports rt_portrait.flow.types (flow)" in bad[0]
    assert bad[0].startswith("rt_portrait/head/bad.py:2:")
