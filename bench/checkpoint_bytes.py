"""Bytes and seconds one checkpoint writes with 10k and with 1M vectors already committed."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import numpy as np

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore
from sharding.codec import sha256_hex
from sharding.storage import CountingStorage

DIM = 512
BATCH = 256
FILL_BATCH = 1000
CHECKPOINTS = 7


class DedupMemoryStore(MemoryStore):
    """Keeps one copy of identical payloads, so 1M synthetic vectors fit in memory."""

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        blob = self._blobs.setdefault(sha256_hex(data), bytes(data))
        super().put(name, blob, overwrite=overwrite)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def batch(first_id: int, vectors: np.ndarray) -> EmbeddedBatch:
    ids = list(range(first_id, first_id + len(vectors)))
    return EmbeddedBatch(ids, ["brand"] * len(ids), {"color": vectors}, [], last_id=ids[-1])


def filled_store(committed: int, config: BuildConfig) -> MemoryStore:
    """A store with `committed` vectors, built through the writer (sealed shards, segments)."""
    store = DedupMemoryStore()
    writer = IndexWriter.open(store, config, run_id="fill")
    block = unit_vectors(FILL_BATCH, seed=0)  # reused: only sizes matter for this measure
    for start in range(0, committed, FILL_BATCH):
        writer.add_batch(batch(start + 1, block[: min(FILL_BATCH, committed - start)]))
        if (start // FILL_BATCH) % 50 == 49:
            writer.commit()
    writer.commit()
    return store


def measure(committed: int, checkpoints: int = CHECKPOINTS) -> dict[str, float | int]:
    """Bytes and seconds of one checkpoint (add a batch + commit), median over `checkpoints`."""
    config = BuildConfig("bench", "synthetic-unit-vectors", {"color": DIM})
    counting = CountingStorage(filled_store(committed, config))
    writer = IndexWriter.open(counting, config, run_id="measure")
    seconds, written = [], []
    for i in range(checkpoints):
        before = counting.bytes_written
        vectors = unit_vectors(BATCH, seed=1 + i)
        started = time.perf_counter()
        writer.add_batch(batch(committed + 1 + i * BATCH, vectors))
        writer.commit()
        seconds.append(time.perf_counter() - started)
        written.append(counting.bytes_written - before)
    progress_bytes = [size for name, size in counting.written if name == "progress.json"][-1]
    return {
        "committed_vectors": committed,
        "bytes_written": int(statistics.median(written)),
        "writes": counting.writes // checkpoints,
        "progress_json_bytes": progress_bytes,
        "seconds": round(statistics.median(seconds), 5),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vs 100k committed")
    args = parser.parse_args(argv)
    large_n = 100_000 if args.quick else 1_000_000
    small, large = measure(10_000), measure(large_n)
    ratio = large["bytes_written"] / small["bytes_written"]
    seconds_ratio = large["seconds"] / small["seconds"]
    report = {
        "bench": "checkpoint_bytes",
        "dim": DIM,
        "batch": BATCH,
        "checkpoints_each": CHECKPOINTS,
        "at_10k": small,
        "at_large": large,
        "ratio": ratio,
        "seconds_ratio": round(seconds_ratio, 3),
        "goal": 1.1,
    }
    print(json.dumps(report))
    print(
        f"one checkpoint of {BATCH} x {DIM}-d: {small['bytes_written']:,} B / "
        f"{1000 * small['seconds']:.1f} ms at 10k committed, {large['bytes_written']:,} B / "
        f"{1000 * large['seconds']:.1f} ms at {large_n:,} committed "
        f"(bytes ratio {ratio:.3f}, seconds ratio {seconds_ratio:.2f}; medians of {CHECKPOINTS})"
    )


if __name__ == "__main__":
    main()
