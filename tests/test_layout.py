"""
Tests of the package's shape: imports between majordomo's modules flow one way
(no module imports, even lazily, one that imports it back), and every module
stays small enough to hold one idea.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

import majordomo

PACKAGE = os.path.dirname(majordomo.__file__)

# The size a module is kept under.
MAX_LINES = 400
# Modules not split yet, and the size each may not grow past meanwhile.
NOT_YET_SPLIT: dict[str, int] = {}
# Import cycles not broken yet: a cycle found must lie inside one of these.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def module_files() -> dict[str, str]:
    """Every module of the package by dotted name, with its file."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))
                dotted = relative[: -len(".py")].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes of C{tree} outside C{if TYPE_CHECKING:} blocks (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(modules: dict[str, str]) -> dict[str, set[str]]:
    """The package modules each module imports when run, at the top or inside a function."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        imported: set[str] = set()
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = (imported & set(modules)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


class ImportCycleTests(SynchronousTestCase):
    def test_finds_a_cycle(self) -> None:
        """The checker sees a loop of any length, and nothing where imports flow one way."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
        self.assertEqual(cycles(graph), [frozenset({"a", "b", "c"})])
        self.assertEqual(cycles({"a": {"b"}, "b": set()}), [])

    def test_lazy_imports_count(self) -> None:
        """An import inside a function is an edge; one under TYPE_CHECKING is not."""
        tree = ast.parse(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    import x\n"
            "def f():\n    import y\n"
        )
        names = {
            alias.name
            for node in _runtime_nodes(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        self.assertEqual(names, {"y"})

    def test_no_new_cycles(self) -> None:
        """No majordomo modules import each other, beyond the cycles not broken yet."""
        graph = imports(module_files())
        self.assertIn("majordomo.pricing.cost", graph["majordomo.pricing"])  # it reads them
        new = [
            sorted(group) for group in cycles(graph) if not any(group <= k for k in KNOWN_CYCLES)
        ]
        self.assertEqual(new, [])


class ModuleSizeTests(SynchronousTestCase):
    def test_modules_are_small(self) -> None:
        """Every module is under MAX_LINES lines (the ones not split yet: no larger than now)."""
        too_long = {}
        for path in module_files().values():
            name = os.path.relpath(path, os.path.dirname(PACKAGE)).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                lines = len(f.readlines())
            if lines > NOT_YET_SPLIT.get(name, MAX_LINES):
                too_long[name] = lines
        self.assertEqual(too_long, {})


class PackagingTests(SynchronousTestCase):
    def test_every_package_is_installed(self) -> None:
        """
        setup.cfg lists its packages one by one (the twisted/plugins directory
        must not be found as a package of its own): every package of the
        gateway must be in that list, or a plain `pip install .` leaves it out.
        """
        import configparser

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        setup = configparser.ConfigParser()
        setup.read(os.path.join(root, "setup.cfg"))
        listed = set(setup["options"]["packages"].split())
        found = {
            os.path.relpath(directory, root).replace(os.sep, ".")
            for directory, _, files in os.walk(os.path.join(root, "majordomo"))
            if "__init__.py" in files
        }
        self.assertEqual(found - listed, set())
