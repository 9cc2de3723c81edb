"""The house's first promise: arrows point one way. No import cycle among pipeline/ and storage/
modules, counting every import: inside functions too (a function-level import hides a cycle, it does
not remove it) and under `if TYPE_CHECKING:` (a type-only import is still an arrow between modules).
And storage/ imports nothing of pipeline/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "storage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.Module, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules a module imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here if is_package else here.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import pipeline.x.y` → the longest known module
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]
    known = {module_name(path) for path in files}
    graph = {}
    for path in files:
        name = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_pipeline_and_storage_have_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_storage_imports_nothing_of_pipeline():
    graph = import_graph()
    leaks = {name: sorted(t for t in targets if t.startswith("pipeline")) for name, targets in graph.items()}
    assert {name: t for name, t in leaks.items() if name.startswith("storage") and t} == {}


@pytest.mark.parametrize(
    ("modules", "cyclic"),
    [
        ({"a": "from pipeline import b\n", "b": "def f():\n    from pipeline import a\n"}, True),
        (
            {
                "a": "from pipeline import b\n",
                "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import a\n",
            },
            True,
        ),
        ({"a": "from pipeline.b import thing\n", "b": "import os\n"}, False),
    ],
    ids=["function-level-import-counts", "type-checking-import-counts", "no-cycle"],
)
def test_the_cycle_check_finds_what_it_should(modules, cyclic):
    known = {f"pipeline.{name}" for name in modules} | {"pipeline"}
    graph = {
        f"pipeline.{name}": imported_modules(ast.parse(code), f"pipeline.{name}", False, known)
        for name, code in modules.items()
    }
    assert (find_cycle(graph) is not None) == cyclic
