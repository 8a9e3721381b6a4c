"""Bytes and seconds one checkpoint writes with 10k and with 1M vectors already committed.

    python -m bench.checkpoint_bytes [--quick]

Two writers, over stores holding 10k and 1M committed vectors, checkpoint batches of 256 x 512-d
in alternation. A checkpoint's cost follows the open shard's fill (it writes that shard: 0.5 to
2 MB over a cycle of four checkpoints), so the i-th checkpoints of the two stores are at the same
point of the cycle: the seconds ratio is the median over i of their ratios, and the seconds shown
are means over whole cycles (a median of mixed phases jumps between two phases' values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore
from sharding.codec import ProductId, sha256_hex
from sharding.storage import CountingStorage

DIM = 512
BATCH = 256
FILL_BATCH = 1000
CHECKPOINTS = 40  # each shard of 1,000 fills in 4 checkpoints: ten shard cycles


class DedupMemoryStore(MemoryStore):
    """Keeps one copy of identical payloads, so 1M synthetic vectors fit in memory."""

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        blob = self._blobs.setdefault(sha256_hex(data), bytes(data))
        super().put(name, blob, overwrite=overwrite, immutable=immutable)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def batch(first_id: int, vectors: np.ndarray) -> EmbeddedBatch:
    ids: list[ProductId] = list(range(first_id, first_id + len(vectors)))
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


class Checkpointer:
    """A writer over a store filled with `committed` vectors, timing one checkpoint at a time."""

    def __init__(self, committed: int) -> None:
        config = BuildConfig("bench", "synthetic-unit-vectors", {"color": DIM})
        self.committed = committed
        self.counting = CountingStorage(filled_store(committed, config))
        self.writer = IndexWriter.open(self.counting, config, run_id="measure")
        self.seconds: list[float] = []
        self.written: list[int] = []

    def checkpoint(self) -> None:
        """Add one batch and commit it."""
        i = len(self.seconds)
        before = self.counting.bytes_written
        vectors = unit_vectors(BATCH, seed=1 + i)
        started = time.perf_counter()
        self.writer.add_batch(batch(self.committed + 1 + i * BATCH, vectors))
        self.writer.commit()
        self.seconds.append(time.perf_counter() - started)
        self.written.append(self.counting.bytes_written - before)

    def summary(self) -> dict[str, Any]:
        written = self.counting.written
        return {
            "committed_vectors": self.committed,
            "bytes_written": int(statistics.median(self.written)),
            "writes": self.counting.writes // len(self.seconds),
            "progress_json_bytes": [size for name, size in written if name == "progress.json"][-1],
            "seconds": round(statistics.fmean(self.seconds), 5),
        }


def measure(small_n: int, large_n: int, checkpoints: int) -> tuple[Checkpointer, Checkpointer]:
    """Checkpoints of the two stores alternate in ABBA order, so a busy moment of the machine
    hits both alike and neither always runs second (going second after the other one's
    allocations moved a ~2 ms checkpoint by +-25% here)."""
    small, large = Checkpointer(small_n), Checkpointer(large_n)
    for i in range(checkpoints):
        pair = (small, large) if i % 2 == 0 else (large, small)
        for checkpointer in pair:
            checkpointer.checkpoint()
    return small, large


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vs 100k committed")
    args = parser.parse_args(argv)
    large_n = 100_000 if args.quick else 1_000_000
    small_run, large_run = measure(10_000, large_n, CHECKPOINTS)
    small, large = small_run.summary(), large_run.summary()
    ratio = large["bytes_written"] / small["bytes_written"]
    seconds_ratio = statistics.median(
        b / a for a, b in zip(small_run.seconds, large_run.seconds, strict=True)
    )
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
        f"(bytes ratio {ratio:.3f}, seconds ratio {seconds_ratio:.2f}; {CHECKPOINTS} checkpoints "
        "each, bytes as medians, seconds as means, the ratio as the median of paired ratios)"
    )


if __name__ == "__main__":
    main()
