"""A time-bound lease on a store (lease.json) so two runs never interleave writes.

Clock assumption (see docs/store-format.md, "lease.json"): no two processes compare clocks.

- The holder owns the store for `ttl_s - margin_s` of its own monotonic time after the start of
  its last write of lease.json that storage confirmed (`deadline()`); after that it refuses to
  renew or write (FencedStorage) until it could be sure again, which it never is: a lost lease
  stays lost.
- A contender takes a lease over only after it has seen lease.json unchanged (same holder token
  and renewal count) for the holder's full `ttl_s` of the contender's own monotonic time. Any
  write the holder made after the contender's first look would have changed lease.json, so the
  holder's ownership ended (margin_s) before the contender's starts.

So wall clocks may be off by any amount and may step (NTP, a suspended laptop, a VM restore):
a contender with a clock 5 minutes ahead waits like any other, and a build whose clock steps does
not abort itself. What remains assumed: the two monotonic clocks *run at the same rate* to within
margin_s / ttl_s (10 %; real clocks drift by parts per million), and one storage write ends
within the store's own request timeout (the Supabase store's retries stop at the deadline).
The wall-clock times in lease.json are for people, and only decide whether a contender bothers
to wait for an apparently abandoned lease when it was told not to wait.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sharding import names
from sharding.errors import (
    LeaseHeld,
    LeaseLost,
    ObjectExists,
    ObjectNotFound,
    StateError,
    StoreConfigError,
)
from sharding.storage import Storage, SupportsFence

Clock = Callable[[], float]

#: Below this a lease is all renewals: the keeper rewrites lease.json every ttl/3.
MIN_TTL_S = 2.0
#: How many create-409 / read-404 answers in a row before lease.json is declared unusable (a
#: folder or a dangling link at its name); a real race resolves in one or two.
MAX_DISAGREEMENTS = 5


def lease_margin(ttl_s: float) -> float:
    """The part of a TTL the holder gives up, so the rates of two clocks may differ a little."""
    return max(0.1 * ttl_s, 0.2)


def check_ttl(ttl_s: float) -> None:
    """StoreConfigError (a ValueError) unless the lease TTL is at least MIN_TTL_S seconds."""
    if not ttl_s >= MIN_TTL_S:
        raise StoreConfigError(
            f"lease TTL (lease_ttl_s, FAISS_BUILDER_LEASE_TTL_S) must be at least "
            f"{MIN_TTL_S:g} s, got {ttl_s:g}"
        )


@dataclass(frozen=True)
class LeaseInfo:
    """What lease.json says. `version` is what a contender watches; times are the writer's."""

    run_id: str
    token: str  # one per acquisition: two attempts of one run are different holders
    renewals: int
    ttl_s: float
    acquired_at: float  # wall clock of the writer, for people and for the "abandoned?" hint
    renewed_at: float

    @property
    def version(self) -> tuple[str, str, int]:
        return (self.run_id, self.token, self.renewals)

    @property
    def expires_at(self) -> float:
        """When it expires by its writer's clock: a hint, never the basis of a takeover."""
        return self.renewed_at + self.ttl_s

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "token": self.token,
                "renewals": self.renewals,
                "ttl_s": self.ttl_s,
                "acquired_at": _iso(self.acquired_at),
                "renewed_at": _iso(self.renewed_at),
                "expires_at": _iso(self.expires_at),
                "acquired_at_s": self.acquired_at,
                "renewed_at_s": self.renewed_at,
                "expires_at_s": self.expires_at,
                "clock": "times are the holder's wall clock, for people; a contender takes over "
                "only after seeing this file unchanged for ttl_s of its own monotonic time",
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo:
        raw = json.loads(data)
        acquired = float(raw["acquired_at_s"])
        if "token" not in raw:  # written before tokens: acquired_at_s and expires_at_s only
            expires = float(raw["expires_at_s"])
            return cls(str(raw["run_id"]), "", 0, max(expires - acquired, 0.0), acquired, acquired)
        return cls(
            run_id=str(raw["run_id"]),
            token=str(raw["token"]),
            renewals=int(raw["renewals"]),
            ttl_s=float(raw["ttl_s"]),
            acquired_at=acquired,
            renewed_at=float(raw["renewed_at_s"]),
        )


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return repr(epoch)


@dataclass
class _Watch:
    """A contender's view of someone else's lease, measured on the contender's monotonic clock."""

    version: tuple[str, str, int] | None = None
    since: float = 0.0
    changes: int = 0

    def see(self, holder: LeaseInfo, now: float) -> float:
        """Record this reading; how long the holder's lease has been seen unchanged."""
        if holder.version != self.version:
            self.changes += self.version is not None
            self.version, self.since = holder.version, now
        return now - self.since


