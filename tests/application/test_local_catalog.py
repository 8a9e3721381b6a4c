"""The local catalog file: CSV and JSONL, id types kept, keyset pages in id order, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from application.catalog.local import CatalogError, LocalCatalog


def _csv(tmp_path: Path, rows: list[str], header: str = "id,image_url,brand") -> Path:
    path = tmp_path / "catalog.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_pages_in_numeric_id_order_with_int_ids(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["10,b.jpg,Acme", "2,a.jpg,", "33,c.jpg,Zed"])
    catalog = LocalCatalog(path)
    first = catalog.page(None, 2)
    assert [p.id for p in first] == [2, 10]
    assert first[0].brand is None and first[1].brand == "Acme"
    assert [p.id for p in catalog.page(first[-1].id, 2)] == [33]
    assert catalog.page(33, 5) == []
    assert catalog.local_root == str(tmp_path.resolve())


def test_cursor_is_compared_as_an_integer_in_an_integer_catalog(tmp_path: Path) -> None:
    # Cursors come back from JSON with their type: 2 stays 2 ("2" would be a mismatch, see
    # test_catalog_ids.py), and 10 sorts after 2.
    catalog = LocalCatalog(_csv(tmp_path, ["1,a.jpg,x", "2,b.jpg,x", "10,c.jpg,x"]))
    assert [p.id for p in catalog.page(2, 10)] == [10]
    assert catalog.count_after(2) == 1 and catalog.count_after(None) == 3


def test_jsonl_keeps_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    rows = [{"id": "sku-b", "image_url": "https://x/b.jpg"}, {"id": "sku-a", "image_url": "a.png"}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    catalog = LocalCatalog(path)
    assert [p.id for p in catalog.page(None, 10)] == ["sku-a", "sku-b"]
    assert [p.id for p in catalog.get(["sku-b", "missing"])] == ["sku-b"]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["1,a.jpg,x", "1,b.jpg,y"], "id,image_url,brand", "duplicate id 1"),
        (["1,a.jpg"], "id,brand", "lacks column(s) image_url"),
        (["1,,x"], "id,image_url,brand", "line 2: missing image_url"),
        (["1,a.jpg,x", "abc,b.jpg,x"], "id,image_url,brand", "mixes integer and string ids"),
    ],
)
def test_bad_catalog_files_name_the_problem(
    tmp_path: Path, rows: list[str], header: str, message: str
) -> None:
    with pytest.raises(CatalogError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LocalCatalog(_csv(tmp_path, rows, header))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        LocalCatalog(tmp_path / "nope.csv")


def test_unsorted_files_page_in_id_order_and_get_reads_rows_back(tmp_path: Path) -> None:
    path = _csv(tmp_path, ['30,"c, quoted.jpg",Zed', "10,a.jpg,Acme", "20,b.jpg,"])
    catalog = LocalCatalog(path)
    assert [(p.id, p.image_url) for p in catalog.page(None, 5)] == [
        (10, "a.jpg"),
        (20, "b.jpg"),
        (30, "c, quoted.jpg"),
    ]
    assert [p.brand for p in catalog.get([30, 10, 99])] == ["Acme", "Zed"]


def test_a_record_spanning_lines_is_refused_by_line_number(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"line 3: .*records must be one line each"):
        LocalCatalog(_csv(tmp_path, ["1,a.jpg,x", '2,b.jpg,"two', 'lines"']))
