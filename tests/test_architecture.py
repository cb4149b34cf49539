"""The import graph of the package, read with ``ast`` (nothing is imported): no circles, and the
layer rules that keep distributed and cluster code out of the model and training code.

Every import counts, also the ones inside functions: a lazy import hides a dependency from
the reader, not from the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "eval", "cluster")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names of everything ``name`` imports (submodules resolved where they exist)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _importers(graph: dict[str, set[str]], top: str) -> set[str]:
    return {m for m, targets in graph.items() if any(t == top or t.startswith(top + ".") for t in targets)}


def test_the_graph_reader_sees_relative_and_lazy_imports(graph):
    # The checks below are only as good as the reader: known edges must be present.
    assert "training.engines.base" in graph["training.engines.local"]       # from .base import
    assert "training.engines.zero" in graph["training.engines"]             # lazy, inside a function
    assert "training.checkpoint" in graph["training.engines.local"]         # from ..checkpoint import
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles(graph):
    cycles = _cycles(_internal(graph))
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_training_never_imports_eval_or_cluster(graph):
    bad = {m: sorted(t for t in ts if t.split(".")[0] in ("eval", "cluster"))
           for m, ts in graph.items() if m.split(".")[0] == "training"}
    assert not {m: ts for m, ts in bad.items() if ts}


def test_eval_never_imports_cluster(graph):
    bad = {m for m, ts in graph.items() if m.startswith("eval") and any(t.startswith("cluster") for t in ts)}
    assert not bad


def test_only_cluster_imports_ray(graph):
    assert {m.split(".")[0] for m in _importers(graph, "ray")} <= {"cluster"}


def test_one_module_imports_deepspeed(graph):
    assert _importers(graph, "deepspeed") == {"training.engines.zero"}
    # accelerate's Accelerator is the distributed engine's; the memory planner only borrows its
    # meta-device context (init_empty_weights), which starts no process group.
    assert _importers(graph, "accelerate") == {"training.engines.zero", "training.memory_plan"}
