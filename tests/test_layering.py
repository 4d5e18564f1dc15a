"""The packages form floors and every import points down (DESIGN.md, "Layout and data flow").

Read from the source with `ast` (nothing is imported): every `import` and `from ... import` of a
project module, at module level or inside a function, except those under `if TYPE_CHECKING:`
(annotations only, never run). A package may import its own floor or any lower one; root scripts
sit on top. No two modules may import each other, directly or round a longer circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. Packages on one floor do not import each other's floor-mates in a circle, but may
# import one another (data and models are one floor: models build the datasets' shapes).
FLOORS: list[set[str]] = [
    {"cli"},
    {"apps"},
    {"data", "models"},
    {"compress", "codec"},
    {"devices"},
    {"database"},
    {"search"},
    {"runtime"},
    {"reports"},
    {"bench"},
    {"latency_search", "accuracy_search", "select_model", "coinfer_cli"},
]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports (each `from a.b import c` as a.b, or a.b.c when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        if name.split(".")[0] in FLOOR:
            modules[name] = path
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


GRAPH = _graph()


def test_every_package_has_a_floor() -> None:
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert tops - {"tests"} <= set(FLOOR), f"packages with no floor in this test: {tops - set(FLOOR) - {'tests'}}"


def test_no_import_runs_up() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                    if FLOOR[b.split(".")[0]] > FLOOR[a.split(".")[0]])
    assert upward == []


def test_no_import_circle() -> None:
    # Tarjan's strongly connected components over modules; a package's __init__ importing its own
    # submodules is a circle only if a submodule imports the package back at module level, which
    # this still reports.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
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
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    assert circles == []


@pytest.mark.parametrize("pair", [("search.problem", "search.query"), ("select_model", "runtime.vnv_testbed")])
def test_the_graph_sees_imports(pair: tuple[str, str]) -> None:
    """The reader is not blind: known imports are in the graph (else the two tests above pass vacuously)."""
    a, b = pair
    assert b in GRAPH[a]
