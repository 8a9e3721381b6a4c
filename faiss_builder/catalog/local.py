"""A local catalog file (CSV or JSONL with id, image_url, brand), served in id order."""

from __future__ import annotations

import bisect
import csv
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from faiss_builder.catalog.base import Product, ProductId

_INT_ID = re.compile(r"^-?\d+$")
REQUIRED_COLUMNS = ("id", "image_url")


class CatalogError(ValueError):
    """The catalog cannot be read as a product list; the message names the file and the problem."""


class LocalCatalog:
    """Products from a CSV or JSONL file; relative image paths resolve against the file's folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.local_root: str | None = str(self.path.resolve().parent)
        self._products = _load(self.path)
        self._ids = [product.id for product in self._products]

    def describe(self) -> str:
        return f"catalog file {self.path} ({len(self._products)} products)"

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        start = self._index_after(after)
        return self._products[start : start + limit]

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        wanted = set(ids)
        return [product for product in self._products if product.id in wanted]

    def count_after(self, after: ProductId | None) -> int:
        """How many products come after `after` (for progress bars)."""
        return len(self._products) - self._index_after(after)

    def _index_after(self, after: ProductId | None) -> int:
        if after is None:
            return 0
        return bisect.bisect_right(self._ids, _same_type(after, self._ids))


def _load(path: Path) -> list[Product]:
    if not path.is_file():
        raise CatalogError(f"catalog file {path} does not exist")
    rows = _read_jsonl(path) if path.suffix.lower() in {".jsonl", ".ndjson"} else _read_csv(path)
    products = [_to_product(path, number, row) for number, row in rows]
    _check_ids(path, products)
    return sorted(products, key=lambda product: product.id)  # type: ignore[arg-type, return-value]


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CatalogError(f"catalog file {path} lacks column(s) {', '.join(missing)}")
        for number, row in enumerate(reader, start=2):
            yield number, dict(row)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CatalogError(
                    f"catalog file {path} line {number}: invalid JSON ({exc})"
                ) from exc
            if not isinstance(row, dict):
                raise CatalogError(f"catalog file {path} line {number}: expected a JSON object")
            yield number, row


def _to_product(path: Path, number: int, row: dict[str, object]) -> Product:
    raw_id, url = row.get("id"), row.get("image_url")
    if raw_id is None or raw_id == "" or isinstance(raw_id, bool | float):
        raise CatalogError(f"catalog file {path} line {number}: missing or invalid id {raw_id!r}")
    if not isinstance(url, str) or not url.strip():
        raise CatalogError(f"catalog file {path} line {number}: missing image_url")
    brand = row.get("brand")
    product_id: ProductId = raw_id if isinstance(raw_id, int) else _parse_id(str(raw_id))
    # Brands repeat across many products: one shared string each (catalog memory per product).
    brand_name = sys.intern(str(brand)) if brand else None
    return Product(id=product_id, image_url=url.strip(), brand=brand_name)


def _parse_id(text: str) -> ProductId:
    text = text.strip()
    return int(text) if _INT_ID.match(text) else text


def _check_ids(path: Path, products: list[Product]) -> None:
    if len({type(product.id) for product in products}) > 1:
        raise CatalogError(f"catalog file {path} mixes integer and string ids; use one type")
    seen: set[ProductId] = set()
    for product in products:
        if product.id in seen:
            raise CatalogError(f"catalog file {path} has duplicate id {product.id!r}")
        seen.add(product.id)


def _same_type(after: ProductId, ids: list[ProductId]) -> ProductId:
    """Cursors come back from JSON; compare them in the catalog's own id type."""
    if ids and isinstance(ids[0], int) and not isinstance(after, int):
        return int(after)
    if ids and isinstance(ids[0], str) and not isinstance(after, str):
        return str(after)
    return after
