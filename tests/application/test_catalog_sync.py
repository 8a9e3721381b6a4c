"""A nightly build follows a local catalog: replaced, soft- and hard-deleted, inserted-below-cursor
rows (real photos, the histogram embedder, real FAISS, the build flow under Prefect)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
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
        "already_applied": 0,  # T1 is long past: no overlap window is left to re-read
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
    # The old photo finds the variants of the same original (0 shows 12's photo, 12, 19), not 5.
    assert 5 not in [h["id"] for h in hits[:3]] and hits[0]["score"] > 0.99
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


def test_soft_deleted_rows_below_the_cursor_are_not_counted_as_unreachable(synced: dict) -> None:
    second = synced["runs"][1]
    # 0..21 without 9 is 21 rows at or below the cursor: 19 live, 3 failed, 7 soft-deleted.
    assert second["unindexed_below_cursor"] == {"color": 0, "structure": 0}
    assert not [w for w in second["warnings"] if "below the cursor" in w]
    code, out, _ = _run(
        "status", "--store", str(synced["store"]), "--catalog", str(synced["catalog"]), "--json"
    )
    assert code == 0 and json.loads(out)["unindexed_below_cursor"] == {"color": 0, "structure": 0}


def _failed(store: Path) -> dict[object, dict]:
    code, out, err = _run("status", "--store", str(store), "--failed", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["failed_count"] == len(status["failures"])
    return {f["id"]: f for f in status["failures"]}


T2, T3 = "2026-12-01T12:00:00Z", "2026-12-01T13:00:00Z"


@pytest.fixture(scope="module")
def healed(synced: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """After `synced`: 3 gets a photo that loads, 7 comes back, 22 is added with a broken
    photo (the append pass records it); then 22's photo is fixed."""
    folder = tmp_path_factory.mktemp("healed")
    shutil.copytree(synced["folder"], folder, dirs_exist_ok=True)
    store, catalog = folder / "store", folder / "catalog.csv"
    failed_before = _failed(store)
    for name, (r, g) in {"fixed-3.jpg": (230, 40), "fixed-22.jpg": (20, 200)}.items():
        x, y = np.meshgrid(np.arange(96), np.arange(96))  # a photo no other product looks like
        pixels = np.stack([np.full_like(x, r), g * (x + y) // 190, 255 - x], -1).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / "images" / name, "JPEG", quality=90)
    with catalog.open(newline="", encoding="utf-8") as handle:
        by_id = {int(row["id"]): row for row in csv.DictReader(handle)}
    by_id[3] |= {"image_url": "images/fixed-3.jpg", "updated_at": T2}
    by_id[7] |= {"deleted_at": "", "updated_at": T2}
    by_id[22] = {"id": 22, "image_url": "images/broken.jpg", "brand": "New", "updated_at": T2}
    _write(catalog, [by_id[i] for i in sorted(by_id)])
    first = _build(store, catalog)
    failed_between = _failed(store)
    by_id[22] |= {"image_url": "images/fixed-22.jpg", "updated_at": T3}
    _write(catalog, [by_id[i] for i in sorted(by_id)])
    second = _build(store, catalog)
    return {
        "store": store,
        "folder": folder,
        "failed": (failed_before, failed_between, _failed(store)),
        "runs": (first, second),
    }


def test_a_changed_product_whose_new_photo_fails_has_no_live_vector_and_its_reason(
    synced: dict,
) -> None:
    failed = _failed(synced["store"])
    assert list(failed) == [3]
    assert failed[3]["reason"] == "not_an_image" and failed[3]["kinds"] == ["color", "structure"]
    assert "not a supported image format" in failed[3]["message"]
    for kind in ("color", "structure"):
        assert 3 not in load_index(LocalStore(synced["store"]), kind).ids, kind


def test_a_failed_product_that_later_embeds_is_no_longer_listed_as_failed(healed: dict) -> None:
    before, between, after = healed["failed"]
    assert list(before) == [3]
    assert list(between) == [22]  # 3 re-embedded by the sync: its stale record is gone
    assert after == {}  # 22 failed in the append pass, then its fixed row embedded in a sync
    first, second = healed["runs"]
    assert (first["sync"]["reembedded"], first["sync"]["failed"], first["failed"]) == (2, 0, 1)
    assert (second["sync"]["reembedded"], second["sync"]["failed"]) == (1, 0)
    assert second["unindexed_below_cursor"] == {"color": 0, "structure": 0}
    store = LocalStore(healed["store"])
    for kind in ("color", "structure"):
        ids = load_index(store, kind).ids
        assert sorted(ids) == [0, 1, 2, 3, 4, 5, 6, 7, 8, *range(10, 23)], kind  # type: ignore[type-var]
    report = check_store(store)
    assert report.ok and report.failures == 0, report.to_markdown()
    for photo, product in (("fixed-3.jpg", 3), ("fixed-22.jpg", 22)):
        code, out, err = _run("search", "--store", str(healed["store"]), "--image",
                              str(healed["folder"] / "images" / photo), "--kind", "color",
                              "-k", "1", "--json")  # fmt: skip
        assert code == 0, err
        hit = json.loads(out)["hits"][0]
        assert hit["id"] == product and hit["score"] == pytest.approx(1.0, abs=1e-4)
