"""SIGKILL `faiss-builder build` at random moments and mid-upload; resumes equal a clean build."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from sharding.checks import check_store
from sharding.local_store import LocalStore
from tests.reliability.conftest import Clean, server_store, supabase_env
from tests.reliability.harness import (
    Build,
    assert_same_as_clean,
    lease_holder,
    run_cli,
    run_for,
    wait_for_new_holder,
    wait_until,
)
from tests.reliability.slow_server import SlowStorageServer


@dataclass
class KillLog:
    landed: int = 0
    torn: int = 0  # kills that left objects newer than progress.json behind
    rounds: int = 0
    runs: list[str] = field(default_factory=list)


def _build_args(store: str, catalog: Path) -> list[str]:
    return ["build", "--store", store, "--catalog", str(catalog)]


def _has_uncommitted_tail(store: Path) -> bool:
    report = check_store(LocalStore(store))
    return any(p.code in ("uncommitted_tail", "uncommitted_object") for p in report.problems)


@pytest.mark.parametrize(
    "kills",
    [pytest.param(10, id="10-kills"), pytest.param(50, id="50-kills", marks=pytest.mark.soak)],
)
def test_random_sigkills_then_resume_equal_a_clean_build(
    kills: int, clean: Clean, catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    rng, log = random.Random(kills), KillLog()
    while log.landed < kills:
        store = tmp_path / f"round-{log.rounds}"
        previous: str | None = None
        while log.landed < kills:
            build = Build(_build_args(str(store), catalog), env, tmp_path)
            # Writes start once this run holds the lease (it takes the dead run's over).
            assert wait_for_new_holder(build, partial(_holder, store), previous)
            run_for(build, rng.uniform(0.0, 1.5))
            if not build.kill():
                break  # it finished first: this round is complete
            log.landed += 1
            log.torn += _has_uncommitted_tail(store)
            previous = _holder(store)
        final = run_cli(_build_args(str(store), catalog), env, tmp_path)
        assert final.code == 0, final.stderr
        assert_same_as_clean(LocalStore(store), clean.contents)
        log.rounds += 1
    assert log.landed >= kills
    print(
        f"kill -9: {log.landed} kills over {log.rounds} rounds, {log.torn} left uncommitted objects"
    )


@pytest.mark.parametrize(
    "kills",
    [pytest.param(4, id="4-kills"), pytest.param(15, id="15-kills", marks=pytest.mark.soak)],
)
def test_sigkill_while_an_upload_is_in_flight(
    kills: int,
    clean: Clean,
    catalog: Path,
    env: dict[str, str],
    slow_server: SlowStorageServer,
    tmp_path: Path,
) -> None:
    rng = random.Random(100 + kills)
    run_env = supabase_env(env, slow_server)
    in_flight_at_kill: list[str] = []
    previous: str | None = None
    slow_server.upload_delay_s = 0.15
    for number in range(kills):
        slow_server.drop_orphans = number % 2 == 0  # half the orphaned uploads land anyway
        build = Build(_build_args("supabase", catalog), run_env, tmp_path)
        assert wait_for_new_holder(build, partial(_server_holder, slow_server), previous)
        run_for(build, rng.uniform(0.0, 1.0))
        target = "/progress.json" if number % 2 else ""  # every other kill: mid-commit
        assert wait_until(partial(_in_flight, slow_server, target, build), 30)
        in_flight_at_kill.append(next(iter(slow_server.in_flight.values()), ""))
        assert build.kill(), "the build finished before the kill: raise PRODUCTS"
        previous = _server_holder(slow_server)
    slow_server.upload_delay_s = 0.0
    final = run_cli(_build_args("supabase", catalog), run_env, tmp_path)
    assert final.code == 0, final.stderr
    assert_same_as_clean(server_store(slow_server), clean.contents)
    assert len(in_flight_at_kill) == kills and all(in_flight_at_kill)
    run_ids = [run for run, _ in slow_server.commits]
    assert run_ids == sorted(run_ids, key=run_ids.index)  # runs never interleave commits
    print(
        f"mid-upload kills: {kills}; in flight: {in_flight_at_kill}; orphans {slow_server.orphans}"
    )


def test_injected_crash_between_object_writes_and_progress_json(
    clean: Clean, catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    """The 7th write of a fresh run is the first progress.json (6 shard objects come first)."""
    store = tmp_path / "store"
    for crash_at in ("7", "13", "31"):
        crashing = {**env, "FAISS_BUILDER_CRASH_AFTER_WRITES": crash_at}
        result = run_cli(_build_args(str(store), catalog), crashing, tmp_path)
        assert result.code != 0 and "InjectedCrash" in result.stderr, result.stderr
    assert _has_uncommitted_tail(store)
    final = run_cli(_build_args(str(store), catalog), env, tmp_path)
    assert final.code == 0, final.stderr
    assert_same_as_clean(LocalStore(store), clean.contents)


def _holder(store: Path) -> str | None:
    try:
        return lease_holder((store / "lease.json").read_bytes())
    except FileNotFoundError:
        return None


def _in_flight(server: SlowStorageServer, suffix: str, build: Build) -> bool:
    """An upload whose path ends with `suffix` is in flight (or the build is gone)."""
    paths = list(server.in_flight.values())
    return any(path.endswith(suffix) for path in paths) or not build.running()


def _server_holder(server: SlowStorageServer) -> str | None:
    return lease_holder(server.read("faiss", "faiss/lease.json"))
