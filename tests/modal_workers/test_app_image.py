"""The Modal image installs every third-party package modal_workers imports (or one that brings it)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "modal_workers"
#: Import name -> the pinned distribution that provides it (directly or as its own dependency).
PROVIDED_BY = {
    "PIL": "pillow",
    "httpcore": "httpx",
    "huggingface_hub": "transformers",
    "modal": "modal",  # Modal's own base image has it
}


def third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names} - {
        "modal_workers",
        "__future__",
    }


def image_installs() -> set[str]:
    tree = ast.parse((PACKAGE / "app.py").read_text())
    pins = {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "pip_install"
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    }
    return {pin.split("==")[0].lower() for pin in pins} | {"modal"}


def test_every_import_of_the_worker_is_installed_in_its_image() -> None:
    installs = image_installs()
    missing = sorted(
        name
        for name in third_party_imports()
        if PROVIDED_BY.get(name, name).lower().replace("_", "-") not in installs
    )
    assert "torch" in installs and "transformers" in installs
    assert missing == []
