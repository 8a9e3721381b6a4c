"""`make bench-scale`: the approximate index at 10M x 512-d, served within a memory budget.

    python -m bench.ann_scale [--vectors N] [--dim D] [--shard-vectors S] [--max-nlist L]
                              [--pq-m M] [--store DIR] [--keep]

The vectors are bench.ann's CLIP-like ones (the same generator: `--clusters` random unit
centres, a Gaussian of norm ~0.7 in a shared 64-d subspace, isotropic noise of norm ~0.1,
normalised), generated 10,000 at a time and added through the real IndexWriter into a local
store (`--shard-vectors` per shard, 10,000 by default: 20 MB objects): memory never holds more
than one batch. Then, each step timed:

1. build: `update_ann` trains the IVFPQ index (`--pq-m` x 8-bit PQ, `--max-nlist` lists), adds one list
   object per sealed shard and measures recall (the build's own figure);
2. serve: a fresh process loads the store as the service does (application.searcher.load_commit:
   sealed shards' vectors left on disk and read per candidate, PQ codes in memory) and answers 200 held-out queries one at a
   time (after 10 others, not counted: bench.ann.WARMUP), with one faiss thread as the service
   gives each query; then 200 more "cold", after every shard file's pages were dropped from the
   page cache (posix_fadvise DONTNEED), so each re-rank read goes to the disk; its resident memory (VmRSS, and its anonymous / file-backed parts) after the load and
   after the queries; recall@10 against the exact top-10 (one batched exact pass, streamed shard
   by shard); the re-rank's cost (the same queries from the PQ codes alone); one `exact=True`
   query (streams every shard);
3. update: one more sealed shard, `update_ann` again: seconds and bytes written (one list object
   and progress.json: they do not grow with the index), against the build (a full rebuild).

Prints one JSON line and a one-line summary. The store (about 2.05 kB per vector) is deleted at
the end unless `--keep`. `--serve DIR` is step 2 alone (the fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench._common import emit, peak_rss_mb, timer
from bench.ann import KIND, WARMUP, clip_like, percentiles, write
from sharding import BuildConfig, LocalStore
from sharding.ann import AnnConfig, recall_at, search_lists, update_ann
from sharding.storage import CountingStorage

BATCH = 10_000


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{stamp}Z] {message}", file=sys.stderr, flush=True)


def memory() -> dict[str, float]:
    """This process's resident memory in MiB: VmRSS, RssAnon, RssFile, VmHWM."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def evict_vectors(folder: Path) -> int:
    """Drop the shard files' pages from the page cache (POSIX_FADV_DONTNEED; no root needed)."""
    count = 0
    for path in folder.glob("clip_*.index"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1
    return count


def centres_for(clusters: int, dim: int) -> np.ndarray:
    centres = np.random.default_rng(0).standard_normal((clusters, dim)).astype(np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def serve(folder: Path, dim: int, clusters: int, queries_n: int) -> dict[str, Any]:
    """Step 2, in a fresh process: load as the service does, then answer queries one at a time."""
    from application.searcher import load_commit
    from service.app import limit_query_threads
    from service.settings import ServiceSettings

    before = memory()
    store = LocalStore(folder)
    with timer() as t_load:
        commit = load_commit(store, catalog=None)
    loaded = memory()
    index, ann = commit.indexes[KIND], commit.approximate.get(KIND)
    if ann is None:  # committed below the minimum recall: search stays exact
        return {"serving": False, "load_s": round(t_load[0], 1), "rss_loaded_mb": loaded}
    threads = faiss.omp_get_max_threads()
    query_threads = ServiceSettings(**{}).search_threads  # as the service runs each query
    limit_query_threads(query_threads)
    centres = centres_for(clusters, dim)
    for q in clip_like(WARMUP, dim, centres, seed=4):  # not counted
        commit.search(KIND, q, 10)
    queries = clip_like(queries_n, dim, centres, seed=2)
    seconds, found = [], []
    for q in queries:
        started = time.perf_counter()
        hits = commit.search(KIND, q, 10)
        seconds.append(time.perf_counter() - started)
        found.append([h.id for h in hits])
    served = memory()
    # Cold: every sealed shard's pages dropped from the page cache first, so each re-rank read
    # goes to the disk (a service whose machine cannot cache the vectors).
    evicted = evict_vectors(folder)
    cold_seconds = []
    for q in clip_like(queries_n, dim, centres, seed=5):
        started = time.perf_counter()
        commit.search(KIND, q, 10)
        cold_seconds.append(time.perf_counter() - started)
    pq_seconds, pq_found = [], []
    for q in queries:  # the same searches from the PQ codes alone: what the re-rank adds
        started = time.perf_counter()
        _, rows = search_lists(ann.index, q.reshape(1, -1), 10, nprobe=ann.state.nprobe)
        pq_seconds.append(time.perf_counter() - started)
        pq_found.append([index.ids[ann_row] for ann_row in _rows(ann, rows[0])])
    faiss.omp_set_num_threads(threads)
    with timer() as t_truth:  # one batched exact pass, shard by shard (pages dropped after use)
        truth = [[h.id for h in row] for row in index.search(queries, 10)]
    with timer() as t_exact:
        commit.search(KIND, queries[0], 10, exact=True)
    p50, p99 = percentiles(seconds)
    cold_p50, cold_p99 = percentiles(cold_seconds)
    pq_p50, pq_p99 = percentiles(pq_seconds)
    mapped = getattr(index.vectors, "disk_bytes", 0)
    return {
        "load_s": round(t_load[0], 1),
        "rss_start_mb": before,
        "rss_loaded_mb": loaded,
        "rss_served_mb": served,
        "rss_after_exact_mb": memory(),
        "vector_bytes_on_disk": mapped,
        "recall_at_10": round(recall_at(np.asarray(truth), _pad(found)), 4),
        "p50_ms": p50,
        "p99_ms": p99,
        "cold_p50_ms": cold_p50,
        "cold_p99_ms": cold_p99,
        "cold_files_evicted": evicted,
        "query_threads": query_threads,
        "pq_only_recall_at_10": round(recall_at(np.asarray(truth), _pad(pq_found)), 4),
        "pq_only_p50_ms": pq_p50,
        "pq_only_p99_ms": pq_p99,
        "exact_batch_of_queries_s": round(t_truth[0], 1),
        "exact_one_query_s": round(t_exact[0], 2),
        "nprobe": ann.state.nprobe,
        "rerank": ann.state.rerank,
        "serving": True,
    }


def _rows(ann: Any, slots: np.ndarray) -> list[int]:
    """Live rows of IVF slots (the loader's row order)."""
    return [int(np.searchsorted(ann.live_slots, s)) for s in slots if s >= 0]


def _pad(rows: list[list[Any]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    return np.asarray([list(r) + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--shard-vectors", type=int, default=10_000)
    parser.add_argument("--max-nlist", type=int, default=2048)
    parser.add_argument(
        "--pq-m", type=int, default=None, help="PQ sub-quantizers (default: from the codes budget)"
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None, help="folder (default: a temp one)")
    parser.add_argument("--keep", action="store_true", help="keep the store at the end")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.serve is not None:
        print(json.dumps(serve(args.serve, args.dim, args.clusters, args.queries)), flush=True)
        return
    dim = args.dim
    folder = args.store or Path(tempfile.mkdtemp(prefix="bench-ann-scale-", dir="/var/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    store = LocalStore(folder)
    centres = centres_for(args.clusters, dim)
    config = BuildConfig(
        embedder="bench", model="clip-like", dims={KIND: dim}, shard_max_vectors=args.shard_vectors
    )
    ann_config = AnnConfig(
        min_vectors=0, max_nlist=args.max_nlist, pq_min_vectors=0, pq_m=args.pq_m
    )
    log(f"store {folder}: writing {args.vectors:,} x {dim}-d in batches of {BATCH:,}")
    try:
        with timer() as t_write:
            for first in range(0, args.vectors, 1_000_000):  # a log line per million
                n = min(1_000_000, args.vectors - first)
                write(store, config, first + 1, n, centres, seed=1 + first, batch=BATCH)
                log(f"written {first + n:,}")
        log(f"written in {t_write[0]:.0f} s; building the approximate index")
        with timer() as t_build:
            report = update_ann(store, KIND, ann_config, run_id="bench-scale")
        state = report.state
        assert state is not None
        build_rss = peak_rss_mb()
        log(
            f"built in {t_build[0]:.0f} s: {state.type} nlist {state.nlist} nprobe "
            f"{state.nprobe} recall {state.recall_at_10}; serving in a fresh process"
        )
        files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        flat_bytes = sum(v for k, v in files.items() if k.startswith("clip_"))
        ann_bytes = sum(v for k, v in files.items() if k.startswith("ann_"))
        progress_bytes = files["progress.json"]
        child = subprocess.run(
            [sys.executable, "-m", "bench.ann_scale", "--serve", str(folder), "--dim", str(dim),
             "--clusters", str(args.clusters), "--queries", str(args.queries)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        served = json.loads(child.stdout.strip().splitlines()[-1])
        log(f"served: {served}")

        write(store, config, args.vectors + 1, args.shard_vectors, centres, seed=3, batch=BATCH)
        counting = CountingStorage(store)
        with timer() as t_update:
            update = update_ann(counting, KIND, ann_config, run_id="bench-scale-2")
        log(f"one-shard update: {update.action} in {t_update[0]:.0f} s")
    except BaseException:
        log(f"failed: the store is kept in {folder}")
        raise
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    assert update.state is not None
    list_bytes = sum(size for name, size in counting.written if name.endswith(".ivf"))
    if not served["serving"]:
        log(f"not serving: committed recall {state.recall_at_10} < the minimum")
        served.update(
            recall_at_10=0.0, p50_ms=None, p99_ms=None, rss_served_mb=served["rss_loaded_mb"]
        )
    rss = served["rss_served_mb"]["VmRSS"]
    result = {
        "bench": "ann_scale",
        "vectors": args.vectors,
        "dim": dim,
        "clusters": args.clusters,
        "shard_vectors": args.shard_vectors,
        "type": state.type,
        "pq_m": state.pq_m,
        "nlist": state.nlist,
        "nprobe": state.nprobe,
        "committed_recall_at_10": state.recall_at_10,
        "heldout_recall_at_10": served["recall_at_10"],
        "p50_ms": served["p50_ms"],
        "p99_ms": served["p99_ms"],
        "served": served,
        "write_shards_s": round(t_write[0], 1),
        "build_s": round(t_build[0], 1),
        "build_peak_rss_mb": round(build_rss, 1),
        "update_action": update.action,
        "update_s": round(t_update[0], 1),
        "update_vs_build": round(t_update[0] / t_build[0], 3),
        "update_objects": [name for name, _ in counting.written],
        "update_list_bytes": list_bytes,
        "update_bytes_written": counting.bytes_written,
        "progress_json_bytes": progress_bytes,
        "flat_bytes": flat_bytes,
        "ann_bytes": ann_bytes,
        "rerank": update.state.rerank,
        "goal_met": bool(
            served["serving"]
            and served["recall_at_10"] >= 0.95
            and served["p99_ms"] <= 10
            and rss <= 4096
        ),
    }
    emit(
        result,
        f"ann_scale {state.type} {args.vectors:,} x {dim}-d: recall@10 {served['recall_at_10']} "
        f"(committed {state.recall_at_10}, nprobe {state.nprobe}/{state.nlist}), p99 "
        f"{served['p99_ms']} ms (cold page cache {served.get('cold_p99_ms')} ms), served RSS {rss:.0f} MiB (anon "
        f"{served['rss_served_mb'].get('RssAnon', 0):.0f}); build {t_build[0]:.0f} s; one-shard update "
        f"{t_update[0]:.0f} s / {counting.bytes_written:,} B",
    )


if __name__ == "__main__":
    main()
