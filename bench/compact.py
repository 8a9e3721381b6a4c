"""Compaction cost: `sharding.compact` of a store with 30 % dead slots against a plain rewrite.

Builds one kind of `--vectors` unit vectors (`--dim`, shards of 1,000) into a local store folder
through IndexWriter, then kills `--dead` of them (IndexWriter.delete: tombstones). Then, side by
side, each in a fresh subprocess (so each peak RSS is its own), alternating `--rounds` times:

- **compact**: `sharding.compact.compact` of a copy of the store: reads every shard (checksums
  verified), writes the live rows as new shards (sha256 + XXH3 of each), segments,
  progress.json, the full id map, and deletes the retired objects;
- **plain rewrite**: the same bytes with plain faiss and json: read each shard file
  (`faiss.read_index`) and its id map, keep the live rows, write them as `IndexFlatIP` files of
  1,000 vectors (`faiss.write_index`) and id-map JSON files into a fresh folder; once with each
  file fsynced (the durability the local store gives every object: the ratio is against this),
  once left in the page cache.

    .venv/bin/python -m bench.compact                # 1M x 512-d, 30 % dead
    .venv/bin/python -m bench.compact --quick        # 20k x 64-d
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit, peak_rss_mb

KIND = "color"
SHARD = 1000


def build(store_dir: Path, vectors: int, dim: int, dead: float, batch: int = 20_000) -> int:
    """The store: `vectors` rows in 1,000-vector shards, then a `dead` share deleted."""
    from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore
    from sharding.codec import ProductId

    store = LocalStore(store_dir)
    config = BuildConfig("bench", "bench-model", {KIND: dim}, shard_max_vectors=SHARD)
    writer = IndexWriter.open(store, config, run_id="build")
    rng = np.random.default_rng(0)
    for start in range(0, vectors, batch):
        n = min(batch, vectors - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids: list[ProductId] = list(range(start + 1, start + n + 1))
        brands: list[str | None] = [f"brand-{i % 20}" for i in range(start + 1, start + n + 1)]
        writer.add_batch(EmbeddedBatch(ids, brands, {KIND: v}, [], last_id=start + n))
        writer.commit()
    killed = rng.choice(np.arange(1, vectors + 1), int(dead * vectors), replace=False)
    writer.delete(sorted(killed.tolist()))
    writer.finish()
    return len(killed)


def run_compact(store_dir: Path) -> dict[str, Any]:
    from sharding import LocalStore
    from sharding.compact import compact

    store = LocalStore(store_dir)
    started = time.perf_counter()
    report = compact(
        store,
        run_id="bench",
        brands_of=lambda ids: [f"brand-{i % 20}" for i in ids],  # type: ignore[operator]
        threshold=0.1,
    )
    seconds = time.perf_counter() - started
    kind = report.kinds[KIND]
    return {"seconds": seconds, "bytes_written": kind.bytes_written, "live": kind.live}


def run_plain(store_dir: Path, out_dir: Path, durable: bool = False) -> dict[str, Any]:
    """Read the live rows and write them as shards with plain faiss: the floor compaction has.
    `durable`: fsync each file written, as the local store does before its rename."""
    import os

    import faiss

    started = time.perf_counter()
    progress = json.loads((store_dir / "progress.json").read_bytes())
    kp = progress["kinds"][KIND]
    records = []
    for ref in kp["segments"]:
        records += json.loads((store_dir / ref["name"]).read_bytes())["shards"]
    records += kp["shards"]
    dead = list(kp["recent_dead"])
    for ref in kp["tombstones"]:
        dead = json.loads((store_dir / ref["name"]).read_bytes())["slots"] + dead
    live = np.ones(kp["total_vectors"], bool)
    live[np.asarray(dead, dtype=np.int64)] = False
    out_dir.mkdir(parents=True, exist_ok=True)
    pending_v: list[np.ndarray] = []
    pending_ids: list[int] = []
    written, number, start = 0, 0, 0

    def write(vectors: np.ndarray, ids: list[int]) -> int:
        nonlocal number
        number += 1
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        path = out_dir / f"shard_{number:05d}.index"
        faiss.write_index(index, str(path))
        id_path = out_dir / f"shard_{number:05d}.json"
        id_path.write_bytes(json.dumps(ids, separators=(",", ":")).encode())
        if durable:
            for written_path in (path, id_path):
                fd = os.open(written_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return path.stat().st_size + id_path.stat().st_size

    for record in records:
        index = faiss.read_index(str(store_dir / record["name"]))
        ids = json.loads((store_dir / record["id_map"]).read_bytes())
        keep = np.flatnonzero(live[start : start + record["vectors"]])
        start += record["vectors"]
        vectors = index.reconstruct_n(0, record["vectors"])
        pending_v.append(vectors[keep])
        pending_ids += [ids[i] for i in keep.tolist()]
        while len(pending_ids) >= SHARD:
            block = np.concatenate(pending_v)
            written += write(np.ascontiguousarray(block[:SHARD]), pending_ids[:SHARD])
            pending_v, pending_ids = [block[SHARD:]], pending_ids[SHARD:]
    if pending_ids:
        written += write(np.ascontiguousarray(np.concatenate(pending_v)), pending_ids)
    return {
        "seconds": time.perf_counter() - started,
        "bytes_written": written,
        "live": int(live.sum()),
    }


def child(mode: str, store_dir: Path, out_dir: Path) -> None:
    baseline = peak_rss_mb()
    if mode == "compact":
        result = run_compact(store_dir)
    else:
        result = run_plain(store_dir, out_dir, durable=mode == "plain_fsync")
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline}))


def measure(mode: str, template: Path, work: Path) -> dict[str, Any]:
    store = work / f"{mode}-store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store)
    os.sync()  # the copy's dirty pages must not land in the measured run's fsyncs
    out = work / f"{mode}-out"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "bench.compact", "--child", mode, str(store), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dead", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20k x 64-d, one round")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "STORE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    if args.quick:
        args.vectors, args.dim, args.rounds = 20_000, 64, 1
    work = Path(tempfile.mkdtemp(prefix="bench-compact-"))
    try:
        started = time.perf_counter()
        killed = build(work / "template", args.vectors, args.dim, args.dead)
        build_s = time.perf_counter() - started
        runs: dict[str, list[dict[str, Any]]] = {"compact": [], "plain_fsync": [], "plain": []}
        for _ in range(args.rounds):  # alternated, so both see the same machine load
            for mode in runs:
                runs[mode].append(measure(mode, work / "template", work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {mode: min(rs, key=lambda r: r["seconds"]) for mode, rs in runs.items()}
    c, p, f = best["compact"], best["plain"], best["plain_fsync"]
    assert c["live"] == p["live"] == f["live"] == args.vectors - killed
    report = {
        "bench": "compact",
        "vectors": args.vectors,
        "dim": args.dim,
        "dead": killed,
        "live": c["live"],
        "build_s": round(build_s, 1),
        "compact_s": round(c["seconds"], 2),
        "plain_rewrite_s": round(p["seconds"], 2),
        "plain_fsync_rewrite_s": round(f["seconds"], 2),
        "seconds_ratio": round(c["seconds"] / f["seconds"], 2),
        "seconds_ratio_no_fsync": round(c["seconds"] / p["seconds"], 2),
        "compact_bytes_written": c["bytes_written"],
        "plain_bytes_written": p["bytes_written"],
        "compact_peak_rss_mb": round(c["peak_rss_mb"], 1),
        "plain_peak_rss_mb": round(p["peak_rss_mb"], 1),
        "plain_fsync_peak_rss_mb": round(f["peak_rss_mb"], 1),
        "compact_rss_over_baseline_mb": round(c["peak_rss_mb"] - c["baseline_rss_mb"], 1),
        "plain_rss_over_baseline_mb": round(p["peak_rss_mb"] - p["baseline_rss_mb"], 1),
        "rounds": args.rounds,
        "all_seconds": {mode: [round(r["seconds"], 2) for r in rs] for mode, rs in runs.items()},
    }
    emit(
        report,
        f"compact {args.vectors:,} x {args.dim}-d, {killed:,} dead: {report['compact_s']} s, "
        f"peak RSS {report['compact_peak_rss_mb']:.0f} MiB; plain faiss rewrite of the same "
        f"rows, fsynced {report['plain_fsync_rewrite_s']} s ({report['seconds_ratio']}x), "
        f"page cache only {report['plain_rewrite_s']} s, {report['plain_peak_rss_mb']:.0f} MiB",
    )


if __name__ == "__main__":
    main()
