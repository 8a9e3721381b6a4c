"""The storage protocol every backend implements, plus wrappers that count or crash writes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from sharding.errors import InjectedCrash, ObjectExists, ObjectNotFound


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of immutable-or-replaced objects; every put is all-or-nothing."""

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None: ...

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

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
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


class CountingStorage:
    """Passes everything through and counts puts and bytes put (checkpoint cost measurements)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.writes = 0
        self.bytes_written = 0
        self.written: list[tuple[str, int]] = []

    def reset(self) -> None:
        self.writes, self.bytes_written, self.written = 0, 0, []

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        self.inner.put(name, data, overwrite=overwrite)
        self.writes += 1
        self.bytes_written += len(data)
        self.written.append((name, len(data)))

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


class CrashingStorage(CountingStorage):
    """Raises InjectedCrash at the N-th put, before it happens or right after it lands."""

    def __init__(
        self, inner: Storage, crash_after_writes: int, when: Literal["before", "after"] = "before"
    ) -> None:
        super().__init__(inner)
        self.crash_at = crash_after_writes
        self.when = when

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        attempt = self.writes + 1
        if attempt == self.crash_at and self.when == "before":
            raise InjectedCrash(f"injected crash before write {attempt} ({name})")
        super().put(name, data, overwrite=overwrite)
        if attempt == self.crash_at:
            raise InjectedCrash(f"injected crash after write {attempt} ({name})")
