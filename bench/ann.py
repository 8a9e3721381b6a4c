"""Approximate index (sharding.ann) vs exact flat search on CLIP-like vectors.

    python -m bench.ann [--quick] [--vectors N] [--dim D] [--max-nlist L] [--type pq|flat]

The vectors (default 1M x 512-d, generated batch by batch): `--clusters` random unit centres
(default 2000), each vector a centre plus a Gaussian of norm ~0.7 in a shared 64-d subspace plus
isotropic noise of norm ~0.1, normalised: clustered unit vectors of low intrinsic dimension like
CLIP image embeddings, not uniform noise (with isotropic noise alone every member of a cluster
is nearly equidistant, and PQ at 1M reached recall 0.65 even at nprobe = nlist). They are written through
IndexWriter into a local store (1,000-vector shards), then `update_ann` trains and lists them
(build time), and 200 held-out queries from the same distribution (after WARMUP = 10 others, not
counted) are searched one at a time
through the approximate index and through the exact flat scan (p50/p99 each), with recall@10
of the former against the latter. Then one more sealed shard is added and `update_ann` run
again: the cost of an update (seconds, bytes written) against the full build.
Prints one JSON line and a one-line summary.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench._common import emit, peak_rss_mb, timer
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore, load_index
from sharding.ann import AnnConfig, load_ann, recall_at, update_ann
from sharding.codec import ProductId
from sharding.storage import CountingStorage

KIND = "color"
#: Queries searched before the timed ones and not counted: the first searches after a load pay
#: one-time costs (10M: the first 10 took up to 11 ms, the next 390 at most 5).
WARMUP = 10


#: Directions the vectors vary along within a cluster (CLIP embeddings have a low intrinsic
#: dimension; isotropic noise in all 512 would make every cluster member equidistant).
SUBSPACE = 64


def clip_like(n: int, dim: int, centres: np.ndarray, seed: int) -> np.ndarray:
    """Unit vectors: a random centre + 0.7 x a Gaussian in a shared 64-d subspace (norm ~0.7)
    + isotropic noise of norm ~0.1, normalised."""
    basis = np.linalg.qr(np.random.default_rng(7).standard_normal((dim, SUBSPACE)))[0]
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)]
    z = rng.standard_normal((n, SUBSPACE)).astype(np.float32) * (0.7 / np.sqrt(SUBSPACE))
    x = x + z @ basis.T.astype(np.float32)
    x = x + (0.1 / np.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write(
    store: LocalStore,
    config: BuildConfig,
    first: int,
    n: int,
    centres: np.ndarray,
    seed: int,
    batch: int = 10_000,
) -> None:
    """n generated vectors in batches (generated batch by batch: memory holds one batch)."""
    writer = IndexWriter.open(store, config, run_id=f"bench-{first}")
    dim = centres.shape[1]
    for s in range(0, n, batch):
        ids = list[ProductId](range(first + s, first + min(s + batch, n)))
        x = clip_like(len(ids), dim, centres, seed=seed * 1_000_003 + s)
        writer.add_batch(EmbeddedBatch(ids, [None] * len(ids), {KIND: x}))
        writer.commit()
    writer.finish()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--max-nlist", type=int, default=1024)
    parser.add_argument("--type", choices=["pq", "flat"], default="pq")
    parser.add_argument(
        "--pq-m", type=int, default=None, help="PQ sub-quantizers (default: from the codes budget)"
    )
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.vectors, args.max_nlist, args.clusters = 20_000, 128, 300
    faiss.omp_set_num_threads(2)
    dim = args.dim
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    config = BuildConfig(embedder="bench", model="clip-like", dims={KIND: dim})
    ann_config = AnnConfig(
        min_vectors=0,
        max_nlist=args.max_nlist,
        pq_min_vectors=0 if args.type == "pq" else 1 << 62,
        pq_m=args.pq_m,
    )
    with tempfile.TemporaryDirectory(prefix="bench-ann-") as folder:
        store = LocalStore(Path(folder))
        with timer() as t_write:
            write(store, config, 1, args.vectors, centres, seed=1)
        with timer() as t_build:
            report = update_ann(store, KIND, ann_config, run_id="bench-ann")
        state = report.state
        assert state is not None
        files = {p.name: p.stat().st_size for p in Path(folder).iterdir() if p.is_file()}
        flat_bytes = sum(v for k, v in files.items() if k.startswith("clip_"))
        ann_bytes = sum(v for k, v in files.items() if k.startswith("ann_"))

        index = load_index(store, KIND)
        with timer() as t_load:
            ann = load_ann(store, index.progress, KIND)
        assert ann is not None, f"not serving: recall {state.recall_at_10}"
        for q in clip_like(WARMUP, dim, centres, seed=4):  # not counted: first-query costs
            index.search(q.reshape(1, -1), 10)
            ann.search(index.vectors, q.reshape(1, -1), 10)
        queries = clip_like(args.queries, dim, centres, seed=2)
        exact_s, ann_s, truth, found = [], [], [], []
        for q in queries:
            started = time.perf_counter()
            hits = index.search(q.reshape(1, -1), 10)[0]
            exact_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            _, rows = ann.search(index.vectors, q.reshape(1, -1), 10)
            ann_s.append(time.perf_counter() - started)
            truth.append([h.id for h in hits])
            found.append([index.ids[r] for r in rows[0] if r >= 0])
        recall = recall_at(np.asarray(truth), np.asarray(found))
        exact_p50, exact_p99 = percentiles(exact_s)
        ann_p50, ann_p99 = percentiles(ann_s)
        rss = peak_rss_mb()
        del index, ann

        # One more sealed shard: the update's cost.
        write(store, config, args.vectors + 1, 1000, centres, seed=3, batch=1000)
        counting = CountingStorage(store)
        with timer() as t_update:
            update = update_ann(counting, KIND, ann_config, run_id="bench-ann-2")
        list_bytes = sum(size for name, size in counting.written if name.endswith(".ivf"))

    result = {
        "bench": "ann",
        "vectors": args.vectors,
        "dim": dim,
        "clusters": args.clusters,
        "type": state.type,
        "nlist": state.nlist,
        "nprobe": state.nprobe,
        "pq_m": state.pq_m,
        "rerank": state.rerank,
        "committed_recall_at_10": state.recall_at_10,
        "heldout_recall_at_10": round(recall, 4),
        "ann_p50_ms": ann_p50,
        "ann_p99_ms": ann_p99,
        "exact_p50_ms": exact_p50,
        "exact_p99_ms": exact_p99,
        "p99_speedup": round(exact_p99 / ann_p99, 1) if ann_p99 else None,
        "write_shards_s": round(t_write[0], 2),
        "build_s": round(t_build[0], 2),
        "load_ann_s": round(t_load[0], 2),
        "update_action": update.action,
        "update_s": round(t_update[0], 2),
        "update_objects": len(update.written),
        "update_list_bytes": list_bytes,
        "update_bytes_written": counting.bytes_written,
        "flat_bytes": flat_bytes,
        "ann_bytes": ann_bytes,
        "ann_over_flat_bytes": round(ann_bytes / flat_bytes, 4),
        "peak_rss_mb": round(rss, 1),
        "goal_met": recall >= 0.95 and ann_p99 <= 5.0,
    }
    emit(
        result,
        f"ann {state.type} {args.vectors:,} x {dim}-d: recall@10 {recall:.3f} (committed "
        f"{state.recall_at_10}), p99 {ann_p99} ms vs exact {exact_p99} ms; build {t_build[0]:.1f} s, "
        f"update of one shard {t_update[0]:.1f} s / {counting.bytes_written:,} B; ann bytes "
        f"{result['ann_over_flat_bytes']}x flat; peak RSS {rss:.0f} MiB",
    )


if __name__ == "__main__":
    main()
