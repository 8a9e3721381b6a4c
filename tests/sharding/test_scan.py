"""Shard-by-shard search: the same answers as the loaded index, one shard in memory at a time."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from sharding import BuildConfig, load_index
from sharding.local_store import LocalStore
from sharding.scan import kind_ids, scan_search
from sharding.state import require_progress
from tests.sharding.builds import Catalog, run_build


def test_scan_search_equals_the_loaded_index(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=95))  # 10-vector shards, the last one open
    progress = require_progress(store)
    for kind in ("color", "combined"):
        index = load_index(store, kind)
        assert kind_ids(store, progress, kind) == index.ids
        queries = index.vectors[[0, 7, 33, -1]] + 0.01
        expected = index.search(queries, 5)
        got = scan_search(store, progress, kind, queries, 5)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in expected]
        assert np.allclose(
            [[h.score for h in row] for row in got], [[h.score for h in row] for row in expected]
        )


def test_scan_search_holds_one_shard_not_the_kind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    config = BuildConfig("histogram", "hist-v1", {"color": 256}, shard_max_vectors=100)
    run_build(store, config, Catalog(n=2000, fail_every=10**9), batch_size=100)
    progress = require_progress(store)
    kind_bytes = progress.kinds["color"].total_vectors * 256 * 4  # ~2 MB
    queries = np.ones((4, 256), np.float32) / 16
    tracemalloc.start()
    scan_search(store, progress, "color", queries, 5)
    _, scan_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    load_index(store, "color").search(queries, 5)
    _, load_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert load_peak > kind_bytes  # the loaded index holds every vector
    assert scan_peak < kind_bytes / 5  # the scan holds about one shard (1/20 of the kind)
