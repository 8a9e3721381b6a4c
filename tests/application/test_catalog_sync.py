"""A nightly build follows a local catalog: replaced, soft- and hard-deleted, inserted-below-cursor
rows (real photos, the histogram embedder, real FAISS, the build flow under Prefect)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faiss_builder.cli import app
from faiss_builder.demo import make_demo_catalog
from faiss_builder.errors import EXIT_CONFIG
from sharding import LocalStore, check_store, load_index, read_progress

T0, T1 = "2026-11-30T02:00:00Z", "2026-12-01T09:30:00+01:00"
PRODUCTS = 20


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "image_url", "brand", "updated_at", "deleted_at"])
        writer.writeheader()
        writer.writerows(rows)


def _build(store: Path, catalog: Path) -> dict:
    code, out, err = _run(
        "build", "--store", str(store), "--catalog", str(catalog), "--embedder", "histogram",
        "--kinds", "color,structure", "--batch-size", "6", "--json",
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def synced(prefect_api: object, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("sync-catalog")
    demo, query = make_demo_catalog(folder, PRODUCTS)
    with demo.open(newline="", encoding="utf-8") as handle:
        rows = [{**row, "updated_at": T0, "deleted_at": ""} for row in csv.DictReader(handle)]
    catalog, store = folder / "catalog.csv", folder / "store"
    _write(catalog, rows)
    first = _build(store, catalog)
    shutil.copy(query, folder / "images" / "new-5.jpg")
    (folder / "images" / "broken.jpg").write_text("not an image")
    by_id = {int(str(row["id"])): row for row in rows}
    by_id[5] |= {"image_url": "images/new-5.jpg", "updated_at": T1}  # a new photo
    by_id[3] |= {"image_url": "images/broken.jpg", "updated_at": T1}  # a new photo that fails
    by_id[7] |= {"deleted_at": T1, "updated_at": T1}  # soft delete
    del by_id[9]  # hard delete: the row is gone
    by_id[0] = {"id": 0, "image_url": "images/00012.jpg", "brand": "Late", "updated_at": T1}
    by_id[21] = {"id": 21, "image_url": "images/00013.jpg", "brand": "New", "updated_at": T1}
    _write(catalog, [by_id[i] for i in sorted(by_id)])
    second = _build(store, catalog)
    progress_before = (store / "progress.json").read_bytes()
    third = _build(store, catalog)
    return {
        "store": store,
        "catalog": catalog,
        "folder": folder,
        "runs": (first, second, third),
        "progress_before_third": progress_before,
    }


def test_the_first_build_starts_following_and_the_next_applies_each_change(synced: dict) -> None:
    first, second, _ = synced["runs"]
    assert first["sync"]["followed"] and first["sync"]["started_following"]
    assert second["sync"] | {"pages": 0} == {
        "followed": True,
        "started_following": False,
        "pages": 0,
        "rows_read": 5,  # 0, 3, 5, 7 and 21 changed at T1
        "reembedded": 2,  # 0 (below the cursor, new) and 5; 21 is the append pass's
        "soft_deleted": 1,
        "hard_deleted": 1,
        "failed": 1,
        "reconciled": True,  # a local file's ids are compared at every build
    }
    store = LocalStore(synced["store"])
    for kind in ("color", "structure"):
        index = load_index(store, kind)
        live = sorted(index.ids)  # type: ignore[type-var]
        assert live == [0, 1, 2, 4, 5, 6, 8, *range(10, 22)], kind
        assert len(set(index.ids)) == len(index.ids)
    kp = read_progress(store).kinds["color"]  # type: ignore[union-attr]
    assert kp.dead == 4  # 5's old photo, 3 (failed), 7 (soft), 9 (hard)
    report = check_store(store)
    assert report.ok, report.to_markdown()


def test_a_sync_with_no_changes_writes_nothing(synced: dict) -> None:
    third = synced["runs"][2]
    assert third["sync"]["rows_read"] == 0 and third["products"] == 0
    assert (synced["store"] / "progress.json").read_bytes() == synced["progress_before_third"]


def test_search_finds_the_replacement_photo_and_not_the_old_or_the_deleted(synced: dict) -> None:
    store, folder = str(synced["store"]), synced["folder"]
    code, out, err = _run("search", "--store", store, "--image", str(folder / "images" / "new-5.jpg"),
                          "--kind", "color", "-k", "3", "--json")  # fmt: skip
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["id"] == 5 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    code, out, err = _run("search", "--store", store, "--image", str(folder / "images" / "00005.jpg"),
                          "--kind", "color", "-k", "25", "--json")  # fmt: skip
    hits = json.loads(out)["hits"]
    assert len(hits) == 19  # every live product, once (k above the live count)
    assert all(h["score"] < 0.9999 for h in hits if h["id"] == 5), "the old photo is still live"
    assert not {3, 7, 9} & {h["id"] for h in hits}
    for gone in ("7", "9", "3"):
        code, _, err = _run("search", "--store", store, "--id", gone, "--kind", "color")
        assert code == EXIT_CONFIG and "is not in the color index" in err


def test_status_reports_live_and_dead_and_the_full_id_map_has_nulls(synced: dict) -> None:
    code, out, _ = _run("status", "--store", str(synced["store"]), "--json")
    color = json.loads(out)["kinds"]["color"]
    assert code == 0 and (color["live"], color["dead"]) == (19, 4)
    assert color["vectors"] == 23  # slots: 20, then 0 and 5's new photo, then 21
    full = json.loads((synced["store"] / "id_map_color.json").read_text())
    assert full.count(None) == 4 and len(full) == 23
