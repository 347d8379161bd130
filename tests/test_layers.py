"""The layers stay one-directional: no import circle among the pipeline's modules (imports
inside functions included: a lazy import is still a dependency), and MLflow clients are made
only by the store layer (reads in pipeline.queries, writes in pipeline.tracking use it)."""

from __future__ import annotations

import ast
import re

from pipeline.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"


def module_graph() -> dict[str, set[str]]:
    """Module -> the pipeline modules it imports anywhere in its file."""
    files = {}
    for f in PACKAGE.rglob("*.py"):
        if "plugins" in f.relative_to(PACKAGE).parts:  # installed apart, imports lazily
            continue
        name = ".".join(f.relative_to(PROJECT_ROOT).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                for alias in node.names:  # `from pipeline.report import data` is a module
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in files else str(node.module))
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pipeline")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph = module_graph()
    assert {"pipeline.store", "pipeline.queries", "pipeline.tracking"} <= set(graph)
    assert cycles(graph) == []
    # the detector itself sees a circle when there is one
    assert cycles({**graph, "pipeline.store": graph["pipeline.store"] | {"pipeline.queries"}})


def test_mlflow_clients_are_made_by_the_store_layer_only() -> None:
    makers = {
        f.relative_to(PROJECT_ROOT).as_posix()
        for f in PACKAGE.rglob("*.py")
        if re.search(r"MlflowClient\(", f.read_text())
    }
    assert makers == {"pipeline/store.py"}
