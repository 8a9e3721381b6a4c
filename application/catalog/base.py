"""The catalog interface every source implements: keyset pages of products in id order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from modal_workers.types import ProductId

__all__ = ["Catalog", "Product", "ProductId"]


@dataclass(frozen=True, slots=True)
class Product:
    id: ProductId
    image_url: str
    brand: str | None = None


class Catalog(Protocol):
    """A product source read in ascending id order with keyset pagination."""

    #: Folder that relative local image paths resolve against (local catalog files only), else None.
    local_root: str | None

    def describe(self) -> str:
        """Where the products come from, for messages (never a secret)."""
        ...

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        """Up to `limit` products with id > `after` (all when `after` is None), ascending by id."""
        ...

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        """The products with these ids (missing ids are left out), in id order."""
        ...
