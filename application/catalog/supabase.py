"""The Supabase catalog: keyset pages of a PostgREST table; bulk signing of private image paths."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
from postgrest.exceptions import APIError

from application.catalog.base import (
    Product,
    ProductId,
    bounded_brand,
    canonical_time,
    check_cursor,
)
from application.catalog.ids import IdRefused, check_id
from application.catalog.local import CatalogError
from modal_workers.fetch import is_http_url

if TYPE_CHECKING:
    from supabase import Client

log = logging.getLogger(__name__)

#: Hosted Supabase answers at most this many rows per request, silently (PostgREST db-max-rows).
POSTGREST_MAX_ROWS = 1000
#: Ids per `in.(...)` filter: keeps the request URL well under common 8 KB limits, even for uuids.
GET_CHUNK = 100
#: Paths per create_signed_urls request.
SIGN_CHUNK = 500
MIGRATION = "supabase/migrations/0001_product_images.sql"
SYNC_MIGRATION = "supabase/migrations/0002_catalog_sync.sql"

# PostgREST / PostgreSQL error codes (https://docs.postgrest.org/en/stable/references/errors.html).
_MISSING_TABLE = {"42P01", "PGRST205"}
_MISSING_COLUMN = {"42703", "PGRST204"}
_PERMISSION = {"42501"}
_BAD_KEY = {"PGRST300", "PGRST301", "PGRST302", "401", "403"}
_TRANSIENT = {"PGRST000", "PGRST001", "PGRST002", "PGRST003", "57014"}


class SupabaseCatalogError(CatalogError):
    """The Supabase catalog cannot be read; the message names the table or column, never a key."""

    transient: bool = False


class CatalogUnavailable(SupabaseCatalogError):
    """Supabase did not answer (network, timeout, 5xx): worth retrying. Exit 3, as for storage."""

    transient = True


class CatalogAuthError(SupabaseCatalogError):
    """Supabase refused the key, or the key's role may not read the table. Exit 3, as for
    storage refusing our credentials."""


#: The reason a product whose private-bucket path Storage would not sign is recorded with.
NOT_SIGNED = "not_signed"
_UNKNOWN: Any = object()


class SupabaseCatalog:
    """Products from a Supabase (PostgREST) table, read in ascending id order by keyset pages.

    Ids keep their column type: bigint ids arrive as int, uuid ids as their lowercase canonical
    text. Comparing those strings in Python orders them exactly like PostgreSQL orders uuids
    (bytewise: hex digits sort 0-9 < a-f and the dashes sit at the same places), so cursors
    compared with `>` elsewhere agree with `id > cursor order by id` here.
    """

    local_root: str | None = None

    def __init__(
        self,
        client: Client,
        table: str = "product_images",
        id_column: str = "id",
        url_column: str = "image_url",
        brand_column: str = "brand",
        page_size: int = POSTGREST_MAX_ROWS,
        sign_bucket: str | None = None,
        sign_expires_s: int = 3600,
        updated_column: str = "updated_at",
        deleted_column: str = "deleted_at",
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.client = client
        self.table = table
        self.columns = _Columns(id_column, url_column, brand_column)
        self.page_size = page_size
        self.sign_bucket = sign_bucket
        self.sign_expires_s = sign_expires_s
        self._id_type: type | None = _UNKNOWN
        self.updated_column, self.deleted_column = updated_column, deleted_column
        self._change_columns: tuple[str, ...] | None = None

    def changed_since(
        self, updated_at: str | None, after: ProductId | None, limit: int
    ) -> list[Product]:
        """Rows whose (updated_at, id) comes after (`updated_at`, `after`), in that order, soft
        deleted ones included: two keyset range scans of the (updated_at, id) index of
        SYNC_MIGRATION. A table without updated_at has no changes to report."""
        columns = self._changes_columns()
        if not columns:
            return []
        rows = min(limit, self.request_rows)
        found: list[Product] = []
        if updated_at is not None and after is not None:
            self._check_cursor(after)
            query = (
                self._select(columns).eq(self.updated_column, updated_at).gt(self.columns.id, after)
            )
            found = self._changed(query.order(self.columns.id).limit(rows))
        if len(found) < rows:
            query = self._select(columns)
            if updated_at is not None:
                query = query.gt(self.updated_column, updated_at)
            query = query.order(self.updated_column).order(self.columns.id)
            found += self._changed(query.limit(rows - len(found)))
        return found

    def latest_change(self) -> tuple[str, ProductId] | None:
        columns = self._changes_columns()
        if not columns:
            return None
        query = self._select(columns).not_.is_(self.updated_column, "null")
        query = query.order(self.updated_column, desc=True).order(self.columns.id, desc=True)
        found = self._changed(query.limit(1))
        if not found or found[0].updated_at is None:
            return None
        return found[0].updated_at, found[0].id

    def all_ids(self, after: ProductId | None = None) -> Iterator[ProductId]:
        """Every id not soft-deleted, ascending: a keyset pass over the id column alone (for
        the reconciliation of hard deletes; about 1,000 ids per request)."""
        columns = self._changes_columns()
        cursor = after
        while True:
            query = self.client.table(self.table).select(self.columns.id)
            if cursor is not None:
                query = query.gt(self.columns.id, cursor)
            if self.deleted_column in columns:
                query = query.is_(self.deleted_column, "null")
            rows = self._rows(query.order(self.columns.id).limit(self.request_rows))
            if not rows:
                return
            for row in rows:
                yield self.columns.checked_id(row, self.table)
            cursor = self.columns.checked_id(rows[-1], self.table)

    def _changes_columns(self) -> tuple[str, ...]:
        """The change columns the table has (probed once: updated_at, then deleted_at)."""
        if self._change_columns is None:
            found: tuple[str, ...] = ()
            for wanted in ((self.updated_column, self.deleted_column), (self.updated_column,)):
                try:
                    self._run(self._select(wanted).limit(0))
                except SupabaseCatalogError as exc:
                    if "column is missing" not in str(exc):
                        raise
                    continue
                found = wanted
                break
            if found and self.deleted_column not in found:
                log.warning(
                    "Supabase table %s has no %s column: soft deletes are not seen (apply %s)",
                    self.table,
                    self.deleted_column,
                    SYNC_MIGRATION,
                )
            self._change_columns = found
        return self._change_columns

    def _changed(self, query: Any) -> list[Product]:
        rows = self._rows(query)
        if not self._change_columns:
            return [self.columns.to_product(row, self.table) for row in rows]
        products = []
        for row in rows:
            product = self.columns.to_product(row, self.table)
            stamp = row.get(self.updated_column)
            products.append(
                replace(
                    product,
                    updated_at=canonical_time(stamp) if stamp else None,
                    deleted=row.get(self.deleted_column) is not None,
                )
            )
        return products

    def describe(self) -> str:
        return f"Supabase table {self.table} at {_host(self.client)}"

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        if after is not None:
            self._check_cursor(after)
        products: list[Product] = []
        cursor = after
        while len(products) < limit:
            # Never trust one answer to hold everything asked for: the server caps rows per
            # request silently (1,000 on Supabase, less if a project lowers it). Only an empty
            # answer means the table has nothing after the cursor.
            batch = self._request_page(cursor, min(limit - len(products), self.request_rows))
            if not batch:
                break
            products.extend(batch)
            cursor = batch[-1].id
        return products

    @property
    def request_rows(self) -> int:
        return min(self.page_size, POSTGREST_MAX_ROWS)

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        for product_id in {type(i): i for i in ids}.values():
            self._check_cursor(product_id)
        found: list[Product] = []
        for chunk in _chunks(list(dict.fromkeys(ids)), GET_CHUNK):
            query = self._select().in_(self.columns.id, chunk).order(self.columns.id)
            found.extend(self._execute(query))
        return sorted(found, key=lambda product: product.id)  # type: ignore[arg-type, return-value]

    def count_after(self, after: ProductId | None) -> int:
        """How many products come after `after` (for progress bars)."""
        if after is None:
            return self._count(None, None)
        self._check_cursor(after)
        return self._count("gt", after)

    def count_at_or_below(self, cursor: ProductId) -> int:
        """Rows with id <= cursor that are not soft-deleted: one `count=exact` HEAD request (no
        rows are sent)."""
        self._check_cursor(cursor)
        return self._count("lte", cursor, live_only=True)

    @property
    def id_type(self) -> type | None:
        """int or str, from the table's first row (one request, once); None for an empty table."""
        if self._id_type is _UNKNOWN:
            query = self.client.table(self.table).select(self.columns.id)
            rows = self._rows(query.order(self.columns.id).limit(1))
            if not rows:
                return None  # asked again next time: the table may fill up
            self._id_type = type(self.columns.checked_id(rows[0], self.table))
        return self._id_type

    def _check_cursor(self, cursor: ProductId) -> None:
        check_cursor(cursor, self.id_type, self.describe())

    def _count(
        self, operator: str | None, value: ProductId | None, *, live_only: bool = False
    ) -> int:
        query = self.client.table(self.table).select(self.columns.id, count="exact", head=True)  # type: ignore[arg-type]
        if operator is not None:
            query = getattr(query, operator)(self.columns.id, value)
        if live_only and self.deleted_column in self._changes_columns():
            query = query.is_(self.deleted_column, "null")
        return int(self._run(query).count or 0)

    def sign_for_fetch(self, products: Sequence[Product]) -> list[Product]:
        """Products ready for the workers: storage paths in `sign_bucket` become signed URLs.

        A path Storage will not sign (the object is missing, or the key may not read it) keeps
        its path and is marked `refused` (NOT_SIGNED, Storage's reason): the build records it
        as failed instead of sending it out (application.catalog.base.split_refused).
        """
        if self.sign_bucket is None:
            return list(products)
        signed = sign_image_urls(self.client, self.sign_bucket, products, self.sign_expires_s)
        if not signed.failures:
            return signed.products
        first = signed.failures[0]
        count = len(signed.failures)
        log.warning("%d paths not signed (first %s: %s)", count, first.path, first.message)
        reasons = {failure.id: failure for failure in signed.failures}
        return [
            replace(
                product, refused=(NOT_SIGNED, _not_signed(self.sign_bucket, reasons[product.id]))
            )
            if product.id in reasons
            else product
            for product in signed.products
        ]

    def _request_page(self, after: ProductId | None, rows: int) -> list[Product]:
        query = self._select()
        if after is not None:
            query = query.gt(self.columns.id, after)
        return self._execute(query.order(self.columns.id).limit(rows))

    def _select(self, extra: Sequence[str] | None = None) -> Any:
        """The product columns and, unless told otherwise, the change columns the table has
        (so pages and gets know a soft-deleted row: the build skips it)."""
        if extra is None:
            extra = self._changes_columns()
        return self.client.table(self.table).select(",".join([*self.columns, *extra]))

    def _execute(self, query: Any) -> list[Product]:
        return self._changed(query)

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        data = self._run(query).data
        # postgrest-py hands back the raw text when the body is not JSON it can parse: e.g. a
        # numeric id of 5,000 digits, past Python's int-from-text limit.
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise SupabaseCatalogError(
                f"Supabase table {self.table}: the answer cannot be read as rows; integer ids "
                "wider than int64/uint64 are refused: use bigint or text ids"
            )
        return data

    def _run(self, query: Any) -> Any:
        try:
            return query.execute()
        except APIError as error:
            raise_catalog_error(error, self.table, self.columns, _key(self.client))
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise CatalogUnavailable(
                f"cannot reach Supabase at {_host(self.client)} to read table {self.table}: "
                f"{type(error).__name__}"
            ) from error


