"""A local catalog file (CSV or JSONL with id, image_url, brand), served in id order."""

from __future__ import annotations

import bisect
import csv
import json
import re
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from application.catalog.base import Product, ProductId

_INT_ID = re.compile(r"^-?\d+$")
REQUIRED_COLUMNS = ("id", "image_url")


class CatalogError(ValueError):
    """The catalog cannot be read as a product list; the message names the file and the problem."""


class LocalCatalog:
    """Products from a CSV or JSONL file; relative image paths resolve against the file's folder.

    The file is validated once; memory then holds only the sorted ids and each row's byte offset
    (pages are read back from the file), so a catalog of millions of rows stays small.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.local_root: str | None = str(self.path.resolve().parent)
        self._format = _RowFormat.detect(self.path)
        self._ids, self._offsets = _index(self.path, self._format)

    def describe(self) -> str:
        return f"catalog file {self.path} ({len(self._ids)} products)"

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        start = self._index_after(after)
        return self._read(self._offsets[start : start + limit])

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        found = {self._position(product_id) for product_id in ids}
        return self._read([self._offsets[i] for i in sorted(i for i in found if i is not None)])

    def count_after(self, after: ProductId | None) -> int:
        """How many products come after `after` (for progress bars)."""
        return len(self._ids) - self._index_after(after)

    def _index_after(self, after: ProductId | None) -> int:
        if after is None:
            return 0
        return bisect.bisect_right(self._ids, _same_type(after, self._ids))  # type: ignore[arg-type]

    def _position(self, product_id: ProductId) -> int | None:
        key = _same_type(product_id, self._ids)
        i = bisect.bisect_left(self._ids, key)  # type: ignore[arg-type]
        return i if i < len(self._ids) and self._ids[i] == key else None

    def _read(self, offsets: Sequence[int]) -> list[Product]:
        with self.path.open("rb") as handle:
            return [self._format.product(self.path, _line_at(handle, offset)) for offset in offsets]


class _RowFormat:
    """How one line of the file becomes a row: CSV with its header, or a JSON object."""

    def __init__(self, header: list[str] | None) -> None:
        self.header = header

    @classmethod
    def detect(cls, path: Path) -> _RowFormat:
        if not path.is_file():
            raise CatalogError(f"catalog file {path} does not exist")
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            return cls(None)
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise CatalogError(f"catalog file {path} lacks column(s) {', '.join(missing)}")
        return cls(header)

    def row(self, path: Path, number: int, line: str) -> dict[str, Any] | None:
        """The line's fields, None for a blank line, CatalogError for a malformed one."""
        if not line.strip():
            return None
        if self.header is None:
            return _json_row(path, number, line)
        try:
            values = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise CatalogError(
                f"catalog file {path} line {number}: {exc} (records must be one line each)"
            ) from exc
        if len(values) != len(self.header):
            raise CatalogError(
                f"catalog file {path} line {number}: {len(values)} fields for "
                f"{len(self.header)} columns (records must be one line each)"
            )
        return dict(zip(self.header, values, strict=True))

    def product(self, path: Path, line: str) -> Product:
        row = self.row(path, 0, line)
        assert row is not None
        return _to_product(path, 0, row)


def _index(path: Path, row_format: _RowFormat) -> tuple[list[ProductId], array[int]]:
    """Validate every row; return the ids in ascending order and their rows' byte offsets."""
    ids: list[ProductId] = []
    offsets = array("Q")
    for offset, product in _scan(path, row_format):
        ids.append(product.id)
        offsets.append(offset)
    _check_ids(path, ids)
    if all(a < b for a, b in pairwise(ids)):  # type: ignore[operator]
        return ids, offsets  # the usual case: the file is already in id order
    order = sorted(range(len(ids)), key=ids.__getitem__)  # type: ignore[arg-type, return-value]
    return [ids[i] for i in order], array("Q", (offsets[i] for i in order))


def _scan(path: Path, row_format: _RowFormat) -> Iterator[tuple[int, Product]]:
    skip_header = row_format.header is not None
    with path.open("rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            line_offset, offset = offset, offset + len(raw)
            if skip_header and number == 1:
                continue
            row = row_format.row(path, number, _decode(path, number, raw))
            if row is not None:
                yield line_offset, _to_product(path, number, row)


def _line_at(handle: Any, offset: int) -> str:
    handle.seek(offset)
    return str(handle.readline().decode("utf-8"))


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog file {path} line {number}: not UTF-8 ({exc})") from exc


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"catalog file {path} line {number}: invalid JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise CatalogError(f"catalog file {path} line {number}: expected a JSON object")
    return row


def _to_product(path: Path, number: int, row: dict[str, Any]) -> Product:
    raw_id, url = row.get("id"), row.get("image_url")
    if raw_id is None or raw_id == "" or isinstance(raw_id, bool | float):
        raise CatalogError(f"catalog file {path} line {number}: missing or invalid id {raw_id!r}")
    if not isinstance(url, str) or not url.strip():
        raise CatalogError(f"catalog file {path} line {number}: missing image_url")
    brand = row.get("brand")
    product_id: ProductId = raw_id if isinstance(raw_id, int) else _parse_id(str(raw_id))
    # Brands repeat across many rows: share one string per brand.
    return Product(
        id=product_id, image_url=url.strip(), brand=sys.intern(str(brand)) if brand else None
    )


def _parse_id(text: str) -> ProductId:
    text = text.strip()
    return int(text) if _INT_ID.match(text) else text


def _check_ids(path: Path, ids: list[ProductId]) -> None:
    if len({type(product_id) for product_id in ids}) > 1:
        raise CatalogError(f"catalog file {path} mixes integer and string ids; use one type")
    seen: set[ProductId] = set()
    for product_id in ids:
        if product_id in seen:
            raise CatalogError(f"catalog file {path} has duplicate id {product_id!r}")
        seen.add(product_id)


def _same_type(after: ProductId, ids: list[ProductId]) -> ProductId:
    """Cursors come back from JSON; compare them in the catalog's own id type."""
    if ids and isinstance(ids[0], int) and not isinstance(after, int):
        return int(after)
    if ids and isinstance(ids[0], str) and not isinstance(after, str):
        return str(after)
    return after
