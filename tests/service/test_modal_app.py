"""The Modal web endpoint file loads as `modal deploy service/modal_app.py` loads it (no deploy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_modal_web_endpoint_is_defined_without_importing_the_service() -> None:
    code = (
        "import sys, service.modal_app as m\n"
        "print(m.app.name, sorted(m.app.registered_functions), 'fastapi' in sys.modules, "
        "'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["modal-faiss-builder-search", "['web']", "False", "False"]
