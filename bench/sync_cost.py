"""What a nightly catalog sync costs (issue 14): no changes at 10k vs 1M products; 1% changed +
0.1% deleted vs appending as many new products; load and search with 10% dead slots.

    python -m bench.sync_cost [--sizes 10000,1000000] [--dim 64]

The store is in memory (sharding.MemoryStore), the catalog a change feed in memory (as the
Supabase catalog answers: changed_since pages, no ids-only pass), the embedder a stand-in that
returns random unit vectors, so the figures are the index's own work: catalog requests and rows
read, bytes read and written, sealed shards written, seconds.
"""

from __future__ import annotations

import argparse
import bisect
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from application.catalog.base import Product, ProductId
from application.sync import sync_catalog
from modal_workers.types import EmbedOutput
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore, load_index
from sharding.names import parse
from sharding.storage import CountingStorage

T0, T1 = "2026-11-30T02:00:00.000000Z", "2026-12-01T02:00:00.000000Z"
BATCH = 10_000


class Feed:
    """A catalog change feed in memory; counts requests and rows answered."""

    local_root = None

    def __init__(self, n: int) -> None:
        self.rows = {i: Product(i, f"img/{i}", "b", updated_at=T0) for i in range(1, n + 1)}
        self.requests = self.rows_read = 0
        self._order: list[tuple[str, int]] = sorted(
            (p.updated_at or "", i) for i, p in self.rows.items()
        )

    def change(self, ids: Sequence[int], *, delete: bool = False) -> None:
        for i in ids:
            self.rows[i] = Product(i, f"img/{i}-new", "b", updated_at=T1, deleted=delete)
        self._order = sorted((p.updated_at or "", i) for i, p in self.rows.items())

    def changed_since(
        self, updated_at: str | None, after: ProductId | None, limit: int
    ) -> list[Product]:
        self.requests += 1
        start = bisect.bisect_right(
            self._order, (updated_at or "", after if after is not None else -1)
        )
        page = [self.rows[i] for _, i in self._order[start : start + limit]]
        self.rows_read += len(page)
        return page

    def latest_change(self) -> tuple[str, ProductId] | None:
        return self._order[-1] if self._order else None


class CountingReads(CountingStorage):
    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.bytes_read = 0

    def get(self, name: str) -> bytes:
        data = self.inner.get(name)
        self.bytes_read += len(data)
        return data


def _vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _build(n: int, dim: int) -> tuple[MemoryStore, BuildConfig]:
    store, config = MemoryStore(), BuildConfig("bench", "bench-v1", {"color": dim})
    writer = IndexWriter.open(store, config, run_id="build")
    rng = np.random.default_rng(0)
    for start in range(1, n + 1, BATCH):
        ids = list(range(start, min(n, start + BATCH - 1) + 1))
        writer.add_batch(
            EmbeddedBatch(
                list[ProductId](ids), [None] * len(ids), {"color": _vectors(len(ids), dim, rng)}
            )
        )
        writer.commit()
    writer.finish()
    return store, config


def _session(storage: Any, config: BuildConfig, feed: Feed, dim: int) -> SimpleNamespace:
    writer = IndexWriter.open(storage, config, run_id="sync")
    rng = np.random.default_rng(1)

    def embed(products: list[Product]) -> EmbedOutput:
        ready = [p for p in products if not p.deleted]
        return EmbedOutput(
            ids=[p.id for p in ready],
            vectors={"color": _vectors(len(ready), dim, rng)},
            failures=[],
        )

    return SimpleNamespace(catalog=feed, writer=writer, kinds=["color"], embed=embed)


def _measure(storage: CountingReads, feed: Feed, work: Any) -> dict[str, Any]:
    storage.reset()
    storage.bytes_read, feed.requests, feed.rows_read = 0, 0, 0
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    shards = [name for name, _ in storage.written if (p := parse(name)) and p.role == "index"]
    return {
        "seconds": round(seconds, 3),
        "catalog_requests": feed.requests,
        "catalog_rows": feed.rows_read,
        "bytes_read": storage.bytes_read,
        "bytes_written": storage.bytes_written,
        "writes": storage.writes,
        "shard_files_written": len(shards),
    }


