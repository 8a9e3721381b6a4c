"""Catalog ids kept exactly or refused (issue 13, items 4, 10, 20, 24): no id changes identity."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from application.catalog.local import CatalogError, LocalCatalog
from application.errors import CatalogMismatch


def _csv(tmp_path: Path, rows: list[str], header: str = "id,image_url,brand") -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_with_a_utf8_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(b"\xef\xbb\xbfid,image_url,brand\r\n1,a.jpg,Acme\r\n2,b.jpg,\r\n")
    catalog = LocalCatalog(path)
    assert [(p.id, p.image_url, p.brand) for p in catalog.page(None, 5)] == [
        (1, "a.jpg", "Acme"),
        (2, "b.jpg", None),
    ]


def test_a_jsonl_with_a_byte_order_mark_reads_its_first_row_back(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    rows = ['{"id": 2, "image_url": "b.jpg"}', '{"id": 1, "image_url": "a.jpg"}']
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode() + b"\n")
    assert [p.id for p in LocalCatalog(path).page(None, 5)] == [1, 2]


def test_zero_padded_csv_ids_stay_strings_exactly(tmp_path: Path) -> None:
    catalog = LocalCatalog(_csv(tmp_path, ["00123,a.jpg,x", "00124,b.jpg,x", "0099,c.jpg,x"]))
    assert [p.id for p in catalog.page(None, 5)] == ["00123", "00124", "0099"]  # as strings sort


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ["7,a.jpg,x", "007,b.jpg,x"],
            r"mixes integer and string ids \(line 2: 7, line 3: '007'\)",
        ),
        (["1,a.jpg,x", "-0,b.jpg,x"], "mixes integer and string ids"),
        (["1,a.jpg,x", " ,b.jpg,x"], "line 3: id is empty or blank"),
        ([" 7,a.jpg,x"], "line 2: id ' 7' starts or ends with whitespace"),
        (["18446744073709551616,a.jpg,x"], "line 2: integer id .* outside int64/uint64"),
        (["-9223372036854775809,a.jpg,x"], "line 2: integer id .* outside int64/uint64"),
        (["9" * 5000 + ",a.jpg,x"], "line 2: integer id of 5000 digits is outside int64/uint64"),
        (["1,a.jpg,x", "2,b.jpg,x", "1,c.jpg,y"], r"duplicate id 1 \(lines 2 and 4\)"),
    ],
)
def test_csv_ids_that_would_change_identity_are_refused_naming_the_line(
    tmp_path: Path, rows: list[str], message: str
) -> None:
    with pytest.raises(CatalogError, match=message):
        LocalCatalog(_csv(tmp_path, rows))


def test_integer_ids_at_the_int64_and_uint64_edges_are_kept_exact(tmp_path: Path) -> None:
    edges = [-(2**63), 0, 2**63 - 1, 2**64 - 1]
    catalog = LocalCatalog(_csv(tmp_path, [f"{i},a{n}.jpg,x" for n, i in enumerate(edges)]))
    assert [p.id for p in catalog.page(None, 10)] == edges
    assert all(type(p.id) is int for p in catalog.page(None, 10))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": {"a": 1}, "image_url": "a.jpg"}', "line 2: id is an object"),
        ('{"id": [1], "image_url": "a.jpg"}', "line 2: id is an array"),
        ('{"id": true, "image_url": "a.jpg"}', "line 2: id is a boolean"),
        ('{"id": 1.0, "image_url": "a.jpg"}', "line 2: id is a float"),
        ('{"id": " ", "image_url": "a.jpg"}', "line 2: id is empty or blank"),
        ('{"id": 18446744073709551616, "image_url": "a.jpg"}', "line 2: integer id .* outside"),
        ('{"id": ' + "9" * 5000 + ', "image_url": "a.jpg"}', "line 2: integer id of 5000 digits"),
        ('{"id": 2, "image_url": "b.jpg", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
         "line 2: JSON nested deeper than 32 levels"),
    ],
)  # fmt: skip
def test_jsonl_ids_that_cannot_be_kept_are_refused_naming_the_line(
    tmp_path: Path, line: str, message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(CatalogError, match=message):
        LocalCatalog(_jsonl(tmp_path, ['{"id": 1, "image_url": "a.jpg"}', line]))
    assert time.monotonic() - started < 2


def test_jsonl_strings_of_digits_stay_strings(tmp_path: Path) -> None:
    rows = [json.dumps({"id": str(i), "image_url": f"{i}.jpg"}) for i in (10, 9, 11)]
    assert [p.id for p in LocalCatalog(_jsonl(tmp_path, rows)).page(None, 5)] == ["10", "11", "9"]


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    brand = "[[[[{{{{" * 20
    row = json.dumps({"id": 1, "image_url": "a.jpg", "brand": brand})
    assert LocalCatalog(_jsonl(tmp_path, [row])).page(None, 1)[0].brand == brand


def test_long_brands_are_cut_to_200_characters_and_counted(tmp_path: Path) -> None:
    catalog = LocalCatalog(_csv(tmp_path, [f"1,a.jpg,{'B' * 100_000}", "2,b.jpg,short"]))
    assert [p.brand for p in catalog.page(None, 5)] == ["B" * 200, "short"]
    assert catalog.brands_cut == 1
    row = json.dumps({"id": 1, "image_url": "a.jpg", "brand": "C" * 4_000_000})
    jsonl = LocalCatalog(_jsonl(tmp_path, [row]))
    assert jsonl.page(None, 1)[0].brand == "C" * 200 and jsonl.brands_cut == 1


def test_a_csv_field_over_the_csv_limit_is_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"line 3: field larger than field limit \(131072\)$"):
        LocalCatalog(_csv(tmp_path, ["1,a.jpg,x", f"2,b.jpg,{'B' * 4_000_000}"]))


def test_string_ids_appended_after_p9_are_counted_at_or_below_the_cursor(tmp_path: Path) -> None:
    # P1..P9 were built (cursor 'P9'); P10..P12 appended later sort below 'P9' and are never read.
    catalog = LocalCatalog(_csv(tmp_path, [f"P{i},{i}.jpg,x" for i in range(1, 13)]))
    assert catalog.page("P9", 10) == []
    assert catalog.count_at_or_below("P9") == 12
    assert catalog.count_at_or_below("P0") == 0 and catalog.count_after("P9") == 0


def test_a_cursor_of_the_other_id_type_is_a_mismatch_not_a_conversion(tmp_path: Path) -> None:
    catalog = LocalCatalog(_csv(tmp_path, ["1,a.jpg,x", "2,b.jpg,x", "10,c.jpg,x"]))
    with pytest.raises(CatalogMismatch, match="integer ids but the store's cursor '2' is a string"):
        catalog.page("2", 10)
    with pytest.raises(CatalogMismatch):
        catalog.count_at_or_below("2")
    assert [p.id for p in catalog.page(2, 10)] == [10]
