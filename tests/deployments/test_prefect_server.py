"""A real `prefect server`: `prefect deploy --all` and `prefect deployment run build-index/color`
through a process worker exactly as README says, serve refusing to take deployed deployments
over, and the zombie automation crashing a run whose heartbeats stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faiss_builder.demo import make_demo_catalog

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PRODUCTS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on 127.0.0.1 with its own home and database, stopped afterwards.

    The environment carries no FAISS_BUILDER_* variable: deployments get their settings from
    the project's .env, as README says."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAISS_BUILDER_")},
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


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository, as a user's checkout, without a .env."""
    project = tmp_path_factory.mktemp("checkout") / "project"
    shutil.copytree(
        REPO,
        project,
        ignore=shutil.ignore_patterns(".venv", ".git", ".stack", "demo", "*.pyc", ".env"),
    )
    return project


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


def _api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=10)
    response.raise_for_status()
    return response.json() if response.content else None


def _run_color_through_a_worker(env: dict[str, str], project: Path) -> dict[str, Any]:
    """`prefect deployment run build-index/color`, one worker pass; the run's final state."""
    out = _prefect(env, "deployment", "run", "build-index/color", cwd=project)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert run_id, out
    _prefect(
        env, "worker", "start", "--pool", "faiss-builder", "--run-once", "--limit", "1", cwd=project
    )
    state: dict[str, Any] = _api(env, "GET", f"/flow_runs/{run_id.group(1)}")["state"]
    return state


def _run_through_a_worker(env: dict[str, str], project: Path, name: str) -> dict[str, Any]:
    """`prefect deployment run <name>`, one worker pass; the run's final state."""
    out = _prefect(env, "deployment", "run", name, cwd=project)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert run_id, out
    _prefect(
        env, "worker", "start", "--pool", "faiss-builder", "--run-once", "--limit", "1", cwd=project
    )
    state: dict[str, Any] = _api(env, "GET", f"/flow_runs/{run_id.group(1)}")["state"]
    return state


def _deployment(env: dict[str, str], name: str) -> dict[str, Any]:
    deployment: dict[str, Any] = _api(env, "GET", f"/deployments/name/{name}")
    return deployment


@pytest.mark.slow
def test_deploy_all_then_run_color_as_readme_says(
    server_env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    env = server_env
    _prefect(env, "work-pool", "create", "faiss-builder", "--type", "process", cwd=project)
    deployed = _prefect(env, "deploy", "--all", cwd=project)
    assert "build-index/color" in deployed

    # Not configured yet: the run fails at once, naming what to set, and writes nothing.
    refused = _run_color_through_a_worker(env, project)
    assert refused["type"] == "FAILED", refused
    assert "FAISS_BUILDER_STORE and FAISS_BUILDER_CATALOG" in refused["message"]
    assert not (project / "faiss-store").exists()

    # Set once, in the project's .env (README): the same command builds.
    catalog, _ = make_demo_catalog(tmp_path / "catalog", PRODUCTS)
    store = tmp_path / "store"
    (project / ".env").write_text(
        f"FAISS_BUILDER_STORE={store}\nFAISS_BUILDER_CATALOG={catalog}\n"
        "FAISS_BUILDER_EMBEDDER=histogram\nFAISS_BUILDER_BATCH_SIZE=5\n"
    )
    built = _run_color_through_a_worker(env, project)
    assert built["type"] == "COMPLETED", built
    progress = json.loads((store / "progress.json").read_text())
    assert set(progress["kinds"]) == {"color"}
    assert progress["kinds"]["color"]["total_vectors"] == PRODUCTS
    assert json.loads((store / "id_map_color.json").read_text()) == list(range(1, PRODUCTS + 1))

    # The alignment check is deployed without kinds: it checks what the store holds.
    assert "kinds" not in _deployment(env, "alignment-check/all-kinds")["parameters"]
    # Deployment runs send heartbeats often enough for deployments.zombies.
    color = _deployment(env, "build-index/color")
    assert color["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"

    # Weekly reconciliation and compaction have schedules of their own; compaction runs
    # through the worker on the store just built (nothing dead: nothing rewritten).
    assert _deployment(env, "build-index/reconcile")["parameters"]["reconcile"] is True
    weekly = _deployment(env, "compact-index/weekly")
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["30 4 * * 0"]
    before = (store / "progress.json").read_bytes()
    compacted = _run_through_a_worker(env, project, "compact-index/weekly")
    assert compacted["type"] == "COMPLETED", compacted
    assert (store / "progress.json").read_bytes() == before


@pytest.mark.slow
def test_serve_refuses_to_take_over_deployed_deployments(
    server_env: dict[str, str], project: Path
) -> None:
    env = server_env
    if not _deployment_exists(env, "build-index/color"):
        _prefect(env, "work-pool", "create", "faiss-builder", "--type", "process", cwd=project)
        _prefect(env, "deploy", "--all", cwd=project)
    before = {name: _deployment(env, name) for name in _names()}
    result = subprocess.run(
        [sys.executable, "-m", "deployments.serve"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing" in result.stderr and "build-index/color" in result.stderr
    for name, was in before.items():
        now = _deployment(env, name)
        assert now["work_pool_name"] == "faiss-builder"
        assert now["paused"] is False and was["paused"] is False
        assert [s["schedule"] for s in now["schedules"]] == [
            s["schedule"] for s in was["schedules"]
        ]
        assert all(s["active"] for s in now["schedules"])


@pytest.mark.slow
def test_the_zombie_automation_crashes_a_run_whose_heartbeats_stopped(
    server_env: dict[str, str], project: Path
) -> None:
    env = server_env
    created = subprocess.run(
        [sys.executable, "-m", "deployments.zombies", "10"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    flow = _api(env, "POST", "/flows/", {"name": "zombie-probe"})
    run = _api(
        env,
        "POST",
        "/flow_runs/",
        {"flow_id": flow["id"], "name": "killed", "state": {"type": "RUNNING"}},
    )
    # One heartbeat, as a flow process sends it, then silence: the process was SIGKILLed.
    _api(
        env,
        "POST",
        "/events",
        [
            {
                "id": _uuid(),
                "occurred": _now(),
                "event": "prefect.flow-run.heartbeat",
                "resource": {"prefect.resource.id": f"prefect.flow-run.{run['id']}"},
            }
        ],
    )
    deadline = time.monotonic() + 45
    state = "RUNNING"
    while time.monotonic() < deadline and state == "RUNNING":
        time.sleep(1)
        state = _api(env, "GET", f"/flow_runs/{run['id']}")["state"]["type"]
    assert state == "CRASHED"

    # README's manual recovery of one run, for a server without the automation.
    stuck = _api(
        env,
        "POST",
        "/flow_runs/",
        {"flow_id": flow["id"], "name": "stuck", "state": {"type": "RUNNING"}},
    )
    by_hand = subprocess.run(
        [sys.executable, "-m", "deployments.zombies", "--crash", stuck["id"]],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    assert _api(env, "GET", f"/flow_runs/{stuck['id']}")["state"]["type"] == "CRASHED"


def _names() -> list[str]:
    from deployments.specs import DEPLOYMENTS

    return [spec.full_name for spec in DEPLOYMENTS]


def _deployment_exists(env: dict[str, str], name: str) -> bool:
    response = httpx.get(f"{env['PREFECT_API_URL']}/deployments/name/{name}", timeout=10)
    return response.status_code == 200


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
