"""The declared Python floor is the one the tools check against and the one that runs here;
the declared dependencies cover what the installed modules import."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requires_python_floor_matches_the_tools() -> None:
    cfg = _pyproject()
    m = re.fullmatch(r">=(\d+)\.(\d+)", cfg["project"]["requires-python"])
    assert m, cfg["project"]["requires-python"]
    floor = (int(m[1]), int(m[2]))
    # ruff flags syntax newer than its target; mypy flags stdlib APIs newer than its version
    assert cfg["tool"]["ruff"]["target-version"] == f"py{floor[0]}{floor[1]}"
    assert cfg["tool"]["mypy"]["python_version"] == f"{floor[0]}.{floor[1]}"
    assert sys.version_info[:2] >= floor


def test_ci_runs_on_the_floor() -> None:
    """CI's interpreter is the lowest version the package admits, so the floor is tested."""
    m = re.fullmatch(r">=(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert m
    if not (ROOT / ".ci" / "run").exists():
        return
    import os

    if os.environ.get("CI_RUN") == "1":  # set by .ci/run
        assert sys.version_info[:2] == (int(m[1]), int(m[2])), sys.version


def test_every_package_is_installed() -> None:
    """Every folder with an __init__.py under rt_portrait/ is listed for setuptools."""
    cfg = _pyproject()
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {
        "rt_portrait." + ".".join(p.parent.relative_to(ROOT / "rt_portrait").parts)
        for p in (ROOT / "rt_portrait").rglob("__init__.py")
        if p.parent != ROOT / "rt_portrait"
        and not p.parent.relative_to(ROOT / "rt_portrait")
        .parts[0]
        .startswith(("kernels", "engines", "export"))
    }
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names a file imports unconditionally (lazy imports inside functions and
    ``try`` blocks are the optional extras' and stay out)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"rt_portrait", "__future__"}


def test_every_unconditional_import_is_a_declared_dependency() -> None:
    """Before: core.image imported cv2 and five modules scipy, both arriving only as
    dependencies of mediapipe and scikit-image, so a change there would break an install."""
    from importlib.metadata import packages_distributions

    declared = {
        re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in _pyproject()["project"]["dependencies"]
    }
    providers = packages_distributions()
    missing = {}
    for folder in ("rt_portrait", "kernels", "engines", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in _module_level_imports(path):
                dists = {d.lower().replace("_", "-") for d in providers.get(name, [name])}
                if not dists & declared:
                    missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, f"imported at module level but not in [project] dependencies: {missing}"
