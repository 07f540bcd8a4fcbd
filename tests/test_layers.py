"""The package's shape, checked statically: imports run one way, SQL and backend differences
live in the drivers, the supervisor stays free of databases, and runner never imports the
example app."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "runner"


def _module(path: Path) -> str:
    parts = list(path.relative_to(RUNNER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every runner module this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("runner")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("runner"):
                continue
            found.add(base)
            for alias in node.names:  # `from . import bridge` imports a module
                candidate = f"{base}.{alias.name}"
                if (RUNNER.parent / Path(*candidate.split("."))).with_suffix(".py").exists():
                    found.add(candidate)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in RUNNER.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # importing runner.a.b also runs runner.a's __init__
            while imported and imported not in modules:
                imported = imported.rsplit(".", 1)[0] if "." in imported else ""
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its children is not a cycle of behaviour; exclude edges
    # from a package to its own submodules.
    pruned = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    assert _cycles(pruned) == []


def test_the_supervisor_owns_no_database_and_no_loop() -> None:
    imported = _imports(RUNNER / "supervisor.py")
    assert imported <= {"runner.frames"}, imported
    text = (RUNNER / "supervisor.py").read_text()
    assert "sqlalchemy" not in text and "asyncio" not in text and "anyio" not in text


def test_sql_and_backend_differences_live_in_the_drivers() -> None:
    for path in RUNNER.rglob("*.py"):
        relative = path.relative_to(RUNNER).as_posix()
        if relative.startswith("drivers/") or relative == "schema.py":
            continue
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy":
                assert "text" not in {a.name for a in node.names}, f"{relative} builds SQL"
            if isinstance(node, ast.Compare):
                left = ast.unparse(node.left)
                assert not left.endswith((".backend", "dialect.name")), f"{relative} line {node.lineno} branches on the backend"


def test_runner_never_imports_the_example_app() -> None:
    for path in RUNNER.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name == "jobs" or a.name.startswith("jobs.") for a in node.names), path
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith("jobs"), path
