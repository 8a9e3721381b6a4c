"""The storage protocol every backend implements, plus wrappers that count, crash or fence writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from sharding.errors import FenceExpired, InjectedCrash, ObjectExists, ObjectNotFound

#: Cache-Control of objects that a later write may replace (progress.json, lease.json, the open
#: shard and its id map, id_map_{kind}.json): a CDN must ask the origin every time.
MUTABLE_CACHE_CONTROL = "no-cache"
#: How long a CDN may keep an object written with immutable=True (sealed shards, manifest
#: segments, failure chunks). A day, not a year: an object sealed by a run that crashed before
#: its commit is named by no progress.json yet and may be rewritten by the resume; a reader that
#: fetched it anyway (the open shard's name) would see the stale bytes, refused by their checksum,
#: for at most this long.
IMMUTABLE_MAX_AGE_S = 86_400


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of immutable-or-replaced objects; every put is all-or-nothing.

    `immutable=True` says the object will not be replaced under the same name (a sealed shard, a
    manifest segment, a failure chunk): a backend with a CDN may let it be cached for
    IMMUTABLE_MAX_AGE_S. The default is a mutable object, never cached without revalidation.
    """

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None: ...

    def get(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, names: Sequence[str]) -> None: ...

    def describe(self) -> str: ...


@runtime_checkable
class ReadsInto(Protocol):
    """A store that can read an object straight into the caller's memory (local files)."""

    def read_exact_into(self, name: str, buffers: Sequence[memoryview]) -> bool:
        """Fill byte `buffers`, in order, with the object's bytes if its size is exactly their
        total size; False otherwise. ObjectNotFound if there is no such object."""
        ...


class MemoryStore:
    """An in-process store with the same answers as the real ones (tests, benchmarks)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        with self._lock:
            if not overwrite and name in self.objects:
                raise ObjectExists(f"{name} already exists")
            self.objects[name] = bytes(data)

    def get(self, name: str) -> bytes:
        with self._lock:
            if name not in self.objects:
                raise ObjectNotFound(f"{name} not found")
            return self.objects[name]

    def exists(self, name: str) -> bool:
        return name in self.objects

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(name for name in self.objects if name.startswith(prefix))

    def delete(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self.objects.pop(name, None)

    def describe(self) -> str:
        return "memory store"


class PassThroughStorage:
    """A store that hands every verb to `inner`: subclasses override the verbs they watch."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        self.inner.put(name, data, overwrite=overwrite, immutable=immutable)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, names: Sequence[str]) -> None:
        self.inner.delete(names)

    def describe(self) -> str:
        return self.inner.describe()


class CountingStorage(PassThroughStorage):
    """Passes everything through and counts puts and bytes put (checkpoint cost measurements)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.writes = 0
        self.bytes_written = 0
        self.written: list[tuple[str, int]] = []

    def reset(self) -> None:
        self.writes, self.bytes_written, self.written = 0, 0, []

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        self.inner.put(name, data, overwrite=overwrite, immutable=immutable)
        self.writes += 1
        self.bytes_written += len(data)
        self.written.append((name, len(data)))


class CrashingStorage(CountingStorage):
    """Raises InjectedCrash at the N-th put, before it happens or right after it lands."""

    def __init__(
        self, inner: Storage, crash_after_writes: int, when: Literal["before", "after"] = "before"
    ) -> None:
        super().__init__(inner)
        self.crash_at = crash_after_writes
        self.when = when

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        attempt = self.writes + 1
        if attempt == self.crash_at and self.when == "before":
            raise InjectedCrash(f"injected crash before write {attempt} ({name})")
        super().put(name, data, overwrite=overwrite, immutable=immutable)
        if attempt == self.crash_at:
            raise InjectedCrash(f"injected crash after write {attempt} ({name})")


class Fence(Protocol):
    """Something that knows until when our ownership of a store is certain (a StoreLease)."""

    def deadline(self) -> float:
        """time.monotonic() value after which a write of ours might land in someone else's turn."""
        ...


@runtime_checkable
class SupportsFence(Protocol):
    """A store whose own retries can stop at a deadline (the Supabase store)."""

    def fenced(self, deadline: Callable[[], float]) -> Storage:
        """The same store, whose writes start no attempt that could end after deadline()."""
        ...


class FencedStorage(PassThroughStorage):
    """Writes only while the lease is certainly ours: wrap the store the writer gets with it.

    put and delete check `fence.deadline()` (re-read at every check, so the lease keeper's renewals
    extend it) before they start, and a store with retries of its own (SupportsFence) re-checks it
    before each attempt, so a write never lands after our lease may have passed to another run.
    A write that cannot start raises FenceExpired (a StorageUnavailable: transient, exit 3).
    Reads pass straight through; so does anything else the inner store offers.
    """

    def __init__(
        self, inner: Storage, fence: Fence, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(inner)
        self.fence = fence
        self._monotonic = monotonic
        self._writes = inner.fenced(fence.deadline) if isinstance(inner, SupportsFence) else inner

    def __getattr__(self, attribute: str) -> Any:
        # read_exact_into, writable, bucket_file_size_limit...: only what the inner store has.
        return getattr(self.inner, attribute)

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        self._check(f"put {name}")
        self._writes.put(name, data, overwrite=overwrite, immutable=immutable)

    def delete(self, names: Sequence[str]) -> None:
        self._check(f"delete {len(names)} objects")
        self._writes.delete(names)

    def _check(self, what: str) -> None:
        left = self.fence.deadline() - self._monotonic()
        if left <= 0:
            raise FenceExpired(
                f"{self.describe()}: {what} not started: the store lease is no longer certainly "
                f"ours (unconfirmed for {-left:.1f} s past its margin; storage slow or lease "
                "renewals failing); nothing was written"
            )
