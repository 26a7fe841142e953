"""fsnap's modules import each other without cycles, also none hidden inside functions or
behind ``TYPE_CHECKING`` (a cycle there is the same tangle, only postponed).

The graph is read from the source (every ``import`` / ``from ... import`` naming an fsnap
module, wherever it stands); the packages listed in ``ACYCLIC`` must be in no cycle. A
package joins the list once its cycles are gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fsnap

SRC = Path(fsnap.__file__).parent
ACYCLIC = (
    "fsnap.content",
    "fsnap.unpack",
    "fsnap.errors",
    "fsnap.pull",
    "fsnap.push",
    "fsnap.snapshots",
)


def module_files() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = ["fsnap", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the fsnap modules it imports (a name imported from a package counts as
    its submodule when there is one, else as the package)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else resolve(node.module))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    if len(component) > 1:
                        found.append(component)
    return found


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ACYCLIC)
def test_the_package_is_in_no_import_cycle(package: str) -> None:
    graph = import_graph(module_files())
    tangled = [
        sorted(component)
        for component in cycles(graph)
        if any(m == package or m.startswith(package + ".") for m in component)
    ]
    assert tangled == []
