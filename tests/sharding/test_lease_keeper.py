"""The lease keeper renews in the background; once it stops (or the run dies) the lease expires."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sharding.errors import LeaseHeld, LeaseLost
from sharding.lease import LeaseKeeper, StoreLease
from sharding.local_store import LocalStore


def test_a_kept_lease_outlives_its_ttl_and_expires_after_the_keeper_stops(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lease = StoreLease.acquire(store, "run-a", ttl_s=0.4)
    with LeaseKeeper(lease, interval_s=0.05) as keeper:
        time.sleep(1.0)
        lease.verify()  # still ours, 2.5 TTLs later
        with pytest.raises(LeaseHeld, match="run-a"):
            StoreLease.acquire(store, "run-b", ttl_s=0.4)
    assert keeper.error is None
    time.sleep(0.5)
    taken = StoreLease.acquire(store, "run-b", ttl_s=5)
    assert taken.run_id == "run-b"
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
    from sharding.errors import StateError

    store = LocalStore(tmp_path)
    store.put("lease.json", b"{not json")
    with pytest.raises(StateError, match=r"lease\.json is unreadable.*delete it"):
        StoreLease.acquire(store, "run-a", ttl_s=5)