@dataclass(frozen=True)
class _Columns:
    id: str
    url: str
    brand: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.id, self.url, self.brand))

    def checked_id(self, row: dict[str, Any], table: str) -> ProductId:
        product_id = row[self.id]
        if isinstance(product_id, bool) or not isinstance(product_id, int | str):
            raise SupabaseCatalogError(
                f"column {self.id} holds {type(product_id).__name__} values; "
                "product ids must be integers (bigint) or text/uuid"
            )
        try:
            return check_id(product_id)
        except IdRefused as exc:
            raise SupabaseCatalogError(f"Supabase table {table}, column {self.id}: {exc}") from None

    def to_product(self, row: dict[str, Any], table: str) -> Product:
        product_id = self.checked_id(row, table)
        brand, cut = bounded_brand(row.get(self.brand))
        if cut:
            log.warning("%s %r: brand cut to 200 characters", table, product_id)
        # A null image_url becomes "": the fetcher records it as a failed product (bad_url).
        return Product(product_id, row.get(self.url) or "", brand)


def raise_catalog_error(
    error: APIError, table: str, columns: _Columns, key: str | None
) -> NoReturn:
    """Translate a PostgREST error into a message a user can act on (never containing the key)."""
    code, detail = str(error.code or ""), _scrub(str(error.message or error), key)
    wanted = ", ".join(columns)
    if code in _MISSING_TABLE:
        message = (
            f"Supabase table {table} not found ({detail}); apply {MIGRATION} or set the table name"
        )
    elif code in _MISSING_COLUMN:
        message = (
            f"a column is missing in Supabase table {table} ({detail}); the catalog reads {wanted}"
        )
    elif code in _PERMISSION:
        raise CatalogAuthError(
            f"permission denied for Supabase table {table} ({detail}); the key's role cannot "
            "read it: use the project's service_role key, not the anon key"
        ) from error
    elif code in _BAD_KEY or "api key" in detail.lower():
        raise CatalogAuthError(
            f"Supabase rejected the API key while reading table {table} ({detail})"
        ) from error
    elif code in _TRANSIENT or (code.isdigit() and int(code) >= 500):
        raise CatalogUnavailable(
            f"Supabase could not serve table {table} ({code}: {detail})"
        ) from error
    else:
        message = f"Supabase error reading table {table} ({code}: {detail})"
    raise SupabaseCatalogError(message) from error


