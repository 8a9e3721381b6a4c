"""StoreLease: create-only acquisition, bounded waiting, takeover of expired leases, verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharding import LeaseHeld, LeaseLost, LocalStore, StoreLease
from tests.sharding.builds import run_build


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_second_run_waits_then_gets_a_clear_refusal(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    StoreLease.acquire(store, "run-a", ttl_s=60, clock=clock)
    with pytest.raises(LeaseHeld, match="held by run run-a until"):
        StoreLease.acquire(store, "run-b", wait_s=10, poll_s=2, clock=clock, sleep=clock.sleep)
    assert clock.now == 1_000_010.0  # it waited, bounded


def test_expired_lease_is_taken_over_and_the_old_holder_loses_it(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    old = StoreLease.acquire(store, "run-a", ttl_s=60, clock=clock)
    clock.now += 61
    new = StoreLease.acquire(store, "run-b", ttl_s=60, clock=clock)
    new.verify()
    with pytest.raises(LeaseLost, match="taken by run run-b"):
        old.verify()
    old.release()  # not ours any more: left alone
    new.verify()
    new.release()
    with pytest.raises(LeaseLost, match="gone"):
        new.verify()


def test_renew_extends_and_expiry_is_detected(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    lease = StoreLease.acquire(store, "run-a", ttl_s=60, clock=clock)
    clock.now += 50
    lease.renew()
    clock.now += 50
    lease.verify()
    clock.now += 11
    with pytest.raises(LeaseLost, match="expired"):
        lease.verify()


def test_a_lost_lease_stops_the_commit_before_progress_is_written(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    lease = StoreLease.acquire(store, "run-a", ttl_s=60, clock=clock)
    clock.now += 61
    with pytest.raises(LeaseLost):
        run_build(store, run_id="run-a", before_commit=lease.verify)
    assert not (tmp_path / "progress.json").exists()
