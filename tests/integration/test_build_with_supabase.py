"""build-index with the PostgREST catalog and Supabase Storage gives the same store as local files."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from application.connect import open_storage
from application.settings import load_settings
from flows.build_index import build_index
from sharding.checks import check_store
from sharding.loader import load_index
from sharding.local_store import LocalStore
from sharding.storage import Storage
from tests.support.image_server import PHOTO_NAMES, ImageServer
from tests.support.postgrest_stack import SupabaseStack
from tests.support.supabase_storage_server import SupabaseStorageServer

KINDS = ["color", "structure", "combined"]
BRANDS = ["Acme", "Borealis", None]
PRODUCTS = 27


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture
def rows(supabase_stack: SupabaseStack, images: ImageServer) -> list[tuple[int, str, str | None]]:
    """The same products in product_images and in a CSV: photo URLs on the local image server."""
    products = [
        (i, images.url(f"/photos/{PHOTO_NAMES[i % len(PHOTO_NAMES)]}.{'jpg' if i % 2 else 'png'}"),
         BRANDS[i % len(BRANDS)])
        for i in range(1, PRODUCTS + 1)
    ]  # fmt: skip
    values = ",".join(
        f"({i}, '{url}', {'null' if brand is None else repr(brand)})" for i, url, brand in products
    )
    supabase_stack.sql(
        "truncate product_images restart identity;"
        f"insert into product_images (id, image_url, brand) values {values};"
        "select setval(pg_get_serial_sequence('product_images', 'id'), "
        "(select max(id) from product_images));"
    )
    return products


@pytest.fixture
def storage_server(supabase_stack: SupabaseStack) -> Iterator[SupabaseStorageServer]:
    """The Storage test server behind the stack's gateway, so one SUPABASE_URL serves both APIs."""
    with SupabaseStorageServer(key=supabase_stack.service_key, buckets=("faiss",)) as server:
        supabase_stack.gateway.mount("/storage/v1", server.url + "/storage/v1")
        yield server
        supabase_stack.gateway.routes.pop("/storage/v1", None)


def _contents(storage: Storage) -> dict[str, tuple[list, np.ndarray]]:
    out = {}
    for kind in KINDS:
        index = load_index(storage, kind)
        out[kind] = (list(index.ids), np.vstack([index.vector(i) for i in index.ids]))
    return out


def test_supabase_catalog_and_storage_build_the_same_store_as_local_files(
    prefect_api: object,
    supabase_stack: SupabaseStack,
    storage_server: SupabaseStorageServer,
    rows: list[tuple[int, str, str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = tmp_path / "catalog.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image_url", "brand"])
        writer.writerows([(i, url, brand or "") for i, url, brand in rows])
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_KEY", supabase_stack.service_key)
    monkeypatch.setenv("SUPABASE_BUCKET", "faiss")
    monkeypatch.setenv("FAISS_BUILDER_SHARD_MAX_VECTORS", "10")
    common = {"embedder": "histogram", "batch_size": 8, "allow_private_urls": True}

    remote = build_index(catalog="supabase", store="supabase", **common)
    local = build_index(catalog=str(catalog), store=str(tmp_path / "store"), **common)

    assert remote["products"] == local["products"] == PRODUCTS
    assert remote["failed"] == local["failed"] == 0
    supabase_store = open_storage(load_settings(store="supabase"))
    assert check_store(supabase_store, KINDS).ok
    assert any(
        name.startswith("faiss/faiss/clip_color_shard_00003") for name in storage_server.objects
    )
    expected, got = _contents(LocalStore(tmp_path / "store")), _contents(supabase_store)
    for kind in KINDS:
        assert got[kind][0] == expected[kind][0] == list(range(1, PRODUCTS + 1))
        np.testing.assert_allclose(got[kind][1], expected[kind][1], atol=1e-6)


def test_products_added_after_a_run_are_picked_up_by_the_next_run(
    prefect_api: object,
    supabase_stack: SupabaseStack,
    rows: list[tuple[int, str, str | None]],
    images: ImageServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_KEY", supabase_stack.service_key)
    store = str(tmp_path / "store")
    common = {"embedder": "histogram", "batch_size": 10, "allow_private_urls": True}
    first = build_index(catalog="supabase", store=store, kinds=["color"], **common)
    url = images.url("/photos/coffee.jpg")
    supabase_stack.sql(f"insert into product_images (image_url, brand) values ('{url}', 'Late')")
    second = build_index(catalog="supabase", store=store, kinds=["color"], **common)
    assert (first["products"], second["products"]) == (PRODUCTS, 1)
    assert load_index(LocalStore(tmp_path / "store"), "color").ids == list(range(1, PRODUCTS + 2))


def test_rows_deleted_from_the_table_stop_being_live_with_reconcile(
    prefect_api: object,
    supabase_stack: SupabaseStack,
    rows: list[tuple[int, str, str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_KEY", supabase_stack.service_key)
    store = str(tmp_path / "store")
    common = {"embedder": "histogram", "batch_size": 10, "allow_private_urls": True}
    build_index(catalog="supabase", store=store, kinds=["color"], **common)
    supabase_stack.sql("delete from product_images where id in (3, 4)")
    plain = build_index(catalog="supabase", store=store, kinds=["color"], **common)
    assert 3 in load_index(LocalStore(tmp_path / "store"), "color").ids  # a table: only when asked
    reconciled = build_index(
        catalog="supabase", store=store, kinds=["color"], reconcile=True, **common
    )
    ids = load_index(LocalStore(tmp_path / "store"), "color").ids
    assert not plain["sync"]["reconciled"] and reconciled["sync"]["reconciled"]
    assert sorted(ids) == [i for i in range(1, PRODUCTS + 1) if i not in (3, 4)]


def test_the_stack_hands_out_one_service_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Storage test server is given the key once and compares it literally: a key made
    again a second later (a new `iat`) would be refused with "Invalid Compact JWS"."""
    import time

    stack = SupabaseStack(gateway=None, db_url="", postgrest_url="", jwt_secret="s" * 32)  # type: ignore[arg-type]
    first, anon = stack.service_key, stack.anon_key
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)
    assert stack.service_key == first and stack.anon_key == anon and first != anon
