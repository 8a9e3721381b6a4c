"""The Supabase catalog's change feed against real PostgreSQL + PostgREST: rows changed since a
watermark in (updated_at, id) keyset order, soft deletes, inserts below the cursor, the ids-only
reconciliation pass, and the migration's index."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from application.catalog.base import ChangeFeed, Product, ProductId, canonical_time
from application.catalog.supabase import SupabaseCatalog
from application.sync import sync_catalog
from modal_workers.types import EmbedOutput
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore, load_index
from tests.support.postgrest_stack import SupabaseStack, find_pg_bin_dir

T0 = "2026-11-30T02:00:00Z"
ROWS = 20_000


@pytest.fixture(scope="module")
def table(supabase_stack: SupabaseStack) -> Iterator[str]:
    """product_images_sync: product_images as the migrations make it (columns, defaults, the
    (updated_at, id) index, the updated_at trigger), 20,000 rows last changed at T0."""
    supabase_stack.sql(
        "drop table if exists product_images_sync;"
        "create table product_images_sync (like public.product_images including all);"
        "create trigger product_images_sync_set_updated_at before update on product_images_sync"
        " for each row execute function public.product_images_set_updated_at();"
        "insert into product_images_sync (id, image_url, brand, updated_at)"
        f" select g, 'https://img.test/' || g, 'b', '{T0}' from generate_series(1, {ROWS}) g;"
        "analyze product_images_sync"
    )
    supabase_stack.reload_schema("product_images_sync")
    yield "product_images_sync"
    supabase_stack.sql("drop table if exists product_images_sync")


def _read_all(catalog: SupabaseCatalog, since: str, after: ProductId, limit: int) -> list[Product]:
    """Page after page from a position, the way the sync pass reads."""
    found: list[Product] = []
    while page := catalog.changed_since(since, after, limit):
        found += page
        since, after = page[-1].updated_at or since, page[-1].id
    return found


def test_changes_since_a_watermark_in_keyset_order_with_soft_deletes_and_low_inserts(
    supabase_stack: SupabaseStack, table: str
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table=table, page_size=1000)
    assert isinstance(catalog, ChangeFeed)
    assert catalog.latest_change() == (canonical_time(T0), ROWS)
    # One transaction (psql sends the statements as one): the trigger gives every row the same
    # updated_at (now()), so pages smaller than that must walk the (updated_at = W, id > A)
    # part of the keyset.
    supabase_stack.sql(
        f"update {table} set image_url = 'https://img.test/new-3' where id = 3;"
        f"update {table} set deleted_at = now() where id = 5;"
        f"insert into {table} (id, image_url, brand) values (0, 'https://img.test/0', 'late');"
        f"update {table} set image_url = 'https://img.test/new-17' where id = 17;"
    )
    for limit in (1, 2, 1000):
        changed = _read_all(catalog, canonical_time(T0), ROWS, limit)
        assert [p.id for p in changed] == [0, 3, 5, 17], limit
        assert [p.deleted for p in changed] == [False, False, True, False]
        assert changed[1].image_url == "https://img.test/new-3"
        stamps = [p.updated_at for p in changed]
        assert len(set(stamps)) == 1 and stamps[0] > canonical_time(T0)  # type: ignore[operator]
    latest = catalog.latest_change()
    assert latest is not None and latest[1] == 17
    assert catalog.changed_since(*latest, 100) == []  # nothing changed after the last one
    # Pages carry the soft delete too: the append pass must not index row 5 either.
    assert [(p.id, p.deleted) for p in catalog.page(4, 2)] == [(5, True), (6, False)]
    ids = list(catalog.all_ids())
    assert len(ids) == ROWS and ids[0] == 0 and 5 not in ids  # soft-deleted: not live
    # Rows at or below a cursor of ROWS: 0..ROWS is ROWS + 1, less the soft-deleted 5 (not
    # pending, so never reported as unreachable).
    assert catalog.count_at_or_below(ROWS) == ROWS


def test_the_migration_makes_changed_since_an_index_range_scan(
    supabase_stack: SupabaseStack, table: str
) -> None:
    plan = supabase_stack.sql(
        f"explain select id from {table} where updated_at > '{T0}' order by updated_at, id"
        " limit 1000"
    )
    assert "product_images_sync_updated_at_id" in plan or "updated_at_id" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_a_table_without_change_columns_reports_no_changes(
    supabase_stack: SupabaseStack,
) -> None:
    supabase_stack.sql(
        "drop table if exists product_images_plain;"
        "create table product_images_plain (id bigint primary key, image_url text not null,"
        " brand text); insert into product_images_plain values (1, 'https://img.test/1', null)"
    )
    supabase_stack.reload_schema("product_images_plain")
    catalog = SupabaseCatalog(supabase_stack.client(), table="product_images_plain")
    assert catalog.latest_change() is None and catalog.changed_since(None, None, 10) == []
    assert [p.id for p in catalog.page(None, 10)] == [1]
    supabase_stack.sql("drop table product_images_plain")


def test_reconcile_finds_hard_deletes_by_an_ids_only_keyset_pass(
    supabase_stack: SupabaseStack, table: str, tmp_path: Path
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table=table)
    writer = IndexWriter.open(
        LocalStore(tmp_path), BuildConfig("t", "t", {"color": 4}), run_id="build"
    )
    after: ProductId | None = None
    while page := catalog.page(after, 5000):
        ids = [p.id for p in page if not p.deleted]  # as the build does: 5 is soft-deleted
        vectors = np.tile(np.array([1, 0, 0, 0], np.float32), (len(ids), 1))
        writer.add_batch(
            EmbeddedBatch(ids, [None] * len(ids), {"color": vectors}, last_id=page[-1].id)
        )
        writer.commit()
        after = page[-1].id
    supabase_stack.sql(f"delete from {table} where id in (10, 11, 12)")
    session = SimpleNamespace(catalog=catalog, writer=writer, kinds=["color"], embed=None)
    plain = sync_catalog(cast(Any, session), 1000)
    assert not plain.reconciled and plain.hard_deleted == 0  # a table is compared only when asked
    started = time.perf_counter()
    stats = sync_catalog(cast(Any, session), 1000, reconcile=True)
    seconds = time.perf_counter() - started
    assert stats.reconciled and stats.hard_deleted == 3
    assert not {10, 11, 12} & writer.live_ids("color") and 13 in writer.live_ids("color")
    print(f"reconcile: {len(writer.live_ids('color'))} live ids compared in {seconds:.2f} s")


def _vector(product: Product) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(product.image_url.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(4).astype(np.float32)
    return v / np.linalg.norm(v)


def test_a_transaction_that_commits_after_a_sync_read_is_applied_once_by_the_next(
    supabase_stack: SupabaseStack, tmp_path: Path
) -> None:
    """Row 42's update starts first (the trigger stamps updated_at with its start) and commits
    after a sync read row 43's later change: a keyset after the position misses it, the overlap
    window finds it, and rows already applied are not embedded again."""
    table = "product_images_late"
    supabase_stack.sql(
        f"drop table if exists {table};"
        f"create table {table} (like public.product_images including all);"
        f"create trigger {table}_set_updated_at before update on {table}"
        " for each row execute function public.product_images_set_updated_at();"
        f"insert into {table} (id, image_url, brand, updated_at)"
        f" select g, 'https://img.test/' || g, 'b', '{T0}' from generate_series(1, 100) g"
    )
    supabase_stack.reload_schema(table)
    catalog = SupabaseCatalog(supabase_stack.client(), table=table)
    store, config = LocalStore(tmp_path), BuildConfig("t", "t", {"color": 4})
    embedded: list[ProductId] = []

    def embed(products: list[Product]) -> EmbedOutput:
        embedded.extend(p.id for p in products)
        vectors = np.stack([_vector(p) for p in products]) if products else np.zeros((0, 4))
        return EmbedOutput(ids=[p.id for p in products], vectors={"color": vectors}, failures=[])

    def sync() -> dict[str, Any]:
        writer = IndexWriter.open(store, config, run_id="sync")
        session = SimpleNamespace(catalog=catalog, writer=writer, kinds=["color"], embed=embed)
        embedded.clear()
        stats = sync_catalog(cast(Any, session), 1000, overlap_s=300).to_dict()
        writer.finish()
        return stats | {"embedded": sorted(embedded)}  # type: ignore[type-var]

    writer = IndexWriter.open(store, config, run_id="build")
    page = catalog.page(None, 1000)
    writer.add_batch(
        EmbeddedBatch([p.id for p in page], ["b"] * 100, embed(page).vectors, last_id=100)
    )
    writer.finish()
    assert sync()["started_following"]
    psql = str(find_pg_bin_dir() / "psql")
    late = subprocess.Popen(
        [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", supabase_stack.db_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert late.stdin is not None and late.stdout is not None
    try:
        late.stdin.write(
            f"begin; update {table} set image_url = 'https://img.test/late-42' where id = 42;"
            " select 'ready';\n"
        )
        late.stdin.flush()
        assert late.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        supabase_stack.sql(
            f"update {table} set image_url = 'https://img.test/new-43' where id = 43"
        )
        first = sync()
        assert first["embedded"] == [43]
        late.stdin.write("commit;\n")
        late.stdin.close()
        assert late.wait(timeout=10) == 0
    finally:
        if late.poll() is None:
            late.kill()
    position = IndexWriter.open(store, config, run_id="look").sync_position
    assert position is not None and position.id == 43
    assert catalog.changed_since(position.updated_at, 43, 100) == []  # the plain keyset's miss
    second = sync()
    assert second["embedded"] == [42] and second["already_applied"] == 1
    third = sync()
    assert third["embedded"] == [] and third["already_applied"] == 2
    index = load_index(store, "color")
    assert sorted(index.ids) == list(range(1, 101))  # type: ignore[type-var]
    live = dict(zip(index.ids, np.asarray(index.vectors), strict=True))
    assert np.allclose(live[42], _vector(Product(42, "https://img.test/late-42")))
    assert np.allclose(live[43], _vector(Product(43, "https://img.test/new-43")))
    supabase_stack.sql(f"drop table {table}")
