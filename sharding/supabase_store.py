"""A store in a Supabase Storage bucket via the official client: typed errors, retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr
from storage3.exceptions import StorageApiError

from sharding.errors import (
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from supabase import Client, ClientOptions, create_client

T = TypeVar("T")
Rows = list[dict[str, Any]]
Names = list[str]

_LIST_PAGE = 1000  # the client's default page is 100 rows and it never pages for us
_DELETE_CHUNK = 1000  # Storage refuses larger prefix lists


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, for transient errors only."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))


def create_supabase_client(
    url: str, key: SecretStr, timeout_s: float, *, retry_reads: bool = True
) -> Client:
    """The official client for server-side use: every request bounded by timeout_s, no session.

    `retry_reads` keeps postgrest-py's own retries of failed table GETs (3, backing off 1-4 s);
    turn it off where an outer layer already retries. Storage calls are retried by SupabaseStore.
    """
    options = ClientOptions(
        auto_refresh_token=False,
        persist_session=False,
        httpx_client=httpx.Client(timeout=timeout_s, follow_redirects=True),
        postgrest_client_retry=retry_reads,
    )
    return create_client(url, key.get_secret_value(), options=options)


def map_storage_error(exc: Exception, what: str) -> StorageError:
    """Translate storage3/httpx failures (DESIGN.md §5 shapes) into our typed errors."""
    if isinstance(exc, httpx.TimeoutException):
        return StorageUnavailable(f"{what}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return StorageUnavailable(f"{what}: connection failed ({type(exc).__name__})")
    if not isinstance(exc, StorageApiError):
        return StorageError(f"{what}: {type(exc).__name__}")
    status, code = str(exc.status), str(exc.code)
    detail = f"{what}: HTTP status {status} {code}: {exc.message}"
    if status == "404":
        return ObjectNotFound(detail)
    if status == "409":
        return ObjectExists(detail)
    if status == "413":
        return ObjectTooLarge(detail)
    if status in ("401", "403"):
        return StorageAuthError(detail)
    if status.startswith("5") or status == "429":
        return StorageUnavailable(detail)
    return StorageError(detail)


class SupabaseStore:
    """Objects under `prefix` in one bucket; never holds or prints the key itself."""

    def __init__(
        self, client: Client, bucket: str, prefix: str = "faiss/", retry: RetryPolicy | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.retry = retry or RetryPolicy()
        self._files = client.storage.from_(bucket)

    def __repr__(self) -> str:
        return f"SupabaseStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        return f"supabase bucket {self.bucket}/{self.prefix}"

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        options: Any = {
            "content-type": _content_type(name),
            # storage3 sends file options as headers: they must be strings.
            "upsert": "true" if overwrite else "false",
        }
        self._call(f"put {name}", lambda: self._files.upload(self._path(name), data, options))

    def get(self, name: str) -> bytes:
        return self._call(f"get {name}", lambda: self._files.download(self._path(name)))

    def exists(self, name: str) -> bool:
        try:
            self._call(f"exists {name}", lambda: self._files.info(self._path(name)))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        names: Names = []
        offset = 0
        while True:
            page = self._call(f"list {prefix!r}", partial(self._list_page, prefix, offset))
            names.extend(row["name"] for row in page if row.get("id") is not None)
            if len(page) < _LIST_PAGE:
                return sorted(n for n in names if n.startswith(prefix))
            offset += len(page)

    def _list_page(self, prefix: str, offset: int) -> Rows:
        folder = self.prefix.rstrip("/")
        options: Any = {
            "limit": _LIST_PAGE,
            "offset": offset,
            "search": prefix,
            "sortBy": {"column": "name", "order": "asc"},
        }
        return self._files.list(folder, options)

    def delete(self, names: Sequence[str]) -> None:
        paths = [self._path(name) for name in names]
        for start in range(0, len(paths), _DELETE_CHUNK):
            chunk = paths[start : start + _DELETE_CHUNK]
            self._call(f"delete {len(chunk)} objects", partial(self._files.remove, chunk))

    def _path(self, name: str) -> str:
        return self.prefix + name

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run one request; retry transient failures with backoff, raise permanent ones at once."""
        what = f"{self.describe()}: {what}"  # errors name the store (never the key)
        for attempt in range(self.retry.attempts):
            try:
                return operation()
            except (StorageApiError, httpx.HTTPError) as exc:
                error = map_storage_error(exc, what)
                if not error.transient:
                    raise error from exc
                if attempt + 1 == self.retry.attempts:
                    raise StorageUnavailable(
                        f"{error} (gave up after {self.retry.attempts} attempts)"
                    ) from exc
            self.retry.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: RetryPolicy.attempts must be >= 1")


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/octet-stream"
