"""Bytes and seconds one checkpoint writes with 10k and with 1M vectors already committed."""

from __future__ import annotations

import json
import time

import numpy as np

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore
from sharding.codec import sha256_hex
from sharding.storage import CountingStorage

DIM = 512
BATCH = 256
FILL_BATCH = 1000


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


def measure(committed: int) -> dict[str, float | int]:
    config = BuildConfig("bench", "synthetic-unit-vectors", {"color": DIM})
    counting = CountingStorage(filled_store(committed, config))
    writer = IndexWriter.open(counting, config, run_id="measure")
    started = time.perf_counter()
    writer.add_batch(batch(committed + 1, unit_vectors(BATCH, seed=1)))
    writer.commit()
    seconds = time.perf_counter() - started
    progress_bytes = next(size for name, size in counting.written if name == "progress.json")
    return {
        "committed_vectors": committed,
        "bytes_written": counting.bytes_written,
        "writes": counting.writes,
        "progress_json_bytes": progress_bytes,
        "seconds": round(seconds, 4),
    }


def main() -> None:
    small, large = measure(10_000), measure(1_000_000)
    ratio = large["bytes_written"] / small["bytes_written"]
    print(json.dumps({"dim": DIM, "batch": BATCH, "at_10k": small, "at_1m": large, "ratio": ratio}))
    print(
        f"one checkpoint of {BATCH} x {DIM}-d: {small['bytes_written']:,} B at 10k committed, "
        f"{large['bytes_written']:,} B at 1M committed (ratio {ratio:.3f})"
    )


if __name__ == "__main__":
    main()
