"""A real `prefect server`, a process work pool and worker, `prefect deploy --all`, a deployment run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faiss_builder.demo import make_demo_catalog

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 with its own home and database, stopped afterwards."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_healthy(api_url: str, server: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


def _prefect(env: dict[str, str], *args: str, cwd: Path, timeout: float = 180) -> str:
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.mark.slow
def test_deploy_all_and_run_build_index_color_through_a_worker(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(
        REPO, project, ignore=shutil.ignore_patterns(".venv", ".git", ".stack", "demo", "*.pyc")
    )
    catalog, _ = make_demo_catalog(tmp_path / "catalog", 12)
    store = tmp_path / "store"
    env = {
        **server_env,
        "FAISS_BUILDER_STORE": str(store),
        "FAISS_BUILDER_CATALOG": str(catalog),
        "FAISS_BUILDER_EMBEDDER": "histogram",
        "FAISS_BUILDER_BATCH_SIZE": "5",
    }
    _prefect(env, "work-pool", "create", "faiss-builder", "--type", "process", cwd=project)
    deployed = _prefect(env, "deploy", "--all", cwd=project)
    assert "build-index/color" in deployed
    _prefect(env, "deployment", "run", "build-index/color", cwd=project)
    _prefect(
        env, "worker", "start", "--pool", "faiss-builder", "--run-once", "--limit", "1", cwd=project
    )
    progress = json.loads((store / "progress.json").read_text())
    assert set(progress["kinds"]) == {"color"}
    assert progress["kinds"]["color"]["total_vectors"] == 12
    assert (store / "clip_color_shard_00001.index").exists()
    assert json.loads((store / "id_map_color.json").read_text()) == list(range(1, 13))
