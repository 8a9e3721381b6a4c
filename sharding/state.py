"""Reading the committed state: progress.json, manifest segments, failure chunks, shards.

Whether bytes are the committed ones is answered in one place, sharding.digests.match_committed;
the functions here take its answer (a Match) instead of hashing again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import orjson
from pydantic import ValidationError

from sharding import names
from sharding.codec import (
    ProductId,
    decode_ids,
    decode_index,
    encode_ids,
    encode_index,
    flat_ip_vectors,
    index_vectors,
)
from sharding.digests import Digests, Match, match_committed
from sharding.errors import ObjectNotFound, StateError
from sharding.progress import (
    READABLE_FORMATS,
    FailureChunk,
    FailureLog,
    FailureRecord,
    ManifestSegment,
    Progress,
    ShardRecord,
)
from sharding.storage import Storage

__all__ = [
    "CommittedShard",
    "committed_ids",
    "committed_index",
    "committed_vectors",
    "fetch_committed",
    "get_verified",
    "list_failures",
    "load_shard",
    "read_failure_log",
    "read_progress",
    "require_progress",
    "shard_records",
]


def read_progress(storage: Storage) -> Progress | None:
    """The last commit, or None for a store nothing was ever committed to."""
    try:
        data = storage.get(names.PROGRESS)
    except ObjectNotFound:
        return None
    # The version first: a newer format may hold fields this reader would call invalid.
    version = _format_version(data)
    if version is not None and version not in READABLE_FORMATS:
        raise StateError(
            f"{names.PROGRESS} in {storage.describe()} has format {version}; this "
            f"faiss-builder reads formats {', '.join(map(str, READABLE_FORMATS))}"
        )
    try:
        return Progress.model_validate_json(data)
    except ValidationError as exc:
        raise StateError(f"{names.PROGRESS} in {storage.describe()} is not valid: {exc}") from exc


def _format_version(data: bytes) -> object:
    """progress.json's format_version, or None when it is not a JSON object that has one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return document.get("format_version") if isinstance(document, dict) else None


def require_progress(storage: Storage) -> Progress:
    progress = read_progress(storage)
    if progress is None:
        raise StateError(f"{storage.describe()} has no {names.PROGRESS}: nothing was committed")
    return progress


Fetch = Callable[[str], bytes]


def fetch_committed(fetch: Fetch, name: str) -> bytes:
    """An object progress.json names; missing is a StateError (the store is damaged)."""
    try:
        return fetch(name)
    except ObjectNotFound as exc:
        raise StateError(f"{name} is named by {names.PROGRESS} but missing") from exc


def get_verified(storage: Storage, name: str, digests: Digests) -> bytes:
    """An object's bytes, refused unless they are the committed ones."""
    data = fetch_committed(storage.get, name)
    match = match_committed(name, data, digests)
    if not match.committed:
        raise StateError(match.describe())
    return data


def shard_records(storage: Storage, progress: Progress, kind: str) -> list[ShardRecord]:
    """Every committed shard of a kind in shard order: rolled segments first, then the rest."""
    kp = progress.kinds.get(kind)
    if kp is None:
        raise StateError(f"kind {kind!r} was never committed to {storage.describe()}")
    records: list[ShardRecord] = []
    for ref in kp.segments:
        segment = ManifestSegment.model_validate_json(get_verified(storage, ref.name, ref.digests))
        records.extend(segment.shards)
    return records + list(kp.shards)


def list_failures(storage: Storage, progress: Progress | None = None) -> list[FailureRecord]:
    """All durable failure records (id, reason, message, kinds, run), oldest first.

    Per-kind runs record one failure per product per run: an id can appear more than once
    (sharding.failures.failed_ids groups them).
    """
    progress = progress or read_progress(storage)
    if progress is None:
        return []
    return read_failure_log(storage, progress.failures)


