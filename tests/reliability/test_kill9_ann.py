"""SIGKILL `faiss-builder build` during its update-ann step: the previous generation of every
kind's approximate index keeps serving, and the resumed store equals an uninterrupted one.

Each kind first gets generation 1 from the first 120 products; the full catalog then doubles
the live count, so the next build retrains every kind (generation 2: trained index, one list
object per sealed shard, progress.json). That build is killed at random moments: half of the
kills at a random time of its run, half as soon as it has written a new ann object (the update
is between its first write and its commit). k-means runs on one thread, so training the same
sample gives the same bytes in any process and the states compare exactly.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from application.searcher import load_commit
from sharding.ann import load_ann
from sharding.checks import check_store
from sharding.local_store import LocalStore
from sharding.progress import Progress
from sharding.state import read_progress
from tests.reliability.conftest import SMALL, Clean
from tests.reliability.harness import (
    KINDS,
    Build,
    assert_same_as_clean,
    lease_holder,
    run_cli,
    run_for,
    wait_for_new_holder,
    wait_until,
)

ANN_SETTINGS = {"FAISS_BUILDER_ANN_MIN_VECTORS": "100", "OMP_NUM_THREADS": "1"}


def _args(store: Path, catalog: Path) -> list[str]:
    return ["build", "--store", str(store), "--catalog", str(catalog)]


def _holder(store: Path) -> str | None:
    try:
        return lease_holder((store / "lease.json").read_bytes())
    except FileNotFoundError:
        return None


def _ann_files(store: Path) -> set[str]:
    return {p.name for p in store.glob("ann_*")}


def _progress(store: Path) -> Progress:
    progress = read_progress(LocalStore(store))
    assert progress is not None
    return progress


def _assert_serving(store: Path, before: Progress, after: Progress) -> None:
    """Every kind's index is the previous generation or the new one whole, and it serves."""
    now = _progress(store)
    for kind in KINDS:
        assert now.ann[kind] in (before.ann[kind], after.ann[kind]), kind
        assert load_ann(LocalStore(store), now, kind) is not None, kind
    commit = load_commit(LocalStore(store), catalog=None)
    assert set(commit.approximate) == set(KINDS)
    query = commit.stored_vector("color", 1)
    assert next(r.id for r in commit.search("color", query, 5)) == 1


@pytest.mark.parametrize(
    "kills",
    [pytest.param(2, id="2-kills"), pytest.param(16, id="16-kills", marks=pytest.mark.soak)],
)
def test_sigkill_during_an_ann_update_keeps_the_previous_generation_serving(
    kills: int, clean: Clean, catalog: Path, env: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(kills)
    run_env = {**env, **ANN_SETTINGS}
    first = catalog.with_name("catalog-ann-first.csv")
    lines = catalog.read_text(encoding="utf-8").splitlines(keepends=True)
    first.write_text("".join(lines[: SMALL + 1]), encoding="utf-8")
    start = tmp_path / "start"
    assert run_cli(_args(start, first), run_env, tmp_path).code == 0
    before = _progress(start)
    assert {kind: state.generation for kind, state in before.ann.items()} == dict.fromkeys(KINDS, 1)

    reference = tmp_path / "reference"
    shutil.copytree(start, reference)
    uninterrupted = run_cli(_args(reference, catalog), run_env, tmp_path)
    assert uninterrupted.code == 0, uninterrupted.stderr
    after = _progress(reference)
    assert {kind: state.generation for kind, state in after.ann.items()} == dict.fromkeys(KINDS, 2)

    landed, mid_update, rounds = 0, 0, 0
    while landed < kills:
        store = tmp_path / f"round-{rounds}"
        shutil.copytree(start, store)
        previous: str | None = _holder(store)
        while landed < kills:
            known = _ann_files(store)
            build = Build(_args(store, catalog), run_env, tmp_path)
            assert wait_for_new_holder(build, lambda s=store: _holder(s), previous)
            if landed % 2:  # as soon as the update wrote an object of its own
                wait_until(
                    lambda s=store, k=known: bool(_ann_files(s) - k), uninterrupted.seconds + 30
                )
                run_for(build, rng.uniform(0.0, 0.05))
            else:
                run_for(build, rng.uniform(0.0, uninterrupted.seconds))
            if not build.kill():
                break  # it finished first: this round is complete
            landed += 1
            # Mid-update: it wrote an ann object of its own and not every kind is committed yet
            # (kinds commit one after another, so a kind may already be at generation 2).
            uncommitted = _progress(store).ann
            mid_update += bool(_ann_files(store) - known) and uncommitted != after.ann
            _assert_serving(store, before, after)
            previous = _holder(store)
        final = run_cli(_args(store, catalog), run_env, tmp_path)
        assert final.code == 0, final.stderr
        got = _progress(store)
        assert got.ann == after.ann  # the same generation, lists, recall as without kills
        assert _ann_files(store) == _ann_files(reference)
        assert_same_as_clean(LocalStore(store), clean.contents)  # runs check_store too
        assert check_store(LocalStore(store)).ok
        rounds += 1
    assert mid_update >= 1, "no kill landed between the update's first write and its commit"
    print(f"ann kill -9: {landed} kills over {rounds} rounds, {mid_update} mid-update")
