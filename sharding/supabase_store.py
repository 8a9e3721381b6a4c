"""A store in a Supabase Storage bucket via the official client: typed errors, retries, fencing."""

from __future__ import annotations

import copy
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
    BucketNotFound,
    FenceExpired,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from sharding.storage import IMMUTABLE_MAX_AGE_S, Storage
from supabase import Client, ClientOptions, create_client

T = TypeVar("T")
Rows = list[dict[str, Any]]
Names = list[str]

_LIST_PAGE = 1000  # the client's default page is 100 rows and it never pages for us
_DELETE_CHUNK = 1000  # Storage refuses larger prefix lists
_DEFAULT_ATTEMPT_S = 30.0  # one attempt's bound when the client's timeout says nothing


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, for transient errors only."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)
    monotonic: Callable[[], float] = field(default=time.monotonic, compare=False)

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
    """Translate storage3/httpx failures (docs/store-format.md, Supabase's real answers) into our
    typed errors. "Bucket not found" is never ObjectNotFound: Supabase also gives it for a key it
    does not accept, and a store that cannot be read must not look empty."""
    if isinstance(exc, httpx.TimeoutException):
        return StorageUnavailable(f"{what}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return StorageUnavailable(f"{what}: connection failed ({type(exc).__name__})")
    if not isinstance(exc, StorageApiError):
        return StorageError(f"{what}: {type(exc).__name__}")
    status, code = str(exc.status), str(exc.code)
    detail = f"{what}: HTTP status {status} {code}: {exc.message}"
    if status == "404" and _is_bucket_not_found(exc):
        return BucketNotFound(f"{detail} (the bucket is missing, or the key was not accepted)")
    if status == "404":
        return ObjectNotFound(detail)
    if status == "409":
        return ObjectExists(detail)
    if status == "413":
        return ObjectTooLarge(detail)
    if status in ("401", "403"):
        return StorageAuthError(f"{detail} (the key was not accepted for this)")
    if status.startswith("5") or status == "429":
        return StorageUnavailable(detail)
    return StorageError(detail)


def _is_bucket_not_found(exc: StorageApiError) -> bool:
    # storage3 keeps the body's `error` as .code and drops the body's own `code` (NoSuchBucket).
    return "bucket not found" in f"{exc.code} {exc.message}".lower()


def attempt_bound_s(client: Client) -> float:
    """How long one request may take: the longest phase limit of the client's httpx timeout.

    httpx bounds connecting, each read wait and each write separately; a stalled server is cut
    within this. A body that keeps trickling is not bounded by httpx, and not by this either.
    """
    options = getattr(client, "options", None)
    http = getattr(options, "httpx_client", None)
    timeout = getattr(http, "timeout", None)
    phases = [getattr(timeout, name, None) for name in ("connect", "read", "write")]
    known = [float(p) for p in phases if p is not None]
    return max(known) if known else _DEFAULT_ATTEMPT_S


class SupabaseStore:
    """Objects under `prefix` in one bucket; never holds or prints the key itself.

    Absence is confirmed before it is believed. A valid anon key reads every object as "Object
    not found" and lists every folder as empty, exactly like an empty store; a missing bucket
    also lists as empty. So the first time a read finds nothing (a missing object, an empty
    listing), the store asks for its bucket's own record (storage3 get_bucket, `GET
    /bucket/{id}`), which only a key that may see the bucket gets: the service-role key does;
    an anon key gets "Bucket not found", a bad key 403 (docs/store-format.md, Supabase's real
    answers). A read that was answered "Bucket not found" (a bad, expired or missing token is
    read as anonymous) is diagnosed the same way. Either failure is a one-line StorageError
    (exit 3) naming the bucket, never an empty store. `verify_access=False` skips the check
    for keys that may read objects but not buckets.
    """

    def __init__(
        self,
        client: Client,
        bucket: str,
        prefix: str = "faiss/",
        retry: RetryPolicy | None = None,
        *,
        verify_access: bool = True,
        attempt_s: float | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.retry = retry or RetryPolicy()
        #: One attempt's bound, for fenced writes (see attempt_bound_s).
        self.attempt_s = attempt_bound_s(client) if attempt_s is None else attempt_s
        self._client = client
        self._files = client.storage.from_(bucket)
        self._access_checked = not verify_access
        self._bucket_record: Any = None
        self._deadline: Callable[[], float] | None = None

    def __repr__(self) -> str:
        return f"SupabaseStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        return f"supabase bucket {self.bucket}/{self.prefix}"

    def fenced(self, deadline: Callable[[], float]) -> Storage:
        """This store, whose writes start no attempt that could end after deadline() (monotonic).

        Before each attempt of a put or delete, and before each backoff sleep, the time left
        must cover one more attempt (`attempt_s`); otherwise FenceExpired, and nothing more is
        sent. Used by FencedStorage and by the lease's own renewals.
        """
        view = copy.copy(self)
        view._deadline = deadline
        return view

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        options: Any = {
            "content-type": _content_type(name),
            # storage3 sends file options as headers and form fields: they must be strings.
            "upsert": "true" if overwrite else "false",
            # Storage stores "max-age=<this>", or "no-cache" for an empty value, and serves it
            # back; behind its CDN a mutable object must never be served from cache.
            "cache-control": str(IMMUTABLE_MAX_AGE_S) if immutable else "",
        }
        try:
            self._call(
                f"put {name}",
                lambda: self._files.upload(self._path(name), data, options),
                write=True,
            )
        except ObjectTooLarge as exc:
            raise ObjectTooLarge(self._too_large(name, len(data))) from exc

    def _too_large(self, name: str, size: int) -> str:
        limit = self._known_limit()
        limit_text = f" ({limit:,} bytes)" if limit else ""
        return (
            f"{self.describe()}: put {name}: refused as too large (HTTP 413): the object is "
            f"{size:,} bytes and the bucket's file size limit{limit_text} or the project's "
            "upload limit is lower; lower shard_max_bytes, or raise the bucket's limit"
        )

    def _known_limit(self) -> int | None:
        try:
            return self.bucket_file_size_limit()
        except StorageError:
            return None

    def get(self, name: str) -> bytes:
        try:
            return self._call(f"get {name}", lambda: self._files.download(self._path(name)))
        except ObjectNotFound:
            self._confirm_access()
            raise

    def exists(self, name: str) -> bool:
        try:
            self._call(f"exists {name}", lambda: self._files.info(self._path(name)))
        except ObjectNotFound:
            self._confirm_access()
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        names: Names = []
        offset = 0
        while True:
            page = self._call(f"list {prefix!r}", partial(self._list_page, prefix, offset))
            if not page and not offset:
                self._confirm_access()
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
            self._call(
                f"delete {len(chunk)} objects", partial(self._files.remove, chunk), write=True
            )

    def bucket_file_size_limit(self) -> int | None:
        """The bucket's own file_size_limit in bytes (storage3 get_bucket), None when it has none
        (the project's upload limit then applies: 50 MB on the free plan). For `doctor`."""
        record = self._bucket()
        limit = getattr(record, "file_size_limit", None)
        return int(limit) if limit else None

    def check_access(self) -> str:
        """Read the bucket's own record: proves the bucket exists and the key may see it.

        StorageError (one line) otherwise; returns a one-line description. For `doctor`.
        """
        self._bucket()
        limit = self.bucket_file_size_limit()
        shown = f"file size limit {limit:,} bytes" if limit else "no file size limit of its own"
        return f"{self.describe()}: bucket readable with this key, {shown}"

    def _bucket(self) -> Any:
        if self._bucket_record is None:
            what = f"{self.describe()}: read the bucket's record"  # the message's start
            try:
                self._bucket_record = self._call(
                    "read the bucket's record",
                    lambda: self._client.storage.get_bucket(self.bucket),
                    diagnose=False,
                )
            except BucketNotFound as exc:
                raise BucketNotFound(
                    f"{what}: bucket {self.bucket!r} not found, or not visible to this key: the "
                    "bucket is missing, or SUPABASE_KEY is not the service-role key (an anon "
                    "key reads every object as missing)"
                ) from exc
            except StorageAuthError as exc:
                raise StorageAuthError(
                    f"{what}: SUPABASE_KEY was not accepted for bucket {self.bucket!r} (wrong, "
                    "expired or from another project)"
                ) from exc
            self._access_checked = True
        return self._bucket_record

    def _confirm_access(self) -> None:
        """Before "missing" or "empty" is believed, once: the key can see the bucket."""
        if not self._access_checked:
            self._bucket()

    def _path(self, name: str) -> str:
        return self.prefix + name

    def _call(
        self, what: str, operation: Callable[[], T], *, write: bool = False, diagnose: bool = True
    ) -> T:
        """Run one request; retry transient failures with backoff, raise permanent ones at once.

        A fenced write starts an attempt only while the deadline leaves room for all of it.
        "Bucket not found" is diagnosed (a key problem or a missing bucket) before it is raised.
        """
        what = f"{self.describe()}: {what}"  # errors name the store (never the key)
        fence = self._deadline if write else None
        for attempt in range(self.retry.attempts):
            self._check_fence(fence, what, attempt)
            try:
                return operation()
            except (StorageApiError, httpx.HTTPError) as exc:
                error = map_storage_error(exc, what)
                if isinstance(error, BucketNotFound) and diagnose:
                    self._bucket()  # a key problem or a missing bucket: say which
                    raise error from exc
                if not error.transient:
                    raise error from exc
                if attempt + 1 == self.retry.attempts:
                    raise StorageUnavailable(
                        f"{error} (gave up after {self.retry.attempts} attempts)"
                    ) from exc
            delay = self.retry.delay(attempt)
            self._check_fence(fence, what, attempt + 1, delay)
            self.retry.sleep(delay)
        raise AssertionError("unreachable: RetryPolicy.attempts must be >= 1")

    def _check_fence(
        self, fence: Callable[[], float] | None, what: str, attempt: int, delay: float = 0.0
    ) -> None:
        if fence is None:
            return
        left = fence() - self.retry.monotonic()
        if left < delay + self.attempt_s:
            tried = f" after {attempt} attempt(s)" if attempt else ""
            raise FenceExpired(
                f"{what}: not sent{tried}: the store lease is certainly ours for {max(left, 0):.1f}"
                f" s more and one attempt may take {self.attempt_s:g} s (storage slow or lease "
                "renewals failing)"
            )


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/octet-stream"
