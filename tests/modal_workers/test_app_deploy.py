"""The Modal app file loads the way `modal deploy modal_workers/app.py` loads it, without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "modal_workers"


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
