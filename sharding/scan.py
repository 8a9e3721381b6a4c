"""Search a kind shard by shard: memory holds one shard at a time, not the whole kind.

For a handful of queries (the alignment check's sample) this reads the same bytes as loading
the index, but its peak memory is one shard (~2 MB per 1,000 x 512-d) instead of every vector
of the kind (~2 GB per 1M x 512-d). Results equal ShardedIndex.search's: the same exact
inner-product kernel, merged over shards by score.
"""

from __future__ import annotations

import heapq

import faiss
import numpy as np

from sharding.codec import ProductId
from sharding.digests import match_committed
from sharding.loader import Hit
from sharding.progress import Progress
from sharding.state import committed_ids, fetch_committed, load_shard, shard_records
from sharding.storage import Storage
from sharding.tombstones import dead_slots, live_mask


def kind_ids(storage: Storage, progress: Progress, kind: str) -> list[ProductId]:
    """Every live id of a kind in shard order, read from the id maps alone (verified); dead
    slots (format 4) are left out."""
    ids: list[ProductId] = []
    for record in shard_records(storage, progress, kind):
        data = fetch_committed(storage.get, record.id_map)
        shard_ids, _ = committed_ids(
            data, record, match_committed(record.id_map, data, record.id_map_digests)
        )
        ids.extend(shard_ids)
    dead = dead_slots(storage, progress.kinds[kind])
    if not dead:
        return ids
    mask = live_mask(len(ids), dead)
    return [pid for pid, live in zip(ids, mask.tolist(), strict=True) if live]


def scan_search(
    storage: Storage, progress: Progress, kind: str, queries: np.ndarray, k: int
) -> list[list[Hit]]:
    """Top-k hits per query row over every committed shard of `kind`, one shard in memory."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    best: list[list[tuple[float, int, ProductId]]] = [[] for _ in queries]
    order = 0  # ties keep shard order, as one merged index would
    dim = progress.kinds[kind].dim
    dead = dead_slots(storage, progress.kinds[kind])
    mask = live_mask(progress.kinds[kind].total_vectors, dead) if dead else None
    slot = 0
    for record in shard_records(storage, progress, kind):
        shard = load_shard(storage, record, dim)
        vectors, ids = shard.vectors, shard.ids
        if mask is not None:  # dead slots never come back
            keep = np.flatnonzero(mask[slot : slot + len(ids)])
            vectors, ids = vectors[keep], [ids[i] for i in keep.tolist()]
        slot += len(shard.ids)
        if not len(ids) or k < 1:
            continue
        scores, positions = faiss.knn(
            queries, vectors, min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT
        )
        for row, (row_s, row_p) in enumerate(zip(scores, positions, strict=True)):
            for score, position in zip(row_s, row_p, strict=True):
                if position < 0:
                    continue
                item = (float(score), -(order + int(position)), ids[position])
                if len(best[row]) < k:
                    heapq.heappush(best[row], item)
                else:
                    heapq.heappushpop(best[row], item)
        order += len(ids)
    return [[Hit(pid, score) for score, _, pid in sorted(row, reverse=True)] for row in best]
