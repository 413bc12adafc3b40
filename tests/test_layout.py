"""The package's shape: no import cycles among the modules of src/pcsr, and no module over the
house limit of MAX_LINES lines. Both read the source with `ast` only; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pcsr"
MAX_LINES = 450

# Known offenders, to be removed from here as they are fixed; a new one fails the test, and so does
# an entry here that is no longer needed (so that the list only ever shrinks).
ALLOWED_CYCLES: set[frozenset[str]] = set()  # each entry: the modules of one strongly connected component
ALLOWED_LONG: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every Import/ImportFrom, at any depth (inside functions too), except under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes_of(other)
        else:
            yield from _import_nodes(child)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _import_nodes(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports. Importing a package is importing its __init__
    (`from .io import read_image` -> pcsr.io); `from P import m` with m a submodule is importing m."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
            found.update(t for t in targets if t in modules)
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source not in modules:
            continue  # the standard library or a third party
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            found.add(sub if sub in modules else source)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) for each strongly connected component that
    has one (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(component)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, within the component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {component}")  # cannot happen for a strongly connected component


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_of_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\n"
        "import pcsr.a\n"
        "from pcsr.b import thing\n"
        "from . import c, not_a_module\n"
        "from .p import name\n"
        "from ..outside import x\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from . import d\n"
        "else:\n"
        "    from . import e\n"
        "def f():\n"
        "    from .p.q import name\n")
    modules = dict.fromkeys(["pcsr", "pcsr.a", "pcsr.b", "pcsr.c", "pcsr.d", "pcsr.e", "pcsr.p", "pcsr.p.q",
                             "pcsr.m"], source)
    assert imports_of("pcsr.m", source, modules) == {"pcsr.a", "pcsr.b", "pcsr.c", "pcsr", "pcsr.p", "pcsr.e",
                                                      "pcsr.p.q"}
    init = tmp_path / "__init__.py"
    init.write_text("from . import q\nfrom .. import c\n")
    assert imports_of("pcsr.p", init, modules) == {"pcsr.p.q", "pcsr.c"}


def test_import_graph_covers_the_package():
    graph = import_graph()
    assert "pcsr.errors" in graph["pcsr"]  # the package's __init__ is a node
    assert {"pcsr.io.files", "pcsr.io.read", "pcsr.io.write"} <= graph["pcsr.io"]
    assert all(m.startswith("pcsr") for deps in graph.values() for m in deps)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    new = [c for c in found if frozenset(c) not in ALLOWED_CYCLES]
    assert not new, "import cycles among src/pcsr modules:\n" + "\n".join(" -> ".join(c) for c in new)
    stale = ALLOWED_CYCLES - {frozenset(c) for c in found}
    assert not stale, f"ALLOWED_CYCLES lists cycles that are gone; remove them: {sorted(map(sorted, stale))}"


def test_no_module_over_the_line_limit():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in package_modules().items()}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    new = {name: n for name, n in long.items() if name not in ALLOWED_LONG}
    assert not new, f"modules over {MAX_LINES} lines: " + ", ".join(f"{k} ({v})" for k, v in sorted(new.items()))
    stale = ALLOWED_LONG - set(long)
    assert not stale, f"ALLOWED_LONG lists modules now within {MAX_LINES} lines; remove them: {sorted(stale)}"


@pytest.mark.parametrize("name", ["pcsr.io.read", "pcsr.io.write", "pcsr.io.codecs16", "pcsr.io.files"])
def test_io_modules_import_only_downwards(name):
    """files and codecs16 import nothing of io; read imports them; write imports the three. None
    imports the package's __init__ (which imports them all)."""
    below = {"pcsr.io.files": set(), "pcsr.io.codecs16": set(),
             "pcsr.io.read": {"pcsr.io.files", "pcsr.io.codecs16"},
             "pcsr.io.write": {"pcsr.io.files", "pcsr.io.codecs16", "pcsr.io.read"}}[name]
    assert {m for m in import_graph()[name] if m.startswith("pcsr.io")} <= below