# --- signed URLs for private buckets ----------------------------------------------------------


@dataclass(frozen=True)
class SignFailure:
    id: ProductId
    path: str
    message: str


@dataclass
class SignedProducts:
    """Products with storage paths replaced by signed URLs; unsignable ones keep their path."""

    products: list[Product]
    failures: list[SignFailure] = field(default_factory=list)


def sign_image_urls(
    client: Client, bucket: str, products: Sequence[Product], expires_s: int
) -> SignedProducts:
    """Sign every image_url that is a path in `bucket` (not an http(s) URL), in bulk requests.

    Runs in the orchestrator just before dispatch, so GPU workers get short-lived URLs and never
    the service key. http(s) URLs pass through untouched.
    """
    paths = list(dict.fromkeys(_object_path(p.image_url) for p in products if _needs_signing(p)))
    signed: dict[str, str] = {}
    errors: dict[str, str] = {}
    for chunk in _chunks(paths, SIGN_CHUNK):
        for item in _sign_chunk(client, bucket, chunk, expires_s):
            url = item.get("signedURL") or item.get("signedUrl")
            if url:
                signed[item["path"]] = url
            else:
                errors[item["path"]] = str(item.get("error") or "not signed")
    return _apply_signatures(products, signed, errors)


def _sign_chunk(client: Client, bucket: str, paths: list[str], expires_s: int) -> list[Any]:
    from storage3.exceptions import StorageApiError

    try:
        return list(client.storage.from_(bucket).create_signed_urls(paths, expires_s))
    except StorageApiError as error:
        detail = _scrub(str(error.message), _key(client))
        failure = CatalogUnavailable if str(error.status).startswith("5") else SupabaseCatalogError
        raise failure(f"cannot sign image paths in Supabase bucket {bucket}: {detail}") from error
    except (httpx.TimeoutException, httpx.TransportError) as error:
        raise CatalogUnavailable(
            f"cannot reach Supabase Storage at {_host(client)} to sign image paths in bucket "
            f"{bucket}: {type(error).__name__}"
        ) from error


