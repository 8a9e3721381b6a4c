"""Storage faults under a real build: 10% bad answers, storage down, an ambiguous commit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from faiss_builder.errors import EXIT_STORAGE
from tests.reliability.conftest import SMALL, Clean, server_store, supabase_env
from tests.reliability.harness import Build, Result, assert_same_as_clean, run_cli, wait_until
from tests.reliability.slow_server import SlowStorageServer
from tests.support.supabase_storage_server import SupabaseStorageServer

FAULT_ACTIONS = ("status", "reset", "stall")


def _build_args(*extra: str) -> list[str]:
    return ["build", "--store", "supabase", "--json", *extra]


def _catalog_env(env: dict[str, str], server: SlowStorageServer, catalog: Path) -> dict[str, str]:
    return supabase_env(env, server, FAISS_BUILDER_CATALOG=str(catalog))


def _assert_one_line_storage_error(result: Result, key: str) -> None:
    assert result.code == EXIT_STORAGE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faiss-builder: error:"), result.stderr
    assert "supabase" in lines[0].lower(), lines[0]
    assert key not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "seeds",
    [
        pytest.param((1,), id="1-seed"),
        pytest.param((2, 3, 4), id="3-seeds", marks=pytest.mark.soak),
    ],
)
def test_ten_percent_faulty_requests_lose_nothing(
    seeds: tuple[int, ...],
    clean: Clean,
    small_catalog: Path,
    env: dict[str, str],
    slow_server: SlowStorageServer,
    tmp_path: Path,
) -> None:
    run_env = _catalog_env(env, slow_server, small_catalog)
    for seed in seeds:
        slow_server.objects.clear()
        slow_server.faults.fired.clear()
        slow_server.faults.set_rate(0.10, seed, actions=FAULT_ACTIONS)
        result = run_cli(_build_args(), run_env, tmp_path)
        slow_server.faults.clear()
        assert result.code == 0, result.stderr
        fired = {action for action, _, _ in slow_server.faults.fired}
        assert fired == set(FAULT_ACTIONS), fired  # every fault kind was exercised
        assert_same_as_clean(server_store(slow_server), clean.contents, upto=SMALL)
        print(f"seed {seed}: {len(slow_server.faults.fired)} faults in "
              f"{len(slow_server.requests)} requests, {result.seconds:.1f} s")  # fmt: skip


def test_storage_down_mid_run_stops_in_bounded_time_and_resumes(
    clean: Clean,
    small_catalog: Path,
    env: dict[str, str],
    slow_server: SlowStorageServer,
    tmp_path: Path,
) -> None:
    run_env = _catalog_env(env, slow_server, small_catalog)
    build = Build(_build_args(), run_env, tmp_path)
    assert wait_until(lambda: len(slow_server.commits) >= 3 or not build.running(), 60)
    assert build.running()
    slow_server.faults.set_rate(1.0, actions=("status", "reset"))  # every request fails
    down_at = time.monotonic()
    result = build.wait(120)
    stopped_after = time.monotonic() - down_at
    _assert_one_line_storage_error(result, slow_server.key)
    assert stopped_after < 30, f"took {stopped_after:.1f} s to give up"
    committed = slow_server.commits[-1]
    slow_server.faults.clear()
    resumed = run_cli(_build_args(), run_env, tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert resumed.json()["products"] < SMALL  # it resumed, it did not start over
    assert slow_server.commits[-1][1] > committed[1]
    assert_same_as_clean(server_store(slow_server), clean.contents, upto=SMALL)
    print(f"storage down: build stopped {stopped_after:.1f} s later: {result.stderr.strip()}")


def test_storage_unreachable_from_the_start_exits_3_quickly(
    small_catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    with SupabaseStorageServer() as gone:
        url, key = gone.url, gone.key
    run_env = {**env, "FAISS_BUILDER_STORE": "supabase", "SUPABASE_URL": url,
               "SUPABASE_KEY": key, "SUPABASE_TIMEOUT_S": "0.5",
               "FAISS_BUILDER_CATALOG": str(small_catalog)}  # fmt: skip
    result = run_cli(_build_args(), run_env, tmp_path)
    _assert_one_line_storage_error(result, key)
    assert result.seconds < 30, result.seconds


def _lose_a_commit_response(
    env: dict[str, str], server: SlowStorageServer, catalog: Path, tmp_path: Path, fail: int
) -> Result:
    """Run a build; after 3 commits one progress.json lands but its answer is lost, then `fail`
    more progress.json writes answer 503."""
    build = Build(_build_args(), env, tmp_path)
    assert wait_until(lambda: len(server.commits) >= 3 or not build.running(), 60)
    server.faults.lose_response_next(1, method="POST", path_contains="progress.json")
    server.faults.fail_next(fail, status=503, method="POST", path_contains="progress.json")
    result = build.wait(180)
    assert [f for f in server.faults.fired if f[0] == "lose_response"], "the fault never fired"
    server.faults.clear()
    return result


def test_an_ambiguous_commit_is_recognised_by_the_retried_commit(
    clean: Clean,
    small_catalog: Path,
    env: dict[str, str],
    slow_server: SlowStorageServer,
    tmp_path: Path,
) -> None:
    """progress.json lands, the answer is lost and 3 retries fail: the run adopts what landed."""
    run_env = _catalog_env(env, slow_server, small_catalog) | {"FAISS_BUILDER_LEASE_TTL_S": "60"}
    result = _lose_a_commit_response(run_env, slow_server, small_catalog, tmp_path, fail=3)
    assert result.code == 0, result.stderr
    seqs = [seq for _, seq in slow_server.commits]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # none written twice, none skipped
    assert_same_as_clean(server_store(slow_server), clean.contents, upto=SMALL)


def test_an_ambiguous_commit_is_recognised_on_resume(
    clean: Clean,
    small_catalog: Path,
    env: dict[str, str],
    slow_server: SlowStorageServer,
    tmp_path: Path,
) -> None:
    """progress.json lands but every later commit fails until the run gives up: the resume
    starts right after what landed (not redone, not skipped)."""
    run_env = _catalog_env(env, slow_server, small_catalog) | {"FAISS_BUILDER_LEASE_TTL_S": "60"}
    result = _lose_a_commit_response(run_env, slow_server, small_catalog, tmp_path, fail=10_000)
    assert result.code == EXIT_STORAGE, result.stderr
    landed_run, landed_seq = slow_server.commits[-1]
    resumed = run_cli(_build_args(), run_env, tmp_path)
    assert resumed.code == 0, resumed.stderr
    seqs = [seq for _, seq in slow_server.commits]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert resumed.json()["products"] == SMALL - slow_server.cursors[landed_seq]
    assert landed_run != resumed.json()["run_id"]
    assert_same_as_clean(server_store(slow_server), clean.contents, upto=SMALL)
