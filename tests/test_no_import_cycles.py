"""No import cycle anywhere in the project's packages, module by module.

import-linter's layers keep the top-level packages pointing one way; this test looks
inside them too: two modules that import each other (even through a chain, even under
``TYPE_CHECKING`` or inside a function) are a cycle, and the test names it.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("cli", "sim", "central", "edge_agent", "drivers", "mqttlink")


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in imports[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(imports)))
    try:
        for module in sorted(imports):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_cycle_finder_finds_a_chain_back_to_the_start() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(imports) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_project_imports_itself_back() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = graph.modules
    imports = {
        m: {x for x in graph.find_modules_directly_imported_by(m) if x in modules} for m in modules
    }
    assert len(imports) > 100  # the graph really holds the project
    assert cycles(imports) == []
