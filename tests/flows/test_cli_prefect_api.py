"""`faiss-builder build` and its Prefect API: one line and exit 6 when none answers, and the
temporary server it starts never outlives it, even when the CLI is SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faiss_builder.demo import make_demo_catalog
from faiss_builder.errors import EXIT_CONFIG, EXIT_PREFECT

CLI = str(Path(sys.executable).with_name("faiss-builder"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FAISS_BUILDER_", "PREFECT_"))
    }
    return {
        **env,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _build(catalog: Path, store: Path, env: dict[str, str]) -> list[str]:
    args = ["build", "--catalog", str(catalog), "--store", str(store)]
    return [CLI, *args, "--embedder", "histogram", "--json"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_demo_catalog(tmp_path_factory.mktemp("catalog"), 8)
    return path


def test_an_unreachable_prefect_api_url_is_one_line_and_exit_6(
    catalog: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api"
    env = _env(tmp_path, PREFECT_API_URL=url)
    result = subprocess.run(
        _build(catalog, tmp_path / "store", env),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_PREFECT, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PREFECT_API_URL" in lines[0] and url in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()


def test_a_bad_catalog_is_refused_before_prefect_is_asked(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api"  # asking it would be exit 6
    env = _env(tmp_path, PREFECT_API_URL=url)
    result = subprocess.run(
        _build(tmp_path / "missing.csv", tmp_path / "store", env),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"faiss-builder: error: catalog file {tmp_path / 'missing.csv'} does not exist (or is not a file)"
    ]
    assert not (tmp_path / "store").exists()


def test_a_server_that_does_not_start_in_time_names_the_setting_and_leaves_no_process(
    catalog: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    process = subprocess.Popen(
        _build(catalog, tmp_path / "store", env),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREFECT, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[0]
    assert _processes_with_ancestor(process.pid, _tree_snapshot()) == []


def test_a_sigkilled_build_leaves_no_prefect_server_behind(tmp_path: Path) -> None:
    catalog, _ = make_demo_catalog(tmp_path / "catalog", 150)
    store = tmp_path / "store"
    env = _env(tmp_path, FAISS_BUILDER_BATCH_SIZE="4", FAISS_BUILDER_MAX_IN_FLIGHT="1")
    process = subprocess.Popen(
        _build(catalog, store, env),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (store / "progress.json").exists():  # the flow is committing batches
            assert process.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never committed"
            time.sleep(0.2)
        started = _processes_with_ancestor(process.pid, _tree_snapshot())
        assert started, "the CLI started no Prefect server to watch"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 5
        alive = started
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in started if _exists(pid)]
        assert alive == [], f"left running after SIGKILL: {_describe(alive)}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in _processes_in_session(process.pid):  # never leak, whatever the outcome
            os.kill(pid, signal.SIGKILL)


def _tree_snapshot() -> dict[int, int]:
    """{pid: parent pid} of every process now."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _processes_with_ancestor(root: int, parents: dict[int, int]) -> list[int]:
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            found.append(pid)
    return sorted(found)


def _processes_in_session(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != session:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # field 6 of stat: session id
                found.append(int(entry.name))
    return found


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
        except OSError:
            out.append(str(pid))
    return "; ".join(out)
