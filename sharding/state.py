"""Reading the committed state: progress.json, manifest segments, failure chunks, shards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
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
    sha256_hex,
)
from sharding.errors import ObjectNotFound, StateError
from sharding.progress import (
    READABLE_FORMATS,
    FailureChunk,
    FailureRecord,
    ManifestSegment,
    Progress,
    ShardRecord,
)
from sharding.storage import Storage


def read_progress(storage: Storage) -> Progress | None:
    """The last commit, or None for a store nothing was ever committed to."""
    try:
        data = storage.get(names.PROGRESS)
    except ObjectNotFound:
        return None
    try:
        progress = Progress.model_validate_json(data)
    except ValidationError as exc:
        raise StateError(f"{names.PROGRESS} in {storage.describe()} is not valid: {exc}") from exc
    if progress.format_version not in READABLE_FORMATS:
        raise StateError(
            f"{names.PROGRESS} in {storage.describe()} has format {progress.format_version}; this "
            f"faiss-builder reads formats {', '.join(map(str, READABLE_FORMATS))}"
        )
    return progress


def require_progress(storage: Storage) -> Progress:
    progress = read_progress(storage)
    if progress is None:
        raise StateError(f"{storage.describe()} has no {names.PROGRESS}: nothing was committed")
    return progress


DIFFERS = f"bytes differ from the ones committed in {names.PROGRESS}"


def get_verified(storage: Storage, name: str, matches: Callable[[bytes], bool]) -> bytes:
    """An object's bytes, refused unless `matches` says they are the committed ones."""
    data = fetch_committed(storage.get, name)
    if not matches(data):
        raise StateError(f"{name}: {DIFFERS}")
    return data


def sha256_is(sha256: str) -> Callable[[bytes], bool]:
    """A `matches` for objects committed by sha256 only (manifest segments, failure chunks)."""
    return lambda data: sha256_hex(data) == sha256


def shard_records(storage: Storage, progress: Progress, kind: str) -> list[ShardRecord]:
    """Every committed shard of a kind in shard order: rolled segments first, then the rest."""
    kp = progress.kinds.get(kind)
    if kp is None:
        raise StateError(f"kind {kind!r} was never committed to {storage.describe()}")
    records: list[ShardRecord] = []
    for ref in kp.segments:
        segment = ManifestSegment.model_validate_json(
            get_verified(storage, ref.name, sha256_is(ref.sha256))
        )
        records.extend(segment.shards)
    return records + list(kp.shards)


def list_failures(storage: Storage, progress: Progress | None = None) -> list[FailureRecord]:
    """All durable failures (id, reason, message, kinds, run), oldest first."""
    progress = progress or read_progress(storage)
    if progress is None:
        return []
    failures: list[FailureRecord] = []
    for ref in progress.failures.chunks:
        chunk = FailureChunk.model_validate_json(
            get_verified(storage, ref.name, sha256_is(ref.sha256))
        )
        failures.extend(chunk.failures)
    return failures + list(progress.failures.recent)


@dataclass
class CommittedShard:
    """A shard as committed: its (n, dim) vectors and ids; `trimmed` if an uncommitted tail was cut."""

    vectors: np.ndarray
    ids: list[ProductId]
    trimmed: bool


Fetch = Callable[[str], bytes]


def load_shard(
    storage: Storage, record: ShardRecord, dim: int, fetch: Fetch | None = None
) -> CommittedShard:
    """Read a committed shard; an open shard overwritten by an uncommitted run is truncated back."""
    fetch = fetch or storage.get
    vectors, trimmed_vectors = committed_vectors(fetch_committed(fetch, record.name), record, dim)
    ids, trimmed_ids = committed_ids(fetch_committed(fetch, record.id_map), record)
    return CommittedShard(vectors, ids, trimmed_vectors or trimmed_ids)


def fetch_committed(fetch: Fetch, name: str) -> bytes:
    """An object progress.json names; missing is a StateError (the store is damaged)."""
    try:
        return fetch(name)
    except ObjectNotFound as exc:
        raise StateError(f"{name} is named by {names.PROGRESS} but missing") from exc


def committed_vectors(
    data: bytes, record: ShardRecord, dim: int, *, exact: bool | None = None
) -> tuple[np.ndarray, bool]:
    """The committed (record.vectors, dim) float32 vectors of a shard file; `trimmed` as below.

    `exact` says data is already known to hash to the committed sha256 (None: hash it here).
    The committed file itself is read as a zero-copy view of `data`, not decoded by faiss: a
    faiss decode costs a zero-filled allocation and a copy per shard for the same floats.
    """
    if exact is None:
        exact = record.index_matches(data)
    if exact:
        view = flat_ip_vectors(data, dim, record.vectors)
        if view is not None:
            return view, False
    index, trimmed = committed_index(data, record, dim, exact=exact)
    if index.ntotal != record.vectors:
        raise StateError(f"{record.name}: {index.ntotal} vectors, {record.vectors} committed")
    return index_vectors(index), trimmed


def committed_index(
    data: bytes, record: ShardRecord, dim: int, *, exact: bool | None = None
) -> tuple[faiss.Index, bool]:
    """The committed index of a shard file, an uncommitted tail cut off; `exact` as above."""
    if exact is None:
        exact = record.index_matches(data)
    if not exact and record.sealed:
        raise StateError(f"{record.name}: {DIFFERS} (sealed shard)")
    try:
        index = decode_index(data)
    except RuntimeError as exc:
        raise StateError(f"{record.name}: not a readable FAISS index ({exc})") from exc
    if index.d != dim:
        raise StateError(f"{record.name}: dimension {index.d}, committed dimension {dim}")
    if exact:
        return index, False
    if index.ntotal < record.vectors:
        raise StateError(f"{record.name}: {index.ntotal} vectors, {record.vectors} committed")
    kept = encode_index(index_vectors(index)[: record.vectors], dim)
    if not record.index_matches(kept):
        raise StateError(f"{record.name}: committed part differs from the commit's checksum")
    return decode_index(kept), True


def committed_ids(
    data: bytes, record: ShardRecord, *, exact: bool | None = None
) -> tuple[list[ProductId], bool]:
    """The committed ids of an id-map file; `exact` as for committed_vectors."""
    if exact is None:
        exact = record.id_map_matches(data)
    if not exact and record.sealed:
        raise StateError(f"{record.id_map}: {DIFFERS} (sealed shard)")
    try:
        ids = decode_ids(data)
    except ValueError as exc:
        raise StateError(f"{record.id_map}: not a JSON id array ({exc})") from exc
    if exact:
        return ids, False
    kept = ids[: record.vectors]
    if len(ids) < record.vectors or not record.id_map_matches(encode_ids(kept)):
        raise StateError(f"{record.id_map}: committed part differs from the commit's checksum")
    return kept, True
