"""The Supabase catalog's change feed against real PostgreSQL + PostgREST: rows changed since a
watermark in (updated_at, id) keyset order, soft deletes, inserts below the cursor, the ids-only
reconciliation pass, and the migration's index."""

from __future__ import annotations

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
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore
from tests.support.postgrest_stack import SupabaseStack

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
