"""Index load and search: 1M vectors in 1,000 shards from a local store vs raw reads and one flat index.

    python -m bench.index_load [--vectors N] [--dim D]

The store is written through the library's IndexWriter (so the format is the real one) into a
LocalStore in a temp folder. Then, in the same process and interleaved round by round,
`sharding.loader.load_index` (read, checksum every object, gather into one array, parse the id
maps) is timed against reading the same files' bytes into one new buffer that keeps them, with
the same number of threads: the least any load must do. Both read from the page cache (files
just written). Also reported: reading each file and dropping it (the buffer is reused from the
CPU cache, so this is a floor for reading, not for loading), and a load from a trusted local
cache (`trust_cache=True`). Search: 100 random queries, top-10, over the loaded index vs one
IndexFlatIP built directly from the same vectors (same BLAS threshold for both); identical ids
are asserted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench._common import emit, timer
from sharding import BuildConfig, EmbeddedBatch, IndexWriter
from sharding.codec import ProductId
from sharding.loader import load_index
from sharding.local_store import LocalStore

SHARD = 1000
BATCH = 10_000
QUERIES = 100
K = 10
LOAD_GOAL, SEARCH_GOAL = 1.5, 1.1
WORKERS = 8  # load_index's default


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build_store(root: Path, vectors: int, dim: int) -> np.ndarray:
    """Write `vectors` unit vectors in shards of 1,000 through the writer; return them all."""
    config = BuildConfig("bench", "random-unit-vectors", {"color": dim}, shard_max_vectors=SHARD)
    writer = IndexWriter.open(LocalStore(root), config, run_id="bench-index-load")
    everything = np.empty((vectors, dim), dtype=np.float32)
    rng = np.random.default_rng(0)
    for start in range(0, vectors, BATCH):
        block = unit_rows(rng, min(BATCH, vectors - start), dim)
        everything[start : start + len(block)] = block
        ids: list[ProductId] = list(range(start + 1, start + len(block) + 1))
        writer.add_batch(EmbeddedBatch(ids, ["b"] * len(ids), {"color": block}, last_id=ids[-1]))
        writer.commit()
    writer.finish()
    return everything


def _kind_files(root: Path) -> list[Path]:
    """Every object a load of the kind reads: shard indexes and shard id maps."""
    prefixes = ("clip_color_", "id_map_color_shard")
    return sorted(p for p in root.iterdir() if p.name.startswith(prefixes))


def read_into_memory_seconds(root: Path, workers: int) -> tuple[float, int]:
    """Read the same files' bytes into one new buffer that holds them all, `workers` threads.

    The least any load must do: the bytes end up in memory, as the loaded vectors do.
    """
    files = _kind_files(root)
    sizes = [p.stat().st_size for p in files]
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    with timer() as t:
        buffer = np.empty(sum(sizes), dtype=np.uint8).data

        def read(path: Path, offset: int, size: int) -> None:
            with open(path, "rb", buffering=0) as handle:
                handle.readinto(buffer[offset : offset + size])

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(read, files, offsets, sizes))
    return t[0], sum(sizes)


def read_and_drop_seconds(root: Path) -> float:
    """Read the same files one by one and drop each: the buffer is reused while still in the
    CPU cache, so this is a floor no load that keeps 2 GB in memory can reach."""
    files = _kind_files(root)
    with timer() as t:
        sum(len(p.read_bytes()) for p in files)
    return t[0]


def trusted_cache_load_seconds(root: Path, cache: Path) -> float:
    """A load from a local cache filled (and verified) by an earlier load, not re-hashed."""
    try:
        load_index(LocalStore(root), "color", cache_dir=cache)
        best = float("inf")
        for _ in range(2):
            with timer() as t:
                load_index(LocalStore(root), "color", cache_dir=cache, trust_cache=True)
            best = min(best, t[0])
        return best
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def search_seconds(search: Any, queries: np.ndarray, repeats: int = 3) -> float:
    """Best of `repeats` (the first call also warms the BLAS threads)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        search(queries)
        best = min(best, time.perf_counter() - started)
    return best