def read_failure_log(storage: Storage, log: FailureLog) -> list[FailureRecord]:
    """The records of a failure log: its chunks (each verified) then the recent ones."""
    records: list[FailureRecord] = []
    for ref in log.chunks:
        chunk = FailureChunk.model_validate_json(get_verified(storage, ref.name, ref.digests))
        records.extend(chunk.failures)
    return records + list(log.recent)


@dataclass
class CommittedShard:
    """A shard as committed: its (n, dim) vectors and ids; `trimmed` if an uncommitted tail was cut."""

    vectors: np.ndarray
    ids: list[ProductId]
    trimmed: bool


def load_shard(storage: Storage, record: ShardRecord, dim: int) -> CommittedShard:
    """Read a committed shard; an open shard overwritten by an uncommitted run is truncated back."""
    data = fetch_committed(storage.get, record.name)
    vectors, trimmed_vectors = committed_vectors(
        data, record, dim, match_committed(record.name, data, record.index_digests)
    )
    id_data = fetch_committed(storage.get, record.id_map)
    ids, trimmed_ids = committed_ids(
        id_data, record, match_committed(record.id_map, id_data, record.id_map_digests)
    )
    return CommittedShard(vectors, ids, trimmed_vectors or trimmed_ids)


def committed_vectors(
    data: bytes, record: ShardRecord, dim: int, match: Match
) -> tuple[np.ndarray, bool]:
    """The committed (record.vectors, dim) float32 vectors of a shard file; `trimmed` as below.

    `match` is match_committed's answer for `data`. The committed file itself is read as a
    zero-copy view of `data`, not decoded by faiss: a faiss decode costs a zero-filled
    allocation and a copy per shard for the same floats.
    """
    if match.committed:
        view = flat_ip_vectors(data, dim, record.vectors)
        if view is not None:
            return view, False
    index, trimmed = committed_index(data, record, dim, match)
    if index.ntotal != record.vectors:
        raise StateError(f"{record.name}: {index.ntotal} vectors, {record.vectors} committed")
    return index_vectors(index), trimmed


def committed_index(
    data: bytes, record: ShardRecord, dim: int, match: Match
) -> tuple[faiss.Index, bool]:
    """The committed index of a shard file, an uncommitted tail cut off (open shards only)."""
    if not match.committed and (record.sealed or _digest_disagrees(match)):
        raise StateError(match.describe() + (" (sealed shard)" if record.sealed else ""))
    try:
        index = decode_index(data)
    except RuntimeError as exc:
        raise StateError(f"{record.name}: not a readable FAISS index ({exc})") from exc
    if index.d != dim:
        raise StateError(f"{record.name}: dimension {index.d}, committed dimension {dim}")
    if match.committed:
        return index, False
    if index.ntotal < record.vectors:
        raise StateError(f"{record.name}: {index.ntotal} vectors, {record.vectors} committed")
    kept = encode_index(index_vectors(index)[: record.vectors], dim)
    kept_match = match_committed(record.name, kept, record.index_digests, audit=match.audit)
    if not kept_match.committed:
        raise StateError(f"{record.name}: committed part differs from the commit's checksum")
    return decode_index(kept), True


def committed_ids(data: bytes, record: ShardRecord, match: Match) -> tuple[list[ProductId], bool]:
    """The committed ids of an id-map file (an uncommitted tail cut off); `match` as above."""
    if not match.committed and (record.sealed or _digest_disagrees(match)):
        raise StateError(match.describe() + (" (sealed shard)" if record.sealed else ""))
    try:
        ids = decode_ids(data)
    except ValueError as exc:
        raise StateError(f"{record.id_map}: not a JSON id array ({exc})") from exc
    if match.committed:
        return ids, False
    kept = ids[: record.vectors]
    kept_match = match_committed(
        record.id_map, encode_ids(kept), record.id_map_digests, audit=match.audit
    )
    if len(ids) < record.vectors or not kept_match.committed:
        raise StateError(f"{record.id_map}: committed part differs from the commit's checksum")
    return kept, True


def _digest_disagrees(match: Match) -> bool:
    """One digest matches the whole object and the other does not: an edited record, not a tail."""
    return {match.xxh3, match.sha256} == {True, False}
