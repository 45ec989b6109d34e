"""The package's shape: no import cycle inside ``ablate/`` and no module too long to read in one sitting.

Read from the source with ``ast`` (nothing is imported), so function-level
imports count as much as module-level ones: a lazy import hides a cycle from
the interpreter at import time, not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "ablate"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under ablate/ (a package is its ``__init__``)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _resolve(target: str, mods: dict[str, Path]) -> str | None:
    """The module ``target`` names: itself, else the longest module prefix (``pkg.mod.func`` -> ``pkg.mod``)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ablate modules it imports anywhere in its body (parent packages included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # a submodule imported by name is a dependency on it; any other name, on ``mod`` itself
                targets += [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
        deps = set()
        for t in targets:
            found = _resolve(t, mods) if t.split(".")[0] == "ablate" else None
            if found is None or found == name:
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first, except the packages holding this module
            deps |= {found} | (_ancestors(found) - _ancestors(name) - {name})
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_lazy_and_package_imports():
    g = import_graph()
    assert "ablate.rundir" in g["ablate.report.runs"]  # from .. import rundir
    assert "ablate.report.analysis" in g["ablate.report.figures"]  # from .analysis import ...
    assert {"ablate.inspect.runs", "ablate.inspect"} <= g["ablate.report.panels"]  # lazy, inside a function
    assert "ablate.report" in g["ablate.callbacks"]  # from . import report, inside a method
    assert "ablate.report" in g["ablate.report.cli"]  # from . import make_report: the package's __init__


def test_no_import_cycle_inside_ablate():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_an_entry_point():
    g = import_graph()
    entry = {m for m in g if m.endswith((".cli", ".__main__"))}
    users = {m: sorted(d & entry) for m, d in g.items() if d & entry and not m.endswith(".__main__")}
    assert not users, f"modules importing a command line: {users}"


def test_every_module_is_short_enough_to_read():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
