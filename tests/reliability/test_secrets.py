"""Secret canary: sentinel keys never reach output, logs, artifacts, progress.json or objects."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from faiss_builder.errors import EXIT_STORAGE
from tests.reliability.conftest import BUCKET, supabase_env
from tests.reliability.harness import Build, Result, run_cli
from tests.reliability.slow_server import SlowStorageServer
from tests.support.supabase_storage_server import SupabaseStorageServer

SUPABASE_SENTINEL = "sb_secret_CANARY4f1c9e2a7b"
MODAL_ID_SENTINEL = "ak-CANARYID8d3e6b"
MODAL_SECRET_SENTINEL = "as-CANARYSECRET5a2f7c"
SENTINELS = (SUPABASE_SENTINEL, MODAL_ID_SENTINEL, MODAL_SECRET_SENTINEL)
DEBUG = {
    "PREFECT_LOGGING_LEVEL": "DEBUG",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "DEBUG",
    "MODAL_TOKEN_ID": MODAL_ID_SENTINEL,
    "MODAL_TOKEN_SECRET": MODAL_SECRET_SENTINEL,
}


def _leaks(text: str | bytes, where: str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{where}: {s}" for s in SENTINELS if s.encode() in data]


def _api_records() -> list[str]:
    """Every log line and artifact the session's Prefect server holds, as text."""

    async def read() -> list[str]:
        from prefect.client.orchestration import get_client

        found: list[Any] = []
        async with get_client() as client:
            for reader in (client.read_logs, client.read_artifacts):
                offset = 0
                while page := await reader(limit=200, offset=offset):
                    found.extend(page)
                    offset += len(page)
        return [record.model_dump_json() for record in found]

    return asyncio.run(read())


def test_sentinel_keys_appear_nowhere(
    small_catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    leaks: list[str] = []
    with SlowStorageServer(key=SUPABASE_SENTINEL, buckets=(BUCKET,)) as server:
        run_env = supabase_env(env, server, FAISS_BUILDER_CATALOG=str(small_catalog), **DEBUG)
        args = ["build", "--store", "supabase", "--json"]
        server.faults.set_rate(0.15, seed=5, actions=("status", "reset", "stall"))
        faulty = run_cli(args, run_env, tmp_path)
        assert faulty.code == 0, faulty.stderr
        assert len(server.faults.fired) > 0
        server.faults.set_rate(1.0, actions=("status", "reset"))  # storage down: errors, tracebacks
        down = run_cli([*args, "--max-images", "1"], {**run_env, "FAISS_BUILDER_CATALOG": str(
            small_catalog)}, tmp_path)  # fmt: skip
        assert down.code == EXIT_STORAGE, down.stderr
        server.faults.clear()
        status = run_cli(["status", "--store", "supabase", "--failed", "--json"], run_env, tmp_path)
        assert status.code == 0
        for name, stored in server.objects.items():
            leaks += _leaks(stored.data, f"object {name}")
        assert any(name.endswith("progress.json") for name in server.objects)
    refused = _refused_key_run(run_env, tmp_path)
    for label, result in (("faulty", faulty), ("down", down), ("status", status)):
        leaks += _leaks(result.stdout + result.stderr, f"{label} run output")
    leaks += _leaks(refused.stdout + refused.stderr, "refused-key run output")
    assert len(faulty.stderr) > 1000, "DEBUG logging produced no console output to search"
    for record in _api_records():
        leaks += _leaks(record, "Prefect API log/artifact")
    for path in Path(run_env["PREFECT_HOME"]).rglob("*"):
        if path.is_file():
            leaks += _leaks(path.read_bytes(), f"PREFECT_HOME file {path.name}")
    assert not leaks, leaks


def _refused_key_run(run_env: dict[str, str], tmp_path: Path) -> Result:
    """A server that refuses the sentinel (403): the auth error must not echo the key."""
    with SupabaseStorageServer(key="some-other-key", buckets=(BUCKET,)) as other:
        result = run_cli(
            ["build", "--store", "supabase"], {**run_env, "SUPABASE_URL": other.url}, tmp_path
        )
    assert result.code == EXIT_STORAGE, result.stderr
    return result


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(15, id="15s"), pytest.param(150, id="to-the-end", marks=pytest.mark.soak)],
)
def test_a_modal_backend_run_never_prints_its_tokens(
    seconds: int, small_catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """Bad tokens make Modal retry for about a minute: make test watches 15 s, soak to the end."""
    with SupabaseStorageServer() as gone:  # a port nothing listens on
        dead = gone.url
    run_env = {**env, **DEBUG, "MODAL_SERVER_URL": dead}
    args = ["build", "--backend", "modal", "--store", str(tmp_path / "store"),
            "--catalog", str(small_catalog)]  # fmt: skip
    result = Build(args, run_env, tmp_path).wait_or_kill(seconds)
    assert result.code != 0
    assert "DEBUG" in result.stderr or result.code == -9, result.stderr[-2000:]
    assert not _leaks(result.stdout + result.stderr, "modal run output"), result.stderr[-2000:]
