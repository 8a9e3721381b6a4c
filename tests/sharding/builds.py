"""A synthetic catalog and a flow-like build loop over IndexWriter, shared by the sharding tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, RollupLimits, Storage
from sharding.codec import ProductId


@dataclass(frozen=True)
class Failed:
    """A failed product as the embedders report one (modal_workers' FailedProduct has this
    shape): the writer takes any object with .id, .reason and .message."""

    id: ProductId
    reason: str
    message: str


SMALL = BuildConfig("histogram", "hist-v1", {"color": 4, "combined": 6}, shard_max_vectors=10)
SMALL_ROLLUP = RollupLimits(segment_shards=2, failure_chunk=3)


def unit_vector(product_id: ProductId, dim: int, salt: int = 0) -> np.ndarray:
    seed = abs(hash((product_id, dim, salt))) % 2**32
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Catalog:
    """Products 1..n; every `fail_every`-th one fails to embed."""

    n: int = 47
    fail_every: int = 9

    def ids(self) -> list[int]:
        return list(range(1, self.n + 1))

    def indexed(self) -> list[int]:
        return [i for i in self.ids() if i % self.fail_every]

    def batches(
        self, after: ProductId | None, size: int, dims: dict[str, int]
    ) -> Iterator[EmbeddedBatch]:
        todo = [i for i in self.ids() if after is None or i > after]  # type: ignore[operator]
        for start in range(0, len(todo), size):
            yield self.batch(todo[start : start + size], dims)

    def batch(self, ids: Sequence[int], dims: dict[str, int]) -> EmbeddedBatch:
        good = [i for i in ids if i % self.fail_every]
        vectors = {k: _stack([unit_vector(i, d) for i in good], d) for k, d in dims.items()}
        failures = [Failed(i, "fetch_error", f"HTTP 404 for {i}") for i in ids if i not in good]
        brands = [f"brand-{i % 3}" if i % 4 else None for i in good]
        return EmbeddedBatch(good, brands, vectors, failures, last_id=ids[-1])


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)


def run_build(
    storage: Storage,
    config: BuildConfig = SMALL,
    catalog: Catalog = Catalog(),
    *,
    batch_size: int = 8,
    run_id: str = "run",
    rollup: RollupLimits = SMALL_ROLLUP,
    before_commit: Callable[[], None] | None = None,
    **crash: object,
) -> IndexWriter:
    """What the build flow does: open, read from resume_after(), add + commit per batch, finish."""
    writer = IndexWriter.open(
        storage,
        config,
        run_id=run_id,
        rollup=rollup,
        before_commit=before_commit,
        **crash,  # type: ignore[arg-type]
    )
    for batch in catalog.batches(writer.resume_after(), batch_size, dict(config.dims)):
        writer.add_batch(batch)
        writer.commit()
    writer.finish()
    return writer
