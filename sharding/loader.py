"""Loading a kind's shards (parallel, sha256-checked, cached) into one searchable index."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from sharding.codec import ProductId, sha256_hex
from sharding.errors import StateError
from sharding.progress import Progress, ShardRecord
from sharding.state import CommittedShard, load_shard, require_progress, shard_records
from sharding.storage import Storage

# faiss-cpu skips BLAS below this many queries; BLAS is ~13x faster at 100 queries (DESIGN §7).
_BLAS_THRESHOLD = 20


@dataclass(frozen=True)
class Hit:
    id: ProductId
    score: float


@dataclass
class ShardedIndex:
    """All committed shards of one kind merged into one IndexFlatIP, positions mapped to ids."""

    kind: str
    dim: int
    index: faiss.Index
    ids: list[ProductId]
    progress: Progress
    _positions: dict[ProductId, int] = field(default_factory=dict, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k product ids and inner-product scores per query row."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dim}")
        with _blas_threshold(_BLAS_THRESHOLD):
            scores, positions = self.index.search(queries, min(k, self.ntotal))
        return [
            [Hit(self.ids[p], float(s)) for s, p in zip(row_s, row_p, strict=True) if p >= 0]
            for row_s, row_p in zip(scores, positions, strict=True)
        ]

    def vector(self, product_id: ProductId) -> np.ndarray:
        """The stored vector of a product (KeyError if it is not in this kind)."""
        if not self._positions:
            self._positions = {pid: i for i, pid in enumerate(self.ids)}
        return np.asarray(self.index.reconstruct(self._positions[product_id]), dtype=np.float32)


@contextlib.contextmanager
def _blas_threshold(value: int) -> Iterator[None]:
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = value
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def load_index(
    storage: Storage, kind: str, *, cache_dir: Path | None = None, workers: int = 8
) -> ShardedIndex:
    """Download every committed shard of a kind in parallel, verify it, merge for search."""
    progress = require_progress(storage)
    records = shard_records(storage, progress, kind)
    dim = progress.kinds[kind].dim
    fetch = _CachedFetch(storage, cache_dir, records)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        shards = list(pool.map(lambda r: load_shard(storage, r, dim, fetch), records))
    return _merge(kind, dim, shards, progress)


def _merge(kind: str, dim: int, shards: list[CommittedShard], progress: Progress) -> ShardedIndex:
    merged = faiss.IndexFlatIP(dim)
    ids: list[ProductId] = []
    for shard in shards:
        merged.merge_from(shard.index)
        ids.extend(shard.ids)
    if merged.ntotal != len(ids) or len(ids) != progress.kinds[kind].total_vectors:
        raise StateError(
            f"{kind}: {merged.ntotal} vectors, {len(ids)} ids, progress says "
            f"{progress.kinds[kind].total_vectors}"
        )
    return ShardedIndex(kind, dim, merged, ids, progress)


class _CachedFetch:
    """Fetch through a local cache keyed by the committed sha256 (reused only if it matches)."""

    def __init__(
        self, storage: Storage, cache_dir: Path | None, records: list[ShardRecord]
    ) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.sha = {r.name: r.sha256 for r in records} | {
            r.id_map: r.id_map_sha256 for r in records
        }
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> bytes:
        if self.cache_dir is None:
            return self.storage.get(name)
        path = self.cache_dir / f"{self.sha[name]}.bin"
        if path.is_file():
            data = path.read_bytes()
            if sha256_hex(data) == self.sha[name]:
                return data
        data = self.storage.get(name)
        if sha256_hex(data) == self.sha[name]:
            _write_atomic(path, data)
        return data


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)