class StoreLease:
    """Held by one run; create-only put is the compare-and-set, verify() guards every commit."""

    def __init__(
        self,
        storage: Storage,
        info: LeaseInfo,
        ttl_s: float,
        clock: Clock = time.time,
        *,
        monotonic: Clock = time.monotonic,
        confirmed_at: float | None = None,
    ) -> None:
        self.storage = storage
        self.info = info
        self.ttl_s = ttl_s
        self.margin_s = lease_margin(ttl_s)
        self._clock = clock
        self._monotonic = monotonic
        # Start of the last write of lease.json that storage confirmed (monotonic).
        self._confirmed_at = monotonic() if confirmed_at is None else confirmed_at
        # The lease's own writes stop at its deadline too: a renewal landing late could
        # overwrite the lease of a contender that waited out our TTL.
        self._writes = (
            storage.fenced(self.deadline) if isinstance(storage, SupportsFence) else storage
        )

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
        monotonic: Clock = time.monotonic,
        on_wait: Callable[[LeaseInfo, float], None] | None = None,
    ) -> StoreLease:
        """Take the lease; LeaseHeld if another holder stays live past wait_s.

        `on_wait(holder, wait_s)` is called once for each holder we start waiting for (so a
        waiting run can log for whom it waits).

        A lease that is not ours is taken over once it has stayed unchanged for its TTL on our
        own clock. We wait that long even past wait_s when it looks abandoned (expired by its
        writer's clock) or was written by an earlier attempt of this same run (a retry of a
        crashed run), as long as it does not change; a change means its holder is alive.
        """
        check_ttl(ttl_s)
        token = secrets.token_hex(8)
        start = monotonic()
        watch = _Watch()
        disagreements = 0
        announced: set[tuple[str, str]] = set()
        while True:
            outcome = cls._try_take(storage, run_id, token, ttl_s, clock, monotonic)
            if isinstance(outcome, StoreLease):
                return outcome
            if outcome is None:  # create said "exists", read said "missing"
                disagreements += 1
                if disagreements >= MAX_DISAGREEMENTS:
                    raise StateError(
                        f"{storage.describe()}: lease.json exists but cannot be read (create "
                        f"answered 'exists' and read 'missing' {disagreements} times: a folder, "
                        "a dangling link or an object the key cannot read at its name); "
                        "if no build is running, remove it"
                    )
                sleep(min(poll_s, 0.05 * 2**disagreements))
                continue
            disagreements = 0
            holder, now = outcome, monotonic()
            unchanged_s = watch.see(holder, now)
            if unchanged_s >= holder.ttl_s:
                # Seen unchanged for its whole TTL: its holder's ownership has ended.
                if _version(_read(storage)) == holder.version:
                    storage.delete([names.LEASE])
                continue
            patient = watch.changes == 0 and (
                holder.run_id == run_id or holder.expires_at <= clock()
            )
            if now - start >= wait_s and not patient:
                raise LeaseHeld(cls._held_message(storage, holder, run_id))
            if on_wait is not None and (holder.run_id, holder.token) not in announced:
                announced.add((holder.run_id, holder.token))
                on_wait(holder, wait_s)
            sleep(max(0.0, min(poll_s, holder.ttl_s - unchanged_s)))

    @staticmethod
    def _held_message(storage: Storage, holder: LeaseInfo, run_id: str) -> str:
        if holder.run_id == run_id:
            return (
                f"{storage.describe()} is held by another attempt of this run ({run_id}), which "
                "is still renewing it: stop that attempt first"
            )
        return (
            f"{storage.describe()} is held by run {holder.run_id} until "
            f"{_iso(holder.expires_at)} by its clock, unless renewed (retry later, or set "
            "lease_wait_s to wait for it)"
        )

    @classmethod
    def _try_take(
        cls,
        storage: Storage,
        run_id: str,
        token: str,
        ttl_s: float,
        clock: Clock,
        monotonic: Clock,
    ) -> StoreLease | LeaseInfo | None:
        """Our lease, the holder's info, or None when create and read disagree."""
        wall, started = clock(), monotonic()
        mine = LeaseInfo(run_id, token, 0, ttl_s, wall, wall)
        with contextlib.suppress(ObjectExists):  # someone's, or ours whose answer was lost
            storage.put(names.LEASE, mine.to_bytes(), overwrite=False)
        holder = _read(storage)
        if holder is None:
            return None
        if holder.token == token and holder.run_id == run_id:
            # Ours: just created, or created by an attempt whose answer was lost.
            return cls(storage, holder, ttl_s, clock, monotonic=monotonic, confirmed_at=started)
        return holder

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def deadline(self) -> float:
        """monotonic() time until which the store is certainly ours (FencedStorage reads it)."""
        return self._confirmed_at + self.ttl_s - self.margin_s

    def verify(self) -> None:
        """Raise LeaseLost unless lease.json is still ours and our ownership is still certain."""
        current = _read(self.storage)
        where = self.storage.describe()
        if current is None:
            raise LeaseLost(f"lease on {where} is gone (run {self.run_id})")
        if current.run_id != self.run_id:
            raise LeaseLost(f"lease on {where} was taken by run {current.run_id}")
        if current.token != self.info.token:
            raise LeaseLost(f"lease on {where} was taken by another attempt of run {self.run_id}")
        unconfirmed_s = self._monotonic() - self._confirmed_at
        if unconfirmed_s >= self.ttl_s - self.margin_s:
            raise LeaseLost(
                f"lease of run {self.run_id} on {where} was not renewed for {unconfirmed_s:.1f} s "
                f"(TTL {self.ttl_s:g} s): another run may take it over at any moment"
            )

    def renew(self) -> None:
        """Extend our lease by ttl_s from now; LeaseLost if it is no longer certainly ours."""
        self.verify()
        started = self._monotonic()
        renewed = replace(self.info, renewals=self.info.renewals + 1, renewed_at=self._clock())
        self._writes.put(names.LEASE, renewed.to_bytes(), overwrite=True)
        self.info, self._confirmed_at = renewed, started

    def release(self) -> None:
        """Delete the lease if it is still ours; someone else's lease is left alone."""
        current = _read(self.storage)
        if current is not None and current.version[:2] == self.info.version[:2]:
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


def _version(info: LeaseInfo | None) -> tuple[str, str, int] | None:
    return None if info is None else info.version


class LeaseKeeper:
    """Renews a lease in a background thread, so the TTL can be short whatever a batch takes.

    A run killed with SIGKILL stops renewing, and its lease passes to a contender one TTL after
    that contender first saw it. A failed renewal is kept, not raised here: the writer's
    `before_commit` check (and FencedStorage) raise once the deadline has passed.
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
