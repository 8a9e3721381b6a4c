"""The house rules, read from the code's own imports: layers import downwards only, no cycles.

- sharding/ and modal_workers/ are libraries: they import only themselves and third-party packages;
- no two folders import each other, directly or through other folders (a folder and its own
  subfolders excepted);
- no module import cycle. Imports inside functions count; imports under `if TYPE_CHECKING:` do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("sharding", "modal_workers")
NOT_CHECKED = {"tests", "scripts", "supabase", "docs", "demo"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported project module, dotted
    line: int


def project_packages(root: Path) -> set[str]:
    return {
        path.parent.name
        for path in root.glob("*/__init__.py")
        if path.parent.name not in NOT_CHECKED and not path.parent.name.startswith(".")
    }


def modules(root: Path, packages: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node, except the bodies of `if TYPE_CHECKING:` (their `else` still runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The project modules `name` imports at run time (function bodies included)."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in _walk_runtime(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.append(Import(name, candidate if candidate in known else base, node.lineno))
    return [_resolved(item, known) for item in found if _resolved(item, known).target in known]


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def _resolved(item: Import, known: dict[str, Path]) -> Import:
    """`import a.b.c` of a name inside a module resolves to the longest known module prefix."""
    target = item.target
    while target and target not in known:
        target = target.rpartition(".")[0]
    return Import(item.source, target, item.line)


def import_graph(root: Path) -> list[Import]:
    known = modules(root, project_packages(root))
    return [
        edge
        for name, path in sorted(known.items())
        for edge in imports_of(name, path, known)
        if edge.target != name
    ]


def folder_of(module: str, root: Path) -> str:
    path = root / module.replace(".", "/")
    return module if path.is_dir() else module.rpartition(".")[0]


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def library_violations(edges: list[Import]) -> list[str]:
    return [
        f"{e.source}:{e.line} imports {e.target}"
        for e in edges
        if e.source.split(".")[0] in LIBRARIES and e.target.split(".")[0] != e.source.split(".")[0]
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def module_cycles(edges: list[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    return cycles(graph)


def folder_cycles(edges: list[Import], root: Path) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        a, b = folder_of(e.source, root), folder_of(e.target, root)
        if not _nested(a, b):
            graph.setdefault(a, set()).add(b)
    return cycles(graph)


# --- the rules, on this repository ---------------------------------------------------------


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return import_graph(ROOT)


def test_the_graph_sees_the_layers(edges: list[Import]) -> None:
    sources = {e.source.split(".")[0] for e in edges}
    assert {
        "application",
        "tasks",
        "flows",
        "faiss_builder",
        "sharding",
        "modal_workers",
    } <= sources


def test_libraries_import_only_themselves_and_third_party(edges: list[Import]) -> None:
    assert library_violations(edges) == []


def test_no_two_folders_import_each_other(edges: list[Import]) -> None:
    assert folder_cycles(edges, ROOT) == []


def test_no_module_import_cycle(edges: list[Import]) -> None:
    assert module_cycles(edges) == []


def test_the_application_layer_knows_no_prefect_tasks_flows_or_cli(edges: list[Import]) -> None:
    upward = [
        f"{e.source} imports {e.target}"
        for e in edges
        if e.source.startswith("application")
        and e.target.split(".")[0] in {"tasks", "flows", "deployments", "faiss_builder"}
    ]
    assert upward == []


# --- the checker itself catches what it must -------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_folder_and_module_cycles_and_library_leaks(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "sharding/__init__.py": "",
            "sharding/a.py": "def f():\n    from app import x\n",  # inside a function: counts
            "app/__init__.py": "",
            "app/x.py": "from sharding import a\n",
            "modal_workers/__init__.py": "",
            "modal_workers/p.py": "from . import q\n",
            "modal_workers/q.py": "from modal_workers.p import thing\n",
            "modal_workers/r.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app import x\n"
            ),
        },
    )
    edges = import_graph(root)
    assert library_violations(edges) == ["sharding.a:2 imports app.x"]
    assert folder_cycles(edges, root) == [["app", "sharding"]]
    assert module_cycles(edges) == [["app.x", "sharding.a"], ["modal_workers.p", "modal_workers.q"]]


def test_checker_allows_a_folder_and_its_subfolders(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/s.py": "from app.sub import t\n",
            "app/sub/__init__.py": "",
            "app/sub/t.py": "def f():\n    import app.u\n",
            "app/u.py": "",
        },
    )
    edges = import_graph(root)
    assert folder_cycles(edges, root) == []
    assert module_cycles(edges) == []
