"""The declared Python floor is the one the tools check against and the one that runs here."""

from __future__ import annotations

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
