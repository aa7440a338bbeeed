"""The gateway package's shape: its modules import one another without a cycle, at top level."""

from __future__ import annotations

import ast
from pathlib import Path

import api

PACKAGE = Path(api.__file__).resolve().parent


def module_name(path: Path) -> str:
    return f"api.{path.stem}" if path.stem != "__init__" else "api"


def api_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The ``api`` modules a module imports (``import api.x``, ``from api.x import y``,
    ``from api import x``; relative imports included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "api" if node.level else (node.module or "")
            if node.level and node.module:
                base = f"api.{node.module}"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.glob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module_name(path)] = api_imports(tree, modules) - {module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, [*path, module])
            if cycle is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = import_graph()
    assert {"api.context", "api.routes", "api.v2", "api.ops"} <= graph["api.app"]
    assert "api.submit" in graph["api.v2"]
    assert "api.routes" not in graph["api.v2"]


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_api_modules_import_each_other_without_a_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_api_modules_import_only_at_top_level() -> None:
    """No import hides inside a function (the way cycles are dodged)."""
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                nested = [inner for inner in ast.walk(node) if isinstance(inner, ast.Import | ast.ImportFrom)]
                assert not nested, (
                    f"{path.name}: {node.name}() imports inside its body (line {nested[0].lineno})"
                )
