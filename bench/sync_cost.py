"""What a nightly catalog sync costs (issue 14): no changes at 10k vs 1M products; 1% changed +
0.1% deleted vs appending as many new products; load and search with 10% dead slots.

    python -m bench.sync_cost [--quick] [--sizes 10000,1000000] [--dim 64]

Prints one JSON object (bench/_common.emit) with the three ratios of issue 14's goals, measured
side by side in this run: `no_change_ratio` (the largest of catalog requests, rows read, bytes
read and bytes written at the large size over the small one; 0/0 counts as 1), `changes_ratio`
(bytes written by the sync of 1% changed + 0.1% deleted over appending as many new products;
`changes_seconds_ratio` beside it) and `dead_search_ratio` (search with 10% dead slots over the
same live set compacted).

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
from bench._common import emit
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


def _ratio(large: float, small: float) -> float:
    if small == 0:
        return 1.0 if large == 0 else float("inf")
    return large / small


NO_CHANGE_COSTS = ("catalog_requests", "catalog_rows", "bytes_read", "bytes_written")


def report(sizes: Sequence[int], dim: int, only: str | None = None) -> dict[str, Any]:
    """Every measure at these sizes (the last one for changes and dead slots), with the ratios."""
    small, large = sizes[0], sizes[-1]
    out: dict[str, Any] = {"bench": "sync_cost", "sizes": [small, large], "dim": dim}
    if only in (None, "no-change"):
        costs = {n: no_change(n, dim) for n in (small, large)}
        out["no_change"] = {str(n): cost for n, cost in costs.items()}
        out["no_change_ratio"] = round(
            max(_ratio(costs[large][k], costs[small][k]) for k in NO_CHANGE_COSTS), 3
        )
        out["no_change_shards_written"] = max(c["shard_files_written"] for c in costs.values())
    if only in (None, "changes"):
        changes = changes_vs_append(large, dim)
        out["changes"] = changes
        sync, append = changes["sync"], changes["append"]
        out["changes_ratio"] = round(_ratio(sync["bytes_written"], append["bytes_written"]), 3)
        out["changes_seconds_ratio"] = round(_ratio(sync["seconds"], append["seconds"]), 3)
    if only in (None, "dead"):
        dead = dead_search(large, dim)
        out["dead"] = dead
        out["dead_search_ratio"] = round(
            _ratio(
                dead["search_s_100_queries_dead_median"],
                dead["search_s_100_queries_compacted_median"],
            ),
            3,
        )
    goals = [
        out.get("no_change_ratio", 0) <= 1.2 and not out.get("no_change_shards_written"),
        out.get("changes_ratio", 0) <= 1.3,
        out.get("dead_search_ratio", 0) <= 1.2,
    ]
    out["goal_met"] = all(goals)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 vs 20,000 products, 8-d")
    parser.add_argument("--sizes", default=None, help="small,large (default 10000,1000000)")
    parser.add_argument("--dim", type=int, default=None, help="vector dimension (default 64)")
    parser.add_argument("--only", choices=["no-change", "changes", "dead"], default=None)
    args = parser.parse_args(argv)
    sizes_text = args.sizes or ("2000,20000" if args.quick else "10000,1000000")
    sizes = [int(s) for s in sizes_text.split(",")]
    dim = args.dim or (8 if args.quick else 64)
    out = report(sizes, dim, args.only)
    parts = []
    if "no_change_ratio" in out:
        parts.append(f"no-change {sizes[-1]:,} vs {sizes[0]:,}: {out['no_change_ratio']}x")
    if "changes_ratio" in out:
        parts.append(
            f"1% changed + 0.1% deleted vs append: bytes {out['changes_ratio']}x, "
            f"seconds {out['changes_seconds_ratio']}x"
        )
    if "dead_search_ratio" in out:
        parts.append(f"search 10% dead vs compacted: {out['dead_search_ratio']}x")
    emit(out, "sync_cost: " + "; ".join(parts))


if __name__ == "__main__":
    main()
