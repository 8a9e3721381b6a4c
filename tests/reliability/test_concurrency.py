"""Two builds on one store: one writes, the other waits or exits 5; a stale writer cannot commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from faiss_builder.errors import EXIT_BUSY
from sharding.checks import check_store
from sharding.errors import LeaseLost
from sharding.lease import StoreLease
from sharding.local_store import LocalStore
from sharding.state import read_progress
from sharding.writer import IndexWriter
from tests.reliability.conftest import SMALL, Clean
from tests.reliability.harness import Build, assert_same_as_clean, run_cli, snapshot
from tests.sharding.builds import SMALL as SMALL_CONFIG
from tests.sharding.builds import Catalog


@pytest.mark.parametrize("wait_s", ["0", "120"], ids=["no-wait", "wait"])
def test_two_builds_at_once_one_writes_and_the_store_checks(
    wait_s: str,
    clean: Clean,
    small_catalog: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    args = ["build", "--store", str(store), "--catalog", str(small_catalog), "--json"]
    both_env = {**env, "FAISS_BUILDER_LEASE_WAIT_S": wait_s}
    runs = [Build(args, both_env, tmp_path), Build(args, both_env, tmp_path)]
    results = [run.wait(180) for run in runs]
    writers = [r for r in results if r.code == 0 and r.json()["products"] == SMALL]
    others = [r for r in results if r not in writers]
    assert len(writers) == 1 and len(others) == 1, [(r.code, r.stderr) for r in results]
    other = others[0]
    if other.code == EXIT_BUSY:  # refused at once, one clear line naming the holder
        assert wait_s == "0"
        assert other.stderr.count("\n") == 1 and "is held by run" in other.stderr, other.stderr
    else:  # waited for the lease, then found nothing left to do
        assert other.code == 0 and other.json()["products"] == 0, other.stderr
    checked = run_cli(
        ["check", "--store", str(store), "--catalog", str(small_catalog), "--sample", "4"],
        env,
        tmp_path,
    )
    assert checked.code == 0, checked.stdout + checked.stderr
    assert_same_as_clean(LocalStore(store), clean.contents, upto=SMALL)


def test_a_stale_writer_whose_lease_expired_cannot_commit_or_clobber(tmp_path: Path) -> None:
    storage, now = LocalStore(tmp_path), [1_000.0]
    batches = list(Catalog().batches(None, 8, dict(SMALL_CONFIG.dims)))
    stale_lease = StoreLease.acquire(storage, "stale", ttl_s=5, clock=lambda: now[0])
    stale = IndexWriter.open(storage, SMALL_CONFIG, run_id="stale", before_commit=stale_lease.renew)
    stale.add_batch(batches[0])
    stale.commit()
    now[0] += 60  # the stale writer stalls (GC pause, suspended laptop) past its TTL
    lease = StoreLease.acquire(storage, "live", ttl_s=5, clock=lambda: now[0])
    live = IndexWriter.open(storage, SMALL_CONFIG, run_id="live", before_commit=lease.renew)
    live.add_batch(batches[1])
    live.commit()
    before = snapshot(tmp_path)
    with pytest.raises(LeaseLost):  # at its first write: sealing a shard or committing
        stale.add_batch(batches[2])  # different products into the live run's shard numbers
        stale.commit()
    progress = read_progress(storage)
    assert progress is not None and progress.run_id == "live" and progress.commit_seq == 2
    assert snapshot(tmp_path) == before, "the stale writer overwrote objects of the live run"
    assert check_store(storage).ok
