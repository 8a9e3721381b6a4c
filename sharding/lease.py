"""A time-bound lease on a store (lease.json) so two runs never interleave commits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sharding import names
from sharding.errors import LeaseHeld, LeaseLost, ObjectExists, ObjectNotFound, StateError
from sharding.storage import Storage

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseInfo:
    run_id: str
    acquired_at: float
    expires_at: float

    def to_bytes(self) -> bytes:
        # Epoch floats for exact comparison (JSON keeps repr), ISO strings for people.
        return json.dumps(
            {
                "run_id": self.run_id,
                "acquired_at": _iso(self.acquired_at),
                "expires_at": _iso(self.expires_at),
                "acquired_at_s": self.acquired_at,
                "expires_at_s": self.expires_at,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        raw = json.loads(data)
        return cls(raw["run_id"], float(raw["acquired_at_s"]), float(raw["expires_at_s"]))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class StoreLease:
    """Held by one run; create-only put is the compare-and-set, verify() guards every commit."""

    def __init__(self, storage: Storage, info: LeaseInfo, ttl_s: float, clock: Clock) -> None:
        self.storage = storage
        self.info = info
        self.ttl_s = ttl_s
        self._clock = clock

    @classmethod
    def acquire(
        cls,
        storage: Storage,
        run_id: str,
        *,
        ttl_s: float = 300,
        wait_s: float = 0,
        poll_s: float = 1,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> StoreLease:
        """Take the lease, waiting up to wait_s for a live holder; LeaseHeld if it stays held."""
        deadline = clock() + wait_s
        while True:
            lease = cls._try_take(storage, run_id, ttl_s, clock)
            if isinstance(lease, StoreLease):
                return lease
            if lease is not None and clock() >= deadline:
                raise LeaseHeld(
                    f"{storage.describe()} is held by run {lease.run_id} until "
                    f"{_iso(lease.expires_at)} (retry later, or wait for it to expire)"
                )
            if lease is not None:
                sleep(poll_s)

    @classmethod
    def _try_take(
        cls, storage: Storage, run_id: str, ttl_s: float, clock: Clock
    ) -> StoreLease | LeaseInfo | None:
        """Our lease, the live holder's info, or None to try again at once."""
        now = clock()
        mine = LeaseInfo(run_id, now, now + ttl_s)
        try:
            storage.put(names.LEASE, mine.to_bytes(), overwrite=False)
            return cls._confirmed(storage, mine, ttl_s, clock)
        except ObjectExists:
            pass
        holder = _read(storage)
        if holder is None:
            return None
        if holder.run_id == run_id:
            # Our own earlier create whose answer was lost, or a restart of the same run.
            lease = cls(storage, holder, ttl_s, clock)
            lease.renew()
            return lease
        if holder.expires_at > now:
            return holder
        # Expired: remove it only if it is still the same expired lease, then race to create.
        if _same(_read(storage), holder):
            storage.delete([names.LEASE])
        return None

    @classmethod
    def _confirmed(
        cls, storage: Storage, info: LeaseInfo, ttl_s: float, clock: Clock
    ) -> StoreLease | None:
        return cls(storage, info, ttl_s, clock) if _same(_read(storage), info) else None

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def verify(self) -> None:
        """Raise LeaseLost unless lease.json is still ours and unexpired."""
        current = _read(self.storage)
        if current is None:
            raise LeaseLost(f"lease on {self.storage.describe()} is gone (run {self.run_id})")
        if current.run_id != self.run_id:
            raise LeaseLost(f"lease on {self.storage.describe()} was taken by run {current.run_id}")
        if current.expires_at <= self._clock():
            raise LeaseLost(f"lease of run {self.run_id} expired at {_iso(current.expires_at)}")

    def renew(self) -> None:
        """Extend our lease by ttl_s from now; LeaseLost if it is no longer ours."""
        self.verify()
        now = self._clock()
        self.info = LeaseInfo(self.run_id, self.info.acquired_at, now + self.ttl_s)
        self.storage.put(names.LEASE, self.info.to_bytes(), overwrite=True)

    def release(self) -> None:
        """Delete the lease if it is still ours; someone else's lease is left alone."""
        current = _read(self.storage)
        if current is not None and current.run_id == self.run_id:
            self.storage.delete([names.LEASE])


def _read(storage: Storage) -> LeaseInfo | None:
    try:
        data = storage.get(names.LEASE)
    except ObjectNotFound:
        return None
    try:
        return LeaseInfo.from_bytes(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"{storage.describe()}: lease.json is unreadable ({type(exc).__name__}); "
            "if no build is running, delete it"
        ) from exc


def _same(a: LeaseInfo | None, b: LeaseInfo | None) -> bool:
    return a is not None and a == b


class LeaseKeeper:
    """Renews a lease in a background thread, so the TTL can be short whatever a batch takes.

    A run killed with SIGKILL stops renewing, and its lease expires within one TTL. A failed
    renewal is kept, not raised here: the writer's `before_commit` check raises LeaseLost.
    """

    def __init__(self, lease: StoreLease, interval_s: float | None = None) -> None:
        self.lease = lease
        self.interval_s = interval_s if interval_s is not None else lease.ttl_s / 3
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.lease.renew()
            except Exception as exc:  # transient storage faults: try again next interval
                self.error = exc
                if isinstance(exc, LeaseLost):
                    return
