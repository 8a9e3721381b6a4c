"""The catalog interface every source implements: keyset pages of products in id order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from application.errors import CatalogMismatch
from modal_workers.types import FailedProduct, ProductId

__all__ = [
    "MAX_BRAND_CHARS",
    "Catalog",
    "ChangeFeed",
    "Product",
    "ProductId",
    "bounded_brand",
    "canonical_time",
    "check_cursor",
    "split_refused",
]

#: Longer brands are cut to this many characters (the store counts vectors per brand, and
#: progress.json is rewritten at every commit). The same bound as sharding.progress.BRAND_CHARS.
MAX_BRAND_CHARS = 200


@dataclass(frozen=True, slots=True)
class Product:
    id: ProductId
    image_url: str
    brand: str | None = None
    #: (reason, message) when the catalog already knows this image cannot be fetched (a
    #: private-bucket path Storage would not sign): record it as failed, do not send it out.
    refused: tuple[str, str] | None = None
    #: When the row last changed, canonical UTC text (canonical_time): None when the catalog
    #: has no updated_at. Changes are read in (updated_at, id) order (ChangeFeed).
    updated_at: str | None = None
    #: Soft-deleted (deleted_at is set): the product must not be live in the index.
    deleted: bool = False


class Catalog(Protocol):
    """A product source read in ascending id order with keyset pagination."""

    #: Folder that relative local image paths resolve against (local catalog files only), else None.
    local_root: str | None

    def describe(self) -> str:
        """Where the products come from, for messages (never a secret)."""
        ...

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        """Up to `limit` products with id > `after` (all when `after` is None), ascending by id.

        CatalogMismatch when `after` is not of the catalog's id type."""
        ...

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        """The products with these ids (missing ids are left out), in id order."""
        ...

    def count_at_or_below(self, cursor: ProductId) -> int:
        """How many products have id <= `cursor`, soft-deleted ones left out (they are not
        pending): a resumed build never reads them again, so more of them than the store
        indexed or recorded as failed means rows were added below the cursor (ids must grow:
        docs/extending.md, "Id ordering"). CatalogMismatch when `cursor` is not of the
        catalog's id type."""
        ...


@runtime_checkable
class ChangeFeed(Protocol):
    """A catalog whose rows say when they changed (updated_at) and whether they are deleted
    (deleted_at): what a build's sync pass reads (application.sync)."""

    def changed_since(
        self, updated_at: str | None, after: ProductId | None, limit: int
    ) -> list[Product]:
        """Up to `limit` rows whose (updated_at, id) comes after (`updated_at`, `after`), in
        that order, soft-deleted ones included (Product.deleted); all rows with an updated_at
        when `updated_at` is None."""
        ...

    def latest_change(self) -> tuple[str, ProductId] | None:
        """The largest (updated_at, id) of the catalog, None when no row has an updated_at."""
        ...


def canonical_time(value: object) -> str:
    """A timestamp as canonical UTC text that sorts in time order:
    `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Accepts ISO 8601 (with `Z` or an offset; a time without an
    offset is taken as UTC) and datetimes; ValueError otherwise."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        moment = datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split_refused(products: Sequence[Product]) -> tuple[list[Product], list[FailedProduct]]:
    """(products to embed, failures for the ones the catalog refused): what the build sends
    to the workers, and what it records as failed without sending. Soft-deleted products are
    in neither: they are not indexed and did not fail."""
    ready = [p for p in products if p.refused is None and not p.deleted]
    failed = [
        FailedProduct(id=product.id, reason=product.refused[0], message=product.refused[1])
        for product in products
        if product.refused is not None and not product.deleted
    ]
    return ready, failed


def bounded_brand(value: object) -> tuple[str | None, bool]:
    """(brand, was_cut): None for a missing or empty brand, at most MAX_BRAND_CHARS characters."""
    if value is None:
        return None, False
    text = value if isinstance(value, str) else str(value)
    if not text:
        return None, False
    if len(text) > MAX_BRAND_CHARS:
        return text[:MAX_BRAND_CHARS], True
    return text, False


def check_cursor(cursor: ProductId, id_type: type | None, source: str) -> None:
    """CatalogMismatch unless `cursor` (from the store) has the catalog's id type (None: the
    catalog is empty, nothing to compare)."""
    if id_type is None or type(cursor) is id_type:
        return
    kinds = {int: "integer", str: "string"}
    theirs = kinds.get(type(cursor), type(cursor).__name__)
    raise CatalogMismatch(
        f"{source} has {kinds.get(id_type, id_type.__name__)} ids but the store's cursor "
        f"{cursor!r} is a {theirs}: this catalog did not build this store (use the catalog "
        "it was built from, or a new store)"
    )
