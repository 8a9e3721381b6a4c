"""A local catalog file (CSV or JSONL with id, image_url, brand and optionally updated_at and
deleted_at), served in id order; its changes in (updated_at, id) order."""

from __future__ import annotations

import bisect
import csv
import json
import logging
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from application.catalog.base import (
    Product,
    ProductId,
    bounded_brand,
    canonical_time,
    check_cursor,
)
from application.catalog.ids import IdRefused, check_id, id_from_text

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "image_url")
#: Nesting depth of JSON a row may hold (a row is a flat object; extra fields may nest a little).
MAX_JSON_DEPTH = 32
_BOM = "\ufeff"


class CatalogError(ValueError):
    """The catalog cannot be read as a product list; the message names the file and the problem."""


class LocalCatalog:
    """Products from a CSV or JSONL file; relative image paths resolve against the file's folder.

    The file is validated once; memory then holds only the sorted ids and each row's byte offset
    (pages are read back from the file), so a catalog of millions of rows stays small.

    Ids are kept exactly as the file has them: in JSONL, a number is an integer id and a string
    a string id; in CSV, a cell written as a canonical decimal integer (`0`, `7`, `-3`, no
    leading zeros or sign) is an integer id and anything else a string (`007` stays "007").
    A file whose ids are not all of one type is refused, so `7` and `007` cannot collide.

    Optional columns: `updated_at` (ISO 8601; a time without an offset is UTC) makes the file a
    ChangeFeed (a sync re-embeds rows changed since the last one); a non-empty `deleted_at`
    marks a row soft-deleted. A row missing from the file is a hard delete: a sync compares
    `ids()` with the store's live ids (cheap for a file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.local_root: str | None = str(self.path.resolve().parent)
            self._format = _RowFormat.detect(self.path)
            self._ids, self._offsets, self.brands_cut, self._changes, self._deleted = _index(
                self.path, self._format
            )
        except OSError as exc:
            raise CatalogError(
                f"catalog file {self.path} cannot be read: {_os_reason(exc)}"
            ) from exc
        self._deleted_sorted: list[ProductId] | None = None
        if self.brands_cut:
            log.warning("%s: %d brand(s) cut to 200 characters", self.path, self.brands_cut)

    @property
    def id_type(self) -> type | None:
        """int or str (None for an empty file)."""
        return type(self._ids[0]) if self._ids else None

    def describe(self) -> str:
        return f"catalog file {self.path} ({len(self._ids)} products)"

    def page(self, after: ProductId | None, limit: int) -> list[Product]:
        start = self._index_after(after)
        return self._read(self._offsets[start : start + limit])

    def get(self, ids: Sequence[ProductId]) -> list[Product]:
        found = {self._position(product_id) for product_id in ids}
        return self._read([self._offsets[i] for i in sorted(i for i in found if i is not None)])

    def ids(self) -> list[ProductId]:
        """Every id in the file that is not soft-deleted, ascending (for hard-delete checks)."""
        return [pid for pid in self._ids if pid not in self._deleted]

    def changed_since(
        self, updated_at: str | None, after: ProductId | None, limit: int
    ) -> list[Product]:
        if updated_at is None:
            start = 0
        elif after is None:  # rows changed after `updated_at` (as the Supabase catalog reads)
            start = bisect.bisect_right(self._changes, updated_at, key=lambda change: change[0])
        else:
            start = bisect.bisect_right(self._changes, (updated_at, after))  # type: ignore[arg-type]
        wanted = [pid for _, pid in self._changes[start : start + limit]]
        by_id = {product.id: product for product in self.get(wanted)}
        return [by_id[pid] for pid in wanted]

    def latest_change(self) -> tuple[str, ProductId] | None:
        return self._changes[-1] if self._changes else None

    def count_after(self, after: ProductId | None) -> int:
        """How many products come after `after` (for progress bars)."""
        return len(self._ids) - self._index_after(after)

    def count_at_or_below(self, cursor: ProductId) -> int:
        """Rows with id <= cursor that are not soft-deleted (a deleted row is not pending)."""
        at_or_below = self._index_after(cursor)
        if not self._deleted:
            return at_or_below
        if self._deleted_sorted is None:
            self._deleted_sorted = sorted(self._deleted)  # type: ignore[type-var]
        return at_or_below - bisect.bisect_right(self._deleted_sorted, cursor)  # type: ignore[arg-type]

    def _index_after(self, after: ProductId | None) -> int:
        if after is None:
            return 0
        check_cursor(after, self.id_type, self.describe())
        return bisect.bisect_right(self._ids, after)  # type: ignore[arg-type]

    def _position(self, product_id: ProductId) -> int | None:
        check_cursor(product_id, self.id_type, self.describe())
        i = bisect.bisect_left(self._ids, product_id)  # type: ignore[arg-type]
        return i if i < len(self._ids) and self._ids[i] == product_id else None

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
            raise CatalogError(f"catalog file {path} does not exist (or is not a file)")
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            return cls(None)
        # utf-8-sig: spreadsheet programs start CSV files with a byte order mark.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            try:
                header = next(csv.reader(handle), [])
            except (csv.Error, UnicodeDecodeError) as exc:
                raise CatalogError(
                    f"catalog file {path} line 1: unreadable header ({exc})"
                ) from exc
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
            hint = "" if "field limit" in str(exc) else " (records must be one line each)"
            raise CatalogError(f"catalog file {path} line {number}: {exc}{hint}") from exc
        if len(values) != len(self.header):
            raise CatalogError(
                f"catalog file {path} line {number}: {len(values)} fields for "
                f"{len(self.header)} columns (records must be one line each)"
            )
        return dict(zip(self.header, values, strict=True))

    def product(self, path: Path, line: str) -> Product:
        row = self.row(path, 0, line)
        assert row is not None
        return _to_product(path, 0, row, csv_text=self.header is not None)[0]


def _index(
    path: Path, row_format: _RowFormat
) -> tuple[list[ProductId], array[int], int, list[tuple[str, ProductId]], set[ProductId]]:
    """Validate every row; the ids in ascending order, their rows' byte offsets, brands cut,
    the (updated_at, id) of rows that have one (sorted) and the soft-deleted ids."""
    ids: list[ProductId] = []
    lines = array("Q")
    offsets = array("Q")
    cut = 0
    changes: list[tuple[str, ProductId]] = []
    deleted: set[ProductId] = set()
    for number, offset, product, brand_cut in _scan(path, row_format):
        ids.append(product.id)
        lines.append(number)
        offsets.append(offset)
        cut += brand_cut
        if product.updated_at is not None:
            changes.append((product.updated_at, product.id))
        if product.deleted:
            deleted.add(product.id)
    _check_one_type(path, ids, lines)
    if not all(a < b for a, b in pairwise(ids)):  # type: ignore[operator]
        order = sorted(range(len(ids)), key=ids.__getitem__)  # type: ignore[arg-type, return-value]
        ids = [ids[i] for i in order]
        lines = array("Q", (lines[i] for i in order))
        offsets = array("Q", (offsets[i] for i in order))
    for i in range(1, len(ids)):
        if ids[i] == ids[i - 1]:
            first, second = sorted((lines[i - 1], lines[i]))
            raise CatalogError(
                f"catalog file {path} has duplicate id {ids[i]!r} (lines {first} and {second})"
            )
    changes.sort()  # type: ignore[arg-type]
    return ids, offsets, cut, changes, deleted


def _scan(path: Path, row_format: _RowFormat) -> Iterator[tuple[int, int, Product, bool]]:
    skip_header = row_format.header is not None
    with path.open("rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            line_offset, offset = offset, offset + len(raw)
            if skip_header and number == 1:
                continue
            line = _decode(path, number, raw)
            row = row_format.row(path, number, line)
            if row is not None:
                product, cut = _to_product(path, number, row, csv_text=skip_header)
                yield number, line_offset, product, cut


def _line_at(handle: Any, offset: int) -> str:
    handle.seek(offset)
    line = str(handle.readline().decode("utf-8"))
    return line.removeprefix(_BOM) if offset == 0 else line


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog file {path} line {number}: not UTF-8 ({exc})") from exc
    return line.removeprefix(_BOM) if number == 1 else line


class _WideInt(str):
    """An integer literal too wide to be an id, kept as its text (int() of 5,000 digits fails)."""


def _parse_int(text: str) -> int | str:
    return int(text) if len(text) <= 24 else _WideInt(text)


def _json_row(path: Path, number: int, line: str) -> dict[str, Any]:
    depth = _json_depth(line)
    if depth > MAX_JSON_DEPTH:
        raise CatalogError(
            f"catalog file {path} line {number}: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        row = json.loads(line, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CatalogError(f"catalog file {path} line {number}: invalid JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise CatalogError(f"catalog file {path} line {number}: expected a JSON object")
    return row


def _json_depth(line: str) -> int:
    """The deepest nesting of arrays and objects in the line (strings skipped), without parsing.

    Cheap for ordinary rows: the scan runs only when the line holds many brackets at all.
    """
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in line:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _to_product(
    path: Path, number: int, row: dict[str, Any], *, csv_text: bool
) -> tuple[Product, bool]:
    raw_id, url = row.get("id"), row.get("image_url")
    where = f"catalog file {path} line {number}"
    if raw_id is None or raw_id == "":
        raise CatalogError(f"{where}: missing id")
    try:
        if isinstance(raw_id, _WideInt):
            raise IdRefused(
                f"integer id of {len(raw_id.lstrip('-'))} digits is outside int64/uint64; "
                "use a string id for wider numbers"
            )
        product_id = id_from_text(raw_id) if csv_text else check_id(raw_id)
    except IdRefused as exc:
        raise CatalogError(f"{where}: {exc}") from None
    if not isinstance(url, str) or not url.strip():
        raise CatalogError(f"{where}: missing image_url")
    brand, cut = bounded_brand(row.get("brand"))
    updated_at = _timestamp(where, "updated_at", row.get("updated_at"))
    deleted = _timestamp(where, "deleted_at", row.get("deleted_at")) is not None
    # Brands repeat across many rows: share one string per brand.
    return Product(
        id=product_id,
        image_url=url.strip(),
        brand=sys.intern(brand) if brand else None,
        updated_at=updated_at,
        deleted=deleted,
    ), cut


def _timestamp(where: str, column: str, value: object) -> str | None:
    """An optional timestamp column as canonical UTC text; empty or null: None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return canonical_time(value)
    except ValueError:
        raise CatalogError(
            f"{where}: {column} {str(value)[:40]!r} is not an ISO 8601 timestamp"
        ) from None


def _check_one_type(path: Path, ids: list[ProductId], lines: array[int]) -> None:
    first_of: dict[type, int] = {}
    for index, product_id in enumerate(ids):
        first_of.setdefault(type(product_id), index)
        if len(first_of) > 1:
            break
    if len(first_of) > 1:
        i, s = first_of[int], first_of[str]
        raise CatalogError(
            f"catalog file {path} mixes integer and string ids (line {lines[i]}: {ids[i]!r}, "
            f"line {lines[s]}: {ids[s]!r}); use one type. Ids are kept as written: in CSV only "
            "digits without leading zeros are integers"
        )


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