def measure(vectors: int, dim: int, rounds: int = 5) -> dict[str, Any]:
    """Best of `rounds` interleaved runs of each read and of the load (one run of each per round).

    Best-of, because on this VM the first touch of memory it never used before costs 0.2-3 s per
    2 GB at random (measured), whichever of the three happens to get it.
    """
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        with timer() as build_t:
            everything = build_store(root, vectors, dim)
        raw_runs, load_runs, drop_runs = [], [], []
        loaded: Any = None
        for _ in range(rounds):
            raw_s, raw_bytes = read_into_memory_seconds(root, WORKERS)
            raw_runs.append(raw_s)
            loaded = None  # free the previous result first, as the raw read frees its buffer
            with timer() as t:
                loaded = load_index(LocalStore(root), "color", workers=WORKERS)
            load_runs.append(t[0])
            drop_runs.append(read_and_drop_seconds(root))
        cached_s = trusted_cache_load_seconds(root, root.with_name(root.name + "-cache"))
    reference = faiss.IndexFlatIP(dim)
    reference.add(everything)
    del everything
    queries = unit_rows(np.random.default_rng(1), QUERIES, dim)
    hits = loaded.search(queries, K)
    faiss.cvar.distance_compute_blas_threshold = 20  # what the loader uses (sharding/loader.py)
    _, positions = reference.search(queries, K)
    same = all(
        [h.id for h in row] == [int(p) + 1 for p in ref]
        for row, ref in zip(hits, positions, strict=True)
    )
    if not same:
        raise AssertionError("sharded and merged search disagree")
    sharded_s = search_seconds(lambda q: loaded.search(q, K), queries)
    merged_s = search_seconds(lambda q: reference.search(q, K), queries)
    raw_best, load_best, drop_best = min(raw_runs), min(load_runs), min(drop_runs)
    return {
        "bench": "index_load",
        "vectors": vectors,
        "dim": dim,
        "shards": vectors // SHARD,
        "bytes": raw_bytes,
        "workers": WORKERS,
        "build_s": round(build_t[0], 2),
        "load_s": round(load_best, 3),
        "raw_read_s": round(raw_best, 3),
        "load_ratio": round(load_best / raw_best, 3),
        "load_runs_s": [round(x, 3) for x in load_runs],
        "raw_read_runs_s": [round(x, 3) for x in raw_runs],
        "read_and_drop_s": round(drop_best, 3),
        "load_over_read_and_drop": round(load_best / drop_best, 3),
        "trusted_cache_load_s": round(cached_s, 3),
        "trusted_cache_load_ratio": round(cached_s / raw_best, 3),
        "load_goal": LOAD_GOAL,
        "queries": QUERIES,
        "k": K,
        "search_sharded_ms": round(1000 * sharded_s, 2),
        "search_merged_ms": round(1000 * merged_s, 2),
        "search_ratio": round(sharded_s / merged_s, 3),
        "search_goal": SEARCH_GOAL,
        "same_results": same,
        "note": "raw read = the same files read into one new buffer that keeps them, with the "
        "loader's thread count; the load verifies the XXH3-128 checksum of every object; "
        "read_and_drop reads each file into a buffer reused from the CPU cache (a floor for "
        "reading, not for loading); all from the page cache, files just written",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args(argv)
    r = measure(args.vectors, args.dim)
    emit(
        r,
        f"load {r['vectors']:,} x {r['dim']}-d in {r['shards']:,} shards: {r['load_s']:.2f} s vs "
        f"reading the same bytes into memory {r['raw_read_s']:.2f} s ({r['load_ratio']:.2f}x; "
        f"{r['load_over_read_and_drop']:.2f}x a read-and-drop {r['read_and_drop_s']:.2f} s; "
        f"trusted cache {r['trusted_cache_load_ratio']:.2f}x); search {QUERIES} queries top-{K}: "
        f"{r['search_sharded_ms']:.1f} ms sharded vs {r['search_merged_ms']:.1f} ms one flat index "
        f"({r['search_ratio']:.2f}x), same results",
    )


if __name__ == "__main__":
    main()
