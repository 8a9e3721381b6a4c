"""The lease trusts no shared clock: takeovers wait a TTL of the contender's own monotonic time,
wall-clock steps and skews change nothing, a run takes its own expired lease back, TTL >= 2 s."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sharding.errors import LeaseHeld, LeaseLost, StateError, StoreConfigError
from sharding.lease import MIN_TTL_S, StoreLease
from sharding.local_store import LocalStore
from tests.sharding.fake_time import Time


def _acquire(
    store: LocalStore, run_id: str, t: Time, skew_s: float = 0.0, **kwargs: float
) -> StoreLease:
    return StoreLease.acquire(
        store,
        run_id,
        ttl_s=kwargs.pop("ttl_s", 60),
        clock=t.clock(skew_s),
        sleep=t.sleep,
        monotonic=t.monotonic,
        **kwargs,
    )


def test_a_contender_whose_clock_is_5_minutes_ahead_does_not_take_a_live_lease(
    tmp_path: Path,
) -> None:
    store, t = LocalStore(tmp_path), Time()
    holder = _acquire(store, "run-a", t)
    t.on_sleep = holder.renew  # the holder's keeper keeps renewing while run-b looks
    with pytest.raises(LeaseHeld, match="held by run run-a"):
        _acquire(store, "run-b", t, skew_s=300, wait_s=0)
    holder.verify()  # still ours
    with pytest.raises(LeaseHeld, match="held by run run-a"):  # waiting longer changes nothing
        _acquire(store, "run-b", t, skew_s=300, wait_s=600, poll_s=10)
    holder.verify()


def test_a_build_whose_wall_clock_steps_keeps_its_lease(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    lease = _acquire(store, "run-a", t)
    for step in (+600.0, -3600.0, +86_400.0):  # NTP, a VM restore, a laptop's bad RTC
        t.wall += step
        t.sleep(10)
        lease.verify()
        lease.renew()
    assert t.mono - 5_000.0 == 30.0  # 30 s of real time, well inside one 60 s TTL


def test_a_dead_lease_is_taken_only_after_a_full_ttl_of_the_contenders_own_time(
    tmp_path: Path,
) -> None:
    store, t = LocalStore(tmp_path), Time()
    dead = _acquire(store, "run-a", t)  # then killed: it never renews or releases
    t.sleep(3600)
    seen_at = t.mono
    # Even with a clock an hour behind, which thinks the lease is live, and wait_s=600:
    taken = _acquire(store, "run-b", t, skew_s=-7200, wait_s=600)
    assert 60 <= t.mono - seen_at <= 62  # observed unchanged for one TTL, then taken
    taken.verify()
    with pytest.raises(LeaseLost):
        dead.verify()


def test_a_lease_that_looks_abandoned_is_waited_for_even_without_wait_s(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    _acquire(store, "run-a", t)
    t.sleep(120)  # expired by every clock in the room
    started = t.mono
    taken = _acquire(store, "run-b", t, wait_s=0)
    assert taken.run_id == "run-b" and 60 <= t.mono - started <= 62


def test_a_live_lease_without_wait_is_refused_at_once(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    _acquire(store, "run-a", t)
    started = t.mono
    with pytest.raises(LeaseHeld, match="held by run run-a until"):
        _acquire(store, "run-b", t, wait_s=0)
    assert t.mono == started


def test_the_same_run_takes_back_its_own_expired_lease(tmp_path: Path) -> None:
    """A Prefect retry of a crashed run, more than a TTL later, with the same run id."""
    store, t = LocalStore(tmp_path), Time()
    crashed = _acquire(store, "flow-run-7", t)
    t.sleep(600)
    retried = _acquire(store, "flow-run-7", t, wait_s=0)
    retried.verify()
    retried.renew()
    with pytest.raises(LeaseLost, match="another attempt of run flow-run-7"):
        crashed.verify()  # the crashed attempt, were it still alive, can write nothing more
    crashed.release()  # not its lease any more: left alone
    retried.verify()


def test_the_same_run_does_not_take_a_lease_another_of_its_attempts_still_renews(
    tmp_path: Path,
) -> None:
    store, t = LocalStore(tmp_path), Time()
    alive = _acquire(store, "flow-run-7", t)
    t.on_sleep = alive.renew
    with pytest.raises(LeaseHeld, match="another attempt of this run"):
        _acquire(store, "flow-run-7", t, wait_s=0)
    alive.verify()


def test_ownership_ends_a_margin_before_the_ttl_measured_on_our_own_clock(tmp_path: Path) -> None:
    store, t = LocalStore(tmp_path), Time()
    lease = _acquire(store, "run-a", t)
    assert lease.deadline() == pytest.approx(t.mono + 60 - lease.margin_s)
    t.sleep(50)
    lease.renew()
    assert lease.deadline() == pytest.approx(t.mono + 60 - lease.margin_s)
    t.sleep(60 - lease.margin_s)
    with pytest.raises(LeaseLost, match="not renewed for"):
        lease.verify()
    with pytest.raises(LeaseLost):  # and a lost lease is never renewed back
        lease.renew()


@pytest.mark.parametrize("ttl_s", [0.01, 0.0, -5.0, MIN_TTL_S / 2, float("nan")])
def test_a_lease_ttl_below_the_minimum_is_refused_naming_the_setting(
    tmp_path: Path, ttl_s: float
) -> None:
    with pytest.raises(StoreConfigError, match=r"lease_ttl_s.*FAISS_BUILDER_LEASE_TTL_S"):
        StoreLease.acquire(LocalStore(tmp_path), "run-a", ttl_s=ttl_s)
    assert isinstance(StoreConfigError("x"), ValueError)
    assert not (tmp_path / "lease.json").exists()


def _bad_lease_json(tmp_path: Path, shape: str) -> None:
    if shape == "directory":
        (tmp_path / "lease.json").mkdir()
    else:
        (tmp_path / "lease.json").symlink_to(tmp_path / "gone" / "lease.json")


@pytest.mark.parametrize("shape", ["directory", "dangling-symlink"])
def test_a_lease_json_that_is_not_a_file_is_a_clear_error_in_bounded_time(
    tmp_path: Path, shape: str
) -> None:
    _bad_lease_json(tmp_path, shape)
    outcome: list[BaseException | StoreLease] = []

    def take() -> None:
        try:
            outcome.append(StoreLease.acquire(LocalStore(tmp_path), "run-a", ttl_s=60, wait_s=30))
        except BaseException as exc:  # reported to the test thread below
            outcome.append(exc)

    worker = threading.Thread(target=take, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "acquire spun on a lease.json it could neither create nor read"
    assert len(outcome) == 1 and isinstance(outcome[0], StateError), outcome
    message = str(outcome[0])
    assert "lease.json" in message and "remove it" in message and "\n" not in message