def no_change(n: int, dim: int) -> dict[str, Any]:
    store, config = _build(n, dim)
    feed = Feed(n)
    storage = CountingReads(store)
    session = _session(storage, config, feed, dim)
    sync_catalog(cast(Any, session), 1000)  # first sync: starts following
    session.writer.commit()
    session = _session(storage, config, feed, dim)  # the next night: nothing changed
    return _measure(storage, feed, lambda: sync_catalog(cast(Any, session), 1000))


def changes_vs_append(n: int, dim: int) -> dict[str, Any]:
    store, config = _build(n, dim)
    feed = Feed(n)
    storage = CountingReads(store)
    session = _session(storage, config, feed, dim)
    sync_catalog(cast(Any, session), 1000)
    session.writer.commit()
    changed, deleted = n // 100, n // 1000
    feed.change(range(1, changed * 2, 2))
    feed.change(range(2, deleted * 2 + 1, 2), delete=True)
    session = _session(storage, config, feed, dim)
    synced = _measure(storage, feed, lambda: sync_catalog(cast(Any, session), 1000))
    # Appending the same number of new products, 1,000 a commit (the sync's page size).
    writer, rng = session.writer, np.random.default_rng(2)

    def append() -> None:
        for start in range(n + 1, n + changed + 1, 1000):
            ids = list(range(start, min(n + changed, start + 999) + 1))
            writer.add_batch(
                EmbeddedBatch(
                    list[ProductId](ids), [None] * len(ids), {"color": _vectors(len(ids), dim, rng)}
                )
            )
            writer.commit()

    appended = _measure(storage, feed, append)
    return {"sync": synced, "append": appended, "changed": changed, "deleted": deleted}


def dead_search(n: int, dim: int, queries: int = 100) -> dict[str, Any]:
    store, config = _build(n, dim)
    started = time.perf_counter()
    load_index(store, "color")
    load_clean_s = time.perf_counter() - started
    writer = IndexWriter.open(store, config, run_id="kill")
    writer.delete(range(1, n + 1, 10))  # 10% dead
    writer.finish()
    started = time.perf_counter()
    index = load_index(store, "color")
    load_s = time.perf_counter() - started
    q = _vectors(queries, dim, np.random.default_rng(3))
    # The same live set in its own array, as a compaction would leave it.
    compacted = type(index)(
        index.kind, index.dim, np.array(index.vectors), list(index.ids), index.progress
    )
    index.search(q, 10), compacted.search(q, 10)  # warm up
    times: dict[str, list[float]] = {"dead": [], "compacted": []}
    for _ in range(7):  # interleaved, so a noisy neighbour slows both alike
        for name, target in (("dead", index), ("compacted", compacted)):
            started = time.perf_counter()
            target.search(q, 10)
            times[name].append(time.perf_counter() - started)
    dead_s, compact_s = (sorted(times[name])[3] for name in ("dead", "compacted"))
    return {
        "load_s_no_dead": round(load_clean_s, 3),
        "load_s_with_10pct_dead": round(load_s, 3),
        "search_s_100_queries_dead_median": round(dead_s, 4),
        "search_s_100_queries_compacted_median": round(compact_s, 4),
        "live": index.ntotal,
        "dead": index.dead_slots,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--only", choices=["no-change", "changes", "dead"], default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.only in (None, "no-change"):
        for n in sizes:
            print(f"no-change sync, {n:,} products, {args.dim}-d:", no_change(n, args.dim))
    n = sizes[-1]
    if args.only in (None, "changes"):
        print(f"1% changed + 0.1% deleted vs append, {n:,}:", changes_vs_append(n, args.dim))
    if args.only in (None, "dead"):
        print(f"10% dead slots, {n:,}:", dead_search(n, args.dim))


if __name__ == "__main__":
    main()
