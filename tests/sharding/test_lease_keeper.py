"""The lease keeper renews in the background; once it stops (or the run dies) the lease expires."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sharding.errors import LeaseHeld, LeaseLost, StateError
from sharding.lease import LeaseKeeper, StoreLease
from sharding.local_store import LocalStore

TTL_S = 2.0  # the shortest allowed


def test_a_kept_lease_outlives_its_ttl_and_is_taken_only_after_the_keeper_stops(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    lease = StoreLease.acquire(store, "run-a", ttl_s=TTL_S)
    with LeaseKeeper(lease, interval_s=0.05) as keeper:
        time.sleep(TTL_S * 1.5)
        lease.verify()  # still ours, past its TTL
        with pytest.raises(LeaseHeld, match="run-a"):  # a contender that watches sees renewals
            StoreLease.acquire(store, "run-b", ttl_s=TTL_S, wait_s=TTL_S * 1.5, poll_s=0.05)
    assert keeper.error is None
    stopped = time.monotonic()
    taken = StoreLease.acquire(store, "run-b", ttl_s=5, wait_s=TTL_S * 2, poll_s=0.05)
    assert taken.run_id == "run-b"
    assert time.monotonic() - stopped >= TTL_S  # only once it stayed unchanged for a TTL
    with pytest.raises(LeaseLost, match="run-b"):
        lease.verify()


def test_the_keeper_stops_once_the_lease_is_lost(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lease = StoreLease.acquire(store, "run-a", ttl_s=5)
    store.delete(["lease.json"])
    StoreLease.acquire(store, "run-b", ttl_s=5)
    with LeaseKeeper(lease, interval_s=0.02) as keeper:
        time.sleep(0.2)
    assert isinstance(keeper.error, LeaseLost)
    with pytest.raises(LeaseHeld, match="run-b"):  # run-b's lease was left alone
        StoreLease.acquire(store, "run-c", ttl_s=5)


def test_an_unreadable_lease_is_a_clear_state_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("lease.json", b"{not json")
    with pytest.raises(StateError, match=r"lease\.json is unreadable.*delete it"):
        StoreLease.acquire(store, "run-a", ttl_s=5)
