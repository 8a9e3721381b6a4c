"""SIGKILL a nightly sync build (changed, soft- and hard-deleted, inserted-below-cursor rows) at
random moments; the resumed store equals an uninterrupted sync: no id live twice, no deleted id
live, no change lost, and each change applied once (the same number of dead slots)."""

from __future__ import annotations

import csv
import random
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from sharding.local_store import LocalStore
from sharding.state import read_progress
from tests.reliability.conftest import PRODUCTS
from tests.reliability.harness import (
    Build,
    Contents,
    assert_same_as_clean,
    cli_env,
    contents,
    lease_holder,
    run_cli,
    run_for,
    wait_for_new_holder,
)

T0, T1 = "2026-11-30T02:00:00Z", "2026-12-01T02:00:00Z"
COLUMNS = ["id", "image_url", "brand", "updated_at", "deleted_at"]


@dataclass(frozen=True)
class Synced:
    base: Path  # a store built from the first catalog
    changed: Path  # the second catalog
    contents: Contents  # what an uninterrupted sync of `base` to `changed` holds
    dead: dict[str, int]


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _args(store: Path, catalog: Path) -> list[str]:
    return ["build", "--store", str(store), "--catalog", str(catalog)]


def _dead(store: Path) -> dict[str, int]:
    progress = read_progress(LocalStore(store))
    assert progress is not None
    return {kind: kp.dead for kind, kp in progress.kinds.items()}


@pytest.fixture(scope="module")
def synced(prefect_api: object, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Synced:
    work = tmp_path_factory.mktemp("sync")
    env = cli_env(prefect_api, work / "prefect")
    with catalog.open(newline="", encoding="utf-8") as handle:
        rows = {int(r["id"]): {**r, "updated_at": T0} for r in csv.DictReader(handle)}
    first = catalog.with_name("catalog-sync-1.csv")
    _write(first, [rows[i] for i in sorted(rows)])
    base = work / "base"
    assert run_cli(_args(base, first), env, work).code == 0
    rng = random.Random(14)
    ids = sorted(rows)
    for pid in rng.sample(ids, 30):  # a new photo: another product's
        other = rows[rng.choice(ids)]["image_url"]
        rows[pid] |= {"image_url": other, "updated_at": T1}
    for pid in rng.sample(ids, 12):
        rows[pid] |= {"deleted_at": T1, "updated_at": T1}  # soft delete
    for pid in rng.sample(ids, 12):
        rows.pop(pid, None)  # hard delete
    for pid in range(-6, 1):  # inserted below the cursor
        rows[pid] = {"id": pid, "image_url": rows[ids[-1]]["image_url"], "updated_at": T1}
    for pid in range(PRODUCTS + 1, PRODUCTS + 21):  # appended above it
        rows[pid] = {"id": pid, "image_url": rows[ids[-1]]["image_url"], "updated_at": T1}
    changed = catalog.with_name("catalog-sync-2.csv")
    _write(changed, [rows[i] for i in sorted(rows)])
    reference = work / "reference"
    shutil.copytree(base, reference)
    assert run_cli(_args(reference, changed), env, work).code == 0
    return Synced(base, changed, contents(LocalStore(reference)), _dead(reference))


@pytest.mark.parametrize(
    "kills",
    [pytest.param(20, id="20-kills"), pytest.param(60, id="60-kills", marks=pytest.mark.soak)],
)
def test_random_sigkills_during_a_sync_then_resume_equal_an_uninterrupted_sync(
    kills: int, synced: Synced, env: dict[str, str], tmp_path: Path
) -> None:
    rng, landed, rounds, mid_sync = random.Random(kills), 0, 0, 0
    small_pages = {**env, "FAISS_BUILDER_BATCH_SIZE": "8"}  # a sync of many pages and commits
    assert sum(synced.dead.values()) > 0
    while landed < kills:
        store = tmp_path / f"round-{rounds}"
        shutil.copytree(synced.base, store)
        previous: str | None = None
        while landed < kills:
            build = Build(_args(store, synced.changed), small_pages, tmp_path)
            holder = partial(_holder, store)
            assert wait_for_new_holder(build, holder, previous)
            run_for(build, rng.uniform(0.0, 2.5))
            if not build.kill():
                break
            landed += 1
            previous = holder()
            # Killed after some of the sync was committed and before all of it was.
            mid_sync += 0 < sum(_dead(store).values()) < sum(synced.dead.values())
        final = run_cli(_args(store, synced.changed), small_pages, tmp_path)
        assert final.code == 0, final.stderr
        assert_same_as_clean(LocalStore(store), synced.contents)
        assert _dead(store) == synced.dead, f"round {rounds}: a change was applied twice"
        rounds += 1
    assert mid_sync >= 1, "no kill landed in the middle of a sync"
    print(f"kill -9 during sync: {landed} kills over {rounds} rounds, {mid_sync} mid-sync")


def _holder(store: Path) -> str | None:
    path = store / "lease.json"
    return lease_holder(path.read_bytes()) if path.exists() else None
