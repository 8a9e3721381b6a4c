"""`faiss-builder serve` as a user starts it, `search --text`, and the demo's last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from faiss_builder.cli import app
from faiss_builder.errors import EXIT_CONFIG
from tests.service.conftest import free_port


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_serve_command_answers_until_stopped(histogram_store: Path, demo_catalog: Path) -> None:
    port = free_port()
    command = [str(Path(sys.executable).with_name("faiss-builder")), "serve", "--store",
               str(histogram_store), "--catalog", str(demo_catalog), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while True:
                try:
                    health = client.get("/health")
                    if health.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
            body = client.post("/search", json={"id": 3, "k": 2}).json()
            assert body["results"][0]["id"] == 3
            assert "faiss-builder search" in client.get("/").text
    finally:
        process.terminate()
        process.wait(30)
    assert process.stderr is not None
    assert f"on http://127.0.0.1:{port}" in process.stderr.read()


def test_serve_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    code, _, err = _cli("serve", "--store", str(tmp_path), "--poll-s", "0")
    assert code == EXIT_CONFIG and err.startswith("faiss-builder: error:")
    assert err.count("\n") == 1


def test_search_text_on_the_cli(clip_store: Path, demo_catalog: Path) -> None:
    code, out, err = _cli("search", "--store", str(clip_store), "--text", "red bag", "-k", "3",
                          "--catalog", str(demo_catalog), "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["query"] == "'red bag'" and len(result["hits"]) == 3


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "structure"], "text queries search the color or combined kind"),
        (["--id", "3"], "give exactly one of --image, --id or --text"),
    ],
)
def test_search_text_refusals(clip_store: Path, args: list[str], says: str) -> None:
    code, _, err = _cli("search", "--store", str(clip_store), "--text", "red bag", *args)
    assert code == EXIT_CONFIG and says in err and err.count("\n") == 1


def test_search_text_of_a_histogram_store(histogram_store: Path) -> None:
    code, _, err = _cli("search", "--store", str(histogram_store), "--text", "red bag")
    assert code == EXIT_CONFIG and "histogram embedder has no text tower" in err


def test_demo_ends_with_the_command_that_serves_it(prefect_api: object, tmp_path: Path) -> None:
    code, _, err = _cli("demo", "--folder", str(tmp_path / "demo"), "--products", "10",
                        "--embedder", "histogram")  # fmt: skip
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"serve it: faiss-builder serve --store {tmp_path / 'demo' / 'store'}")


def test_every_service_setting_is_documented() -> None:
    from service.settings import ServiceSettings

    root = Path(__file__).resolve().parents[2]
    env_example = (root / ".env.example").read_text()
    readme = (root / "README.md").read_text()
    for name in ServiceSettings.model_fields:
        variable = f"FAISS_BUILDER_SERVICE_{name.upper()}"
        assert variable in env_example and variable in readme, variable