def _apply_signatures(
    products: Sequence[Product], signed: dict[str, str], errors: dict[str, str]
) -> SignedProducts:
    result = SignedProducts([])
    for product in products:
        path = _object_path(product.image_url)
        if not _needs_signing(product):
            result.products.append(product)
        elif path in signed:
            result.products.append(replace(product, image_url=signed[path]))
        else:
            result.products.append(product)
            message = errors.get(path, "Storage returned no signed URL for this path")
            result.failures.append(SignFailure(product.id, path, message))
    return result


def _needs_signing(product: Product) -> bool:
    return bool(product.image_url) and not is_http_url(product.image_url)


def _object_path(image_url: str) -> str:
    # Paths are object names inside the bucket; a leading slash is a common copy-paste slip.
    return image_url.lstrip("/")


# --- small helpers ----------------------------------------------------------------------------


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _host(client: Any) -> str:
    return str(getattr(client, "supabase_url", "Supabase")).rstrip("/")


def _key(client: Any) -> str | None:
    return getattr(client, "supabase_key", None)


def _not_signed(bucket: str, failure: SignFailure) -> str:
    return f"{failure.path!r} not signed in bucket {bucket}: {_short(failure.message)}"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scrub(text: str, key: str | None) -> str:
    """Server messages should never echo the key, but make sure of it."""
    return text.replace(key, "***") if key else text
