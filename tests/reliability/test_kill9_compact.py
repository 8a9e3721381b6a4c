"""SIGKILL `faiss-builder compact` at random moments; the resumed store equals an uninterrupted
compaction: the same live ids and vectors in the same order, no id live twice, no deleted id
live, no dead slot left, the kind compacted once, `check` clean."""

from __future__ import annotations

import csv
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, names
from sharding.checks import check_store
from sharding.local_store import LocalStore
from sharding.state import read_progress
from tests.reliability.harness import (
    Build,
    Contents,
    cli_env,
    contents,
    run_cli,
    run_for,
    store_holder,
    wait_for_new_holder,
)

KINDS = {"color": 48, "structure": 24, "combined": 32}
PRODUCTS = 1500
#: Compaction reads no Prefect API; a closed port makes sure nothing tries.
NO_PREFECT = "http://127.0.0.1:9/api"


@dataclass(frozen=True)
class Dirty:
    store: Path  # 1500 products in 40-vector shards, 35 % deleted and 5 % replaced
    catalog: Path  # the live products with their brands
    deleted: frozenset[int]
    clean: Contents  # what an uninterrupted compaction holds
    work_s: float  # how long that compaction ran, start to exit


def _vectors(ids: list[int], dim: int, salt: int) -> np.ndarray:
    rng = np.random.default_rng([salt, dim, *ids[:1]])
    v = rng.standard_normal((len(ids), dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brand(pid: int) -> str | None:
    return f"brand-{pid % 7}" if pid % 5 else None


def _make_dirty(path: Path, rng: random.Random) -> tuple[frozenset[int], list[int]]:
    store = LocalStore(path)
    config = BuildConfig("histogram", "histogram-v1", KINDS, shard_max_vectors=40)
    writer = IndexWriter.open(store, config, run_id="build")
    for start in range(1, PRODUCTS + 1, 500):
        ids = list(range(start, min(start + 500, PRODUCTS + 1)))
        vectors = {kind: _vectors(ids, dim, 0) for kind, dim in KINDS.items()}
        writer.add_batch(EmbeddedBatch(ids, [_brand(i) for i in ids], vectors))
        writer.commit()
    deleted = frozenset(rng.sample(range(1, PRODUCTS + 1), int(0.35 * PRODUCTS)))
    writer.delete(sorted(deleted))
    replaced = sorted(rng.sample(sorted(set(range(1, PRODUCTS + 1)) - deleted), PRODUCTS // 20))
    vectors = {kind: _vectors(replaced, dim, 1) for kind, dim in KINDS.items()}
    writer.add_batch(EmbeddedBatch(replaced, [_brand(i) for i in replaced], vectors, changed=True))
    writer.commit()
    writer.finish()
    return deleted, [i for i in range(1, PRODUCTS + 1) if i not in deleted]


def _args(store: Path, catalog: Path) -> list[str]:
    return ["compact", "--store", str(store), "--catalog", str(catalog), "--json"]


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Dirty:
    work = tmp_path_factory.mktemp("compact")
    deleted, live = _make_dirty(work / "dirty", random.Random(14))
    catalog = work / "catalog.csv"
    with catalog.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "image_url", "brand"])
        out.writerows([pid, f"images/{pid}.jpg", _brand(pid) or ""] for pid in live)
    reference = work / "reference"
    shutil.copytree(work / "dirty", reference)
    env = cli_env(NO_PREFECT, work / "home")
    result = run_cli(_args(reference, catalog), env, work)
    assert result.code == 0, result.stderr
    assert sorted(result.json()["compacted"]) == sorted(KINDS)  # type: ignore[arg-type]
    return Dirty(
        work / "dirty",
        catalog,
        deleted,
        contents(LocalStore(reference), list(KINDS)),
        result.seconds,
    )


def _phase(store: Path) -> str:
    """Where a killed compaction stopped: before its commit (with or without uploads of the new
    compaction), or after it (retired objects still there, or all cleaned up)."""
    progress = read_progress(LocalStore(store))
    assert progress is not None
    committed = {kind: kp.compaction for kind, kp in progress.kinds.items()}
    parsed = [p for n in LocalStore(store).list() if (p := names.parse(n)) and p.number]
    if all(c == 0 for c in committed.values()):
        return "uploading" if any(p.compaction == 1 for p in parsed) else "not started"
    return "cleaning up" if any(p.compaction == 0 for p in parsed) else "done"


def _chain(dirty: Dirty, env: dict[str, str], work: Path, seed: int, kills: int) -> list[str]:
    """Kill successive compactions of a copy of the store, let one finish and compare; again
    on a fresh copy until `kills` kills landed."""
    rng = random.Random(seed)
    phases: list[str] = []
    for attempt in range(4 * kills):
        if len(phases) >= kills:
            break
        store = work / f"store-{seed}-{attempt}"
        shutil.copytree(dirty.store, store)
        holder = partial(store_holder, store)
        previous: str | None = None
        while len(phases) < kills:
            run = Build(_args(store, dirty.catalog), env, work)
            assert wait_for_new_holder(run, holder, previous)
            run_for(run, rng.uniform(0.0, dirty.work_s))
            if not run.kill():
                break
            previous = holder()
            phases.append(_phase(store))
        final = run_cli(_args(store, dirty.catalog), env, work)
        assert final.code == 0, final.stderr
        _assert_like_clean(LocalStore(store), dirty)
    return phases


def _assert_like_clean(store: LocalStore, dirty: Dirty) -> None:
    report = check_store(store)
    assert report.ok and not report.problems, report.to_markdown()
    got = contents(store, list(KINDS))
    progress = read_progress(store)
    assert progress is not None
    for kind, (ids, vectors) in dirty.clean.items():
        assert got[kind][0] == ids, f"{kind}: live ids or their order differ"
        assert not set(got[kind][0]) & dirty.deleted, f"{kind}: a deleted product is live"
        np.testing.assert_array_equal(got[kind][1], vectors)
        kp = progress.kinds[kind]
        assert (kp.dead, kp.compaction) == (0, 1), (
            f"{kind}: dead {kp.dead}, compacted {kp.compaction}x"
        )


@pytest.mark.parametrize(
    "chains,kills",
    [pytest.param(5, 4, id="20-kills"), pytest.param(10, 8, id="80-kills", marks=pytest.mark.soak)],
)
def test_random_sigkills_during_compactions_then_resume_equal_an_uninterrupted_one(
    chains: int, kills: int, dirty: Dirty, tmp_path: Path
) -> None:
    env = cli_env(NO_PREFECT, tmp_path / "home", FAISS_BUILDER_LEASE_TTL_S="2")
    with ThreadPoolExecutor(max_workers=chains) as pool:
        runs = list(pool.map(lambda seed: _chain(dirty, env, tmp_path, seed, kills), range(chains)))
    phases = [phase for run in runs for phase in run]
    assert len(phases) >= chains * kills, f"only {len(phases)} kills landed: {phases}"
    assert "uploading" in phases, f"no kill landed while new shards were uploaded: {phases}"
    print(f"kill -9 during compact: {len(phases)} kills, phases {sorted(set(phases))}")


def test_compact_refuses_in_one_line_with_the_documented_exit_codes(
    dirty: Dirty, tmp_path: Path
) -> None:
    from sharding.lease import StoreLease

    env = cli_env(NO_PREFECT, tmp_path / "home")
    store = tmp_path / "store"
    shutil.copytree(dirty.store, store)
    before = (store / "progress.json").read_bytes()
    bad = run_cli([*_args(store, dirty.catalog), "--threshold", "1.5"], env, tmp_path)
    empty = run_cli(_args(tmp_path / "empty", dirty.catalog), env, tmp_path)
    held = StoreLease.acquire(LocalStore(store), "a-build", ttl_s=60)
    try:
        busy = run_cli(
            _args(store, dirty.catalog), {**env, "FAISS_BUILDER_LEASE_WAIT_S": "0"}, tmp_path
        )
    finally:
        held.release()
    for result, code in ((bad, 2), (empty, 4), (busy, 5)):
        assert result.code == code, result.stderr
        assert (
            result.stderr.startswith("faiss-builder: error: ") and "Traceback" not in result.stderr
        )
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "a-build" in busy.stderr
    assert (store / "progress.json").read_bytes() == before
