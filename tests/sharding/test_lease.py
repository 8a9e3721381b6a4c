"""StoreLease: create-only acquisition, bounded waiting, takeover of expired leases, verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharding import LeaseHeld, LeaseLost, LocalStore, StoreLease
from tests.sharding.builds import run_build
from tests.sharding.fake_time import Time


def _acquire(store: LocalStore, run_id: str, t: Time, **kwargs: float) -> StoreLease:
    return StoreLease.acquire(
        store, run_id, clock=t.clock(), sleep=t.sleep, monotonic=t.monotonic, **kwargs
    )


def test_second_run_waits_then_gets_a_clear_refusal(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    holder = _acquire(store, "run-a", t, ttl_s=60)
    t.on_sleep = holder.renew  # alive: its keeper renews
    start = t.mono
    with pytest.raises(LeaseHeld, match="held by run run-a until"):
        _acquire(store, "run-b", t, wait_s=10, poll_s=2)
    assert t.mono - start == 10.0  # it waited, bounded


def test_expired_lease_is_taken_over_and_the_old_holder_loses_it(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    old = _acquire(store, "run-a", t, ttl_s=60)
    t.sleep(61)
    new = _acquire(store, "run-b", t, ttl_s=60)
    new.verify()
    with pytest.raises(LeaseLost, match="taken by run run-b"):
        old.verify()
    old.release()  # not ours any more: left alone
    new.verify()
    new.release()
    with pytest.raises(LeaseLost, match="gone"):
        new.verify()


def test_renew_extends_and_expiry_is_detected(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    lease = _acquire(store, "run-a", t, ttl_s=60)
    t.sleep(50)
    lease.renew()
    t.sleep(50)
    lease.verify()
    t.sleep(11)
    with pytest.raises(LeaseLost, match="not renewed for"):
        lease.verify()


def test_a_lost_lease_stops_the_commit_before_progress_is_written(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    lease = _acquire(store, "run-a", t, ttl_s=60)
    t.sleep(61)
    with pytest.raises(LeaseLost):
        run_build(store, run_id="run-a", before_commit=lease.verify)
    assert not (tmp_path / "progress.json").exists()


def test_a_lease_written_before_tokens_is_still_read(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    store.put(
        "lease.json",
        b'{"run_id": "old", "acquired_at_s": %f, "expires_at_s": %f}' % (t.wall, t.wall + 60),
    )
    with pytest.raises(LeaseHeld, match="held by run old"):
        _acquire(store, "run-b", t, ttl_s=60)
    t.sleep(61)
    assert _acquire(store, "run-b", t, ttl_s=60).run_id == "run-b"


def test_a_waiting_run_is_told_once_for_whom_it_waits(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    holder = _acquire(store, "run-a", t, ttl_s=60)
    t.on_sleep = holder.renew
    heard: list[tuple[str, float]] = []
    with pytest.raises(LeaseHeld):
        StoreLease.acquire(
            store,
            "run-b",
            wait_s=10,
            poll_s=2,
            clock=t.clock(),
            sleep=t.sleep,
            monotonic=t.monotonic,
            on_wait=lambda info, wait_s: heard.append((info.run_id, wait_s)),
        )
    assert heard == [("run-a", 10)]  # five polls, one notice
