"""The package's import graph, by stage: the rule that data flows one way, and its picture.

A module imports only from its own stage or from earlier ones (DESIGN.md, "Stage order").
``violations()`` lists every import that breaks the rule (tests/test_import_order.py fails on
them); ``python scripts/import_graph.py docs/import_graph.png`` draws the graph of
subpackages, one column per stage, so a reader sees the layers and that ``kernels`` hangs
off ``flow``.

Imports are read from the source (AST), lazy ones inside functions included. The design's
top-level folders ``kernels/``, ``engines/`` and ``export/`` are read as ``rt_portrait.*``,
which is how they install.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "rt_portrait": ROOT / "rt_portrait",
    "rt_portrait.kernels": ROOT / "kernels",
    "rt_portrait.engines": ROOT / "engines",
    "rt_portrait.export": ROOT / "export",
}

# Stage order along the data path; each entry: (stage name, module prefixes).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("rt_portrait.core", "rt_portrait.__init__")),
    ("tracking", ("rt_portrait.tracking",)),
    ("head", ("rt_portrait.head",)),
    ("flow", ("rt_portrait.flow", "rt_portrait.kernels")),
    ("generator", ("rt_portrait.generator", "rt_portrait.engines")),
    ("compose", ("rt_portrait.compose",)),
    ("pipeline", ("rt_portrait.pipeline",)),
    (
        "apps",
        (
            "rt_portrait.server",
            "rt_portrait.eval",
            "rt_portrait.cli",
            "rt_portrait.demo",
            "rt_portrait.animate",
            "rt_portrait.benchmark",
            "rt_portrait.track_cli",
            "rt_portrait.cam",
            "rt_portrait.export",
        ),
    ),
    # The runtime never imports training: it sits above every application.
    ("training", ("rt_portrait.training",)),
]


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported rt_portrait module
    path: Path
    line: int


def stage_of(module: str) -> int:
    """Index of ``module``'s stage in STAGES; ValueError for a module no stage claims."""
    for i, (_, prefixes) in enumerate(STAGES):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                return i
    if module == "rt_portrait":
        return 0
    raise ValueError(f"{module} belongs to no stage: add it to STAGES in scripts/import_graph.py")


def modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of the package, the top-level folders included."""
    for base, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"] if rel.name == "__init__" else list(rel.parts)
            if base == "rt_portrait" and parts and parts[0] in ("kernels", "engines", "export"):
                continue  # symlinks to the top-level folders: read once, under their own base
            name = ".".join([base, *parts]) if parts else base
            if rel.name == "__init__" and base == "rt_portrait" and not parts:
                name = "rt_portrait.__init__"
            yield name, path


def imports() -> Iterator[Import]:
    """Every import of an ``rt_portrait`` module by a module of the package."""
    for name, path in modules():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        if name == "rt_portrait.__init__":
            package = "rt_portrait"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # "from pkg import sub" may name a submodule: count the deeper one when it exists
                targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t == "rt_portrait" or t.startswith("rt_portrait."):
                    yield Import(name, t, path, node.lineno)


def violations() -> list[str]:
    """One line per import from a later stage, naming the file, line and both stages."""
    out = []
    for imp in imports():
        src, dst = stage_of(imp.module), stage_of(imp.target)
        if dst > src:
            out.append(
                f"{imp.path.relative_to(ROOT)}:{imp.line}: {imp.module} ({STAGES[src][0]}) imports "
                f"{imp.target} ({STAGES[dst][0]}), a later stage"
            )
    return out


def unit(module: str) -> str:
    """The graph node of a module: its subpackage, or the module for top-level modules."""
    parts = module.split(".")
    return ".".join(parts[:2]).removeprefix("rt_portrait.").removesuffix(".__init__")


def draw(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = {(unit(i.module), unit(i.target)) for i in imports() if unit(i.module) != unit(i.target)}
    nodes = sorted({unit(n) for n, _ in modules()} | {n for e in edges for n in e})
    columns: dict[int, list[str]] = {}
    for n in nodes:
        columns.setdefault(stage_of("rt_portrait." + n if n != "__init__" else "rt_portrait"), []).append(n)
    pos = {}
    for c, names in columns.items():
        for r, n in enumerate(sorted(names)):
            pos[n] = (c * 2.2, -r * 1.0 - 0.5 * (c % 2))
    fig, ax = plt.subplots(figsize=(16, 6.5), dpi=90)
    for a, b in sorted(edges):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        backward = stage_of("rt_portrait." + b) > stage_of("rt_portrait." + a)
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(
                arrowstyle="->",
                color="red" if backward else "0.55",
                lw=0.7,
                shrinkA=18,
                shrinkB=18,
                connectionstyle="arc3,rad=0.12",
            ),
        )
    for n, (x, y) in pos.items():
        ax.text(
            x,
            y,
            n,
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="round", fc="#e8f0fe" if n != "kernels" else "#fde8e8", ec="0.4"),
        )
    for c in columns:
        ax.text(c * 2.2, 1.0, STAGES[c][0], ha="center", fontsize=11, weight="bold")
    ax.set_xlim(-1.2, (len(STAGES) - 1) * 2.2 + 1.2)
    ymin = min(y for _, y in pos.values())
    ax.set_ylim(ymin - 0.8, 1.5)
    ax.axis("off")
    ax.set_title("rt_portrait imports (arrows: importer -> imported; red would be a later-stage import)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "output", nargs="?", default=str(ROOT / "docs" / "import_graph.png"), help="PNG to write"
    )
    args = parser.parse_args()
    bad = violations()
    print("\n".join(bad) if bad else "stage order: no import from a later stage")
    print(draw(Path(args.output)))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
