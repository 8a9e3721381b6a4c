"""modal_workers imports only itself and third-party packages, and its modules form no cycle.

Every import counts, including those inside functions; only `if TYPE_CHECKING:` blocks are skipped
(they never run). The project-wide layer test covers the other folders; this one is the library's
own contract, so a loop such as clip -> embedders -> clip fails here first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "modal_workers"
PROJECT_PACKAGES = {"application", "sharding", "tasks", "flows", "faiss_builder", "deployments"}
PROJECT_PACKAGES |= {"bench", "tests"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, current: str) -> set[str]:
    """Every module named by an import that can run (functions included, TYPE_CHECKING not)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            assert isinstance(node, ast.If)
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = current.split(".")[: len(current.split(".")) - node.level]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules, if any
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        names = imported_names(ast.parse(path.read_text(encoding="utf-8")), name)
        graph[name] = {n for n in names if n in modules and n != name}
        graph[name].discard("modal_workers")  # the package __init__ is empty
        graph.setdefault("__outside__", set()).update(
            f"{name} -> {n}" for n in names if n.split(".")[0] in PROJECT_PACKAGES
        )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per back edge found by a depth-first search (empty when the graph is acyclic)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def test_no_module_cycle_inside_modal_workers() -> None:
    graph = import_graph()
    graph.pop("__outside__", None)
    assert cycles(graph) == []
    assert "modal_workers.embedders" not in graph["modal_workers.clip"]
    assert "modal_workers.embedders" not in graph["modal_workers.histogram"]


def test_modal_workers_imports_no_other_project_package() -> None:
    assert import_graph().get("__outside__", set()) == set()


def test_the_checker_sees_imports_inside_functions_but_not_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from modal_workers import clip\n"
        "def f():\n    from modal_workers.embedders import load_embedder\n"
    )
    names = imported_names(tree, "modal_workers.x")
    assert "modal_workers.embedders" in names and "modal_workers.clip" not in names
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_one_home_for_the_shared_names() -> None:
    from modal_workers import app, embedder, embedders, names, remote

    assert embedders.DEFAULT_CLIP_MODEL is embedder.DEFAULT_CLIP_MODEL
    assert embedders.EmbedderLoadError is embedder.EmbedderLoadError
    assert embedders.ImageEmbedder is embedder.ImageEmbedder
    assert app.APP_NAME is remote.APP_NAME is names.APP_NAME
    assert app.CLS_NAME is remote.CLS_NAME is names.CLS_NAME
    sources = {p.name: p.read_text(encoding="utf-8") for p in PACKAGE.glob("*.py")}
    for constant in ("DEFAULT_CLIP_MODEL =", "APP_NAME =", "KINDS:", "ProductId ="):
        homes = [name for name, text in sources.items() if f"\n{constant}" in text]
        assert len(homes) == 1, (constant, homes)


@pytest.mark.parametrize("cwd", ["repo", "elsewhere"])
def test_app_file_imports_as_modal_deploy_imports_it(cwd: str, tmp_path: Path) -> None:
    """`modal deploy modal_workers/app.py` loads the file as a script with its folder on sys.path."""
    app_file = PACKAGE / "app.py"
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(PACKAGE)!r})\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(app_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['app'] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(module.app.name, 'torch' in sys.modules)\n"
    )
    where = PACKAGE.parent if cwd == "repo" else tmp_path
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=where, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["modal-faiss-builder", "False"]
