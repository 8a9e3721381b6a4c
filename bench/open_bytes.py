"""Bytes read (and seconds) when a build opens a store: IndexWriter.open on a store of N vectors.

Builds one kind of `--vectors` unit vectors (`--dim`, shards of 1,000) into a memory store, then
opens a writer on it the way every resumed build does, counting the bytes each get() returns.
Opening must verify what the run builds on (progress.json, the open shard), not re-read every
sealed shard: that is `check`'s job (issue 13 item 22).

    .venv/bin/python -m bench.open_bytes --vectors 1000000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore


class ReadCountingStore(MemoryStore):
    """A memory store that counts the objects and bytes get() returns."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.bytes_read = 0

    def get(self, name: str) -> bytes:
        data = super().get(name)
        self.reads += 1
        self.bytes_read += len(data)
        return data

    def put(self, name: str, data: bytes, *, overwrite: bool = True, **_: Any) -> None:
        super().put(name, data, overwrite=overwrite)


def build(store: ReadCountingStore, vectors: int, dim: int, batch: int) -> BuildConfig:
    config = BuildConfig("bench", "bench-model", {"color": dim}, shard_max_vectors=1000)
    writer = IndexWriter.open(store, config, run_id="build")
    rng = np.random.default_rng(0)
    for start in range(0, vectors, batch):
        n = min(batch, vectors - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids: Sequence[int] = range(start + 1, start + n + 1)
        writer.add_batch(EmbeddedBatch(list(ids), [None] * n, {"color": v}, [], last_id=start + n))
        writer.commit()
    writer.finish()
    return config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=20_500)  # leaves an open shard of 500
    args = parser.parse_args(argv)
    store = ReadCountingStore()
    config = build(store, args.vectors, args.dim, args.batch)
    stored = sum(len(data) for data in store.objects.values())
    store.reads = store.bytes_read = 0
    started = time.perf_counter()
    IndexWriter.open(store, config, run_id="resume")
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "vectors": args.vectors,
                "dim": args.dim,
                "objects_in_store": len(store.objects),
                "bytes_in_store": stored,
                "open_objects_read": store.reads,
                "open_bytes_read": store.bytes_read,
                "open_seconds": round(seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
