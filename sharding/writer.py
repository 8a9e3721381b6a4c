"""The shard writer: append per kind, seal before the limits, commit with progress.json last."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sharding import names
from sharding.codec import (
    ProductId,
    decode_ids,
    encode_ids,
    encode_index,
    sha256_hex,
    shard_capacity,
    xxh3_hex,
)
from sharding.errors import ResumeRefused, StateError
from sharding.progress import (
    FORMAT_VERSION,
    UNKNOWN_BRAND,
    FailureChunk,
    FailureChunkRef,
    FailureLog,
    FailureRecord,
    KindProgress,
    ManifestSegment,
    Progress,
    SegmentRef,
    ShardRecord,
)
from sharding.state import (
    get_verified,
    list_failures,
    load_shard,
    read_progress,
    shard_records,
)
from sharding.storage import CrashingStorage, Storage

_KIND_NAME = re.compile(r"^[a-z][a-z_]*$")
_CHUNK_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class BuildConfig:
    """What a build promises to keep constant across resumes."""

    embedder: str
    model: str
    dims: Mapping[str, int]
    shard_max_vectors: int = 1000
    shard_max_bytes: int = 45_000_000

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("BuildConfig.dims names no kind to build")
        for kind, dim in self.dims.items():
            if not _KIND_NAME.match(kind) or dim < 1:
                raise ValueError(f"bad kind/dimension {kind!r}: {dim}")
            if self.capacity(kind) < 1:
                raise ValueError(
                    f"shard_max_bytes {self.shard_max_bytes} is below one {dim}-d vector"
                )

    def capacity(self, kind: str) -> int:
        return shard_capacity(self.dims[kind], self.shard_max_vectors, self.shard_max_bytes)


@dataclass(frozen=True)
class RollupLimits:
    """How many records progress.json keeps inline before rolling them into immutable objects."""

    segment_shards: int = 100
    failure_chunk: int = 200
    message_chars: int = 500


@dataclass(frozen=True)
class FailedProduct:
    id: ProductId
    reason: str
    message: str = ""


@dataclass
class EmbeddedBatch:
    """One catalog batch after embedding: the successful products (aligned) and the failures."""

    ids: list[ProductId]
    brands: list[str | None]
    vectors: dict[str, np.ndarray]
    failures: list[FailedProduct] = field(default_factory=list)
    last_id: ProductId | None = None  # largest catalog id covered; None: largest id seen here

    def covered_until(self) -> ProductId:
        if self.last_id is not None:
            return self.last_id
        seen = [*self.ids, *(f.id for f in self.failures)]
        if not seen:
            raise ValueError("an empty EmbeddedBatch needs last_id")
        return max(seen)  # type: ignore[type-var]


def _after(product_id: ProductId, cursor: ProductId | None) -> bool:
    return cursor is None or product_id > cursor  # type: ignore[operator]


@dataclass
class _Shard:
    number: int
    vectors: np.ndarray
    ids: list[ProductId]

    def extend(self, ids: Sequence[ProductId], vectors: np.ndarray) -> None:
        self.ids.extend(ids)
        self.vectors = np.concatenate([self.vectors, vectors])

    def encode(self) -> tuple[bytes, bytes]:
        return encode_index(self.vectors, self.vectors.shape[1]), encode_ids(self.ids)

    def record(self, index_bytes: bytes, id_bytes: bytes, kind: str, sealed: bool) -> ShardRecord:
        if len(self.ids) != len(self.vectors):
            raise StateError(
                f"{kind} shard {self.number}: {len(self.vectors)} vectors, {len(self.ids)} ids"
            )
        return ShardRecord(
            number=self.number,
            name=names.shard_index(kind, self.number),
            id_map=names.shard_id_map(kind, self.number),
            vectors=len(self.ids),
            sha256=sha256_hex(index_bytes),
            id_map_sha256=sha256_hex(id_bytes),
            xxh3=xxh3_hex(index_bytes),
            id_map_xxh3=xxh3_hex(id_bytes),
            sealed=sealed,
        )


@dataclass
class _KindState:
    """The working (not yet committed) state of one kind."""

    kind: str
    dim: int
    capacity: int
    cursor: ProductId | None
    total: int
    brands: Counter[str]
    segments: list[SegmentRef]
    sealed: list[ShardRecord]  # sealed records not rolled into a segment yet
    open: _Shard
    open_record: ShardRecord | None  # the open shard as last written
    open_dirty: bool = False
    uploads: dict[str, bytes] = field(default_factory=dict)  # sealed objects not written yet

    def append(self, ids: Sequence[ProductId], vectors: np.ndarray, brands: Sequence[str]) -> None:
        start = 0
        while start < len(ids):
            take = min(self.capacity - len(self.open.ids), len(ids) - start)
            self.open.extend(ids[start : start + take], vectors[start : start + take])
            self.open_dirty = True
            start += take
            if len(self.open.ids) == self.capacity:
                self._seal()
        self.total += len(ids)
        self.brands.update(brands)

    def _seal(self) -> None:
        index_bytes, id_bytes = self.open.encode()
        record = self.open.record(index_bytes, id_bytes, self.kind, sealed=True)
        self.uploads[record.name] = index_bytes
        self.uploads[record.id_map] = id_bytes
        self.sealed.append(record)
        self.open = _Shard(self.open.number + 1, np.zeros((0, self.dim), np.float32), [])
        self.open_record, self.open_dirty = None, False

    def snapshot(self) -> KindProgress:
        shards = [*self.sealed, *([self.open_record] if self.open_record else [])]
        return KindProgress(
            dim=self.dim,
            cursor=self.cursor,
            total_vectors=self.total,
            vectors_per_brand=dict(sorted(self.brands.items())),
            segments=list(self.segments),
            shards=shards,
        )

    def assert_aligned(self) -> None:
        """Counts must agree in memory after every commit (no re-download)."""
        counted = sum(s.vectors for s in self.segments) + sum(r.vectors for r in self.sealed)
        counted += len(self.open.ids)
        if len(self.open.ids) != len(self.open.vectors) or counted != self.total:
            raise StateError(
                f"{self.kind}: {counted} vectors in shards, {len(self.open.ids)} open ids, "
                f"{self.total} counted: id maps and vectors disagree"
            )


class IndexWriter:
    """Appends embedded batches to the shards of each kind and commits them exactly once."""

    def __init__(
        self,
        storage: Storage,
        config: BuildConfig,
        run_id: str,
        progress: Progress,
        kinds: dict[str, _KindState],
        before_commit: Callable[[], None] | None,
        rollup: RollupLimits,
    ) -> None:
        self.storage = storage
        self.config = config
        self.run_id = run_id
        self.progress = progress
        self._kinds = kinds
        self._before_commit = before_commit
        self._rollup = rollup
        self._failures = progress.failures.model_copy(deep=True)
        self._inflight: Progress | None = None

    @classmethod
    def open(
        cls,
        storage: Storage,
        config: BuildConfig,
        *,
        run_id: str,
        crash_after_writes: int | None = None,
        crash_when: Literal["before", "after"] = "before",
        before_commit: Callable[[], None] | None = None,
        rollup: RollupLimits | None = None,
    ) -> IndexWriter:
        """Read progress.json as the truth, refuse a mismatching resume, restore open shards."""
        committed = read_progress(storage)
        if committed is not None:
            check_resume(committed, config, storage.describe())
        if committed is not None:
            verify_committed(storage, committed, list(config.dims))
        progress = committed or _empty_progress(config, run_id)
        if crash_after_writes is not None:
            storage = CrashingStorage(storage, crash_after_writes, crash_when)
        kinds = {kind: _restore_kind(storage, progress, config, kind) for kind in config.dims}
        return cls(
            storage, config, run_id, progress, kinds, before_commit, rollup or RollupLimits()
        )

    def cursor(self, kind: str) -> ProductId | None:
        """The committed-or-pending cursor of a kind this run builds (None: nothing covered)."""
        return self._kinds[kind].cursor

    def resume_after(self) -> ProductId | None:
        """Smallest cursor over the run's kinds: the catalog must be read from just after it."""
        cursors = [state.cursor for state in self._kinds.values()]
        if any(c is None for c in cursors):
            return None
        return min(cursors)  # type: ignore[type-var]

    def add_batch(self, batch: EmbeddedBatch) -> None:
        """Append, per kind, the products past that kind's cursor; upload shards sealed here."""
        until = self._validate(batch)
        # All in-memory changes first, uploads last: a retried add_batch then skips what landed.
        self._record_failures(batch.failures)
        for state in self._kinds.values():
            self._append(state, batch, until)
        self._flush_sealed()

    def retry_failed(self, batch: EmbeddedBatch) -> list[ProductId]:
        """Index recorded failures that now embed, in the kinds they failed in; keep the rest.

        `batch.ids` are products that embedded this time and `batch.failures` the ones that
        failed again; all must be recorded failures. The failure log is rewritten into chunks
        with new names (the committed ones stay until a commit no longer names them), so this
        costs O(failures): it runs only when a user asks for it. Returns the ids indexed.
        """
        self._validate(batch)
        records = self.failures()
        failed_in: dict[ProductId, set[str]] = {}
        for record in records:  # per-kind runs each record their own failure of one product
            failed_in.setdefault(record.id, set()).update(record.kinds)
        strangers = [
            pid for pid in [*batch.ids, *(f.id for f in batch.failures)] if pid not in failed_in
        ]
        if strangers:
            raise ValueError(f"retry_failed: {strangers[:5]!r} are not recorded failures")
        fixed: dict[ProductId, set[str]] = {}
        for state in self._kinds.values():
            rows = [i for i, pid in enumerate(batch.ids) if state.kind in failed_in[pid]]
            vectors = np.asarray(batch.vectors[state.kind][rows], dtype=np.float32)
            brands = [batch.brands[i] or UNKNOWN_BRAND for i in rows]
            state.append([batch.ids[i] for i in rows], vectors, brands)
            for i in rows:
                fixed.setdefault(batch.ids[i], set()).add(state.kind)
        again = {f.id: f for f in batch.failures}
        kept = self._still_failed(records, fixed, again)
        self._failures = FailureLog(total=len(kept), recent=kept)
        self._flush_sealed()
        return [pid for pid in batch.ids if pid in fixed]

    def failures(self) -> list[FailureRecord]:
        """Every failure this writer knows: committed chunks (verified) and the recent ones."""
        return list_failures(
            self.storage, self.progress.model_copy(update={"failures": self._failures})
        )

    def _still_failed(
        self,
        records: Sequence[FailureRecord],
        fixed: Mapping[ProductId, set[str]],
        again: Mapping[ProductId, FailedProduct],
    ) -> list[FailureRecord]:
        kept = []
        for record in records:
            kinds = [kind for kind in record.kinds if kind not in fixed.get(record.id, set())]
            if not kinds:
                continue
            update: dict[str, object] = {"kinds": kinds}
            if record.id in again:
                failure = again[record.id]
                message = failure.message[: self._rollup.message_chars]
                update |= {"reason": failure.reason, "message": message, "run_id": self.run_id}
            kept.append(record.model_copy(update=update))
        return kept

    def commit(self) -> Progress:
        """Write what changed, check the lease, write progress.json last, assert the counts."""
        self._resolve_inflight()
        self._write_changed_objects()
        candidate = self._snapshot(self.progress.commit_seq + 1)
        if self.progress.commit_seq > 0 and _same_state(candidate, self.progress):
            return self.progress
        self._guard()
        self._inflight = candidate
        self.storage.put(names.PROGRESS, candidate.to_bytes())
        self._inflight, self.progress = None, candidate
        for state in self._kinds.values():
            state.assert_aligned()
        return candidate

    def finish(self) -> Progress:
        """Commit, refresh the seed-compatible id_map_{kind}.json, remove uncommitted leftovers."""
        progress = self.commit()
        self._guard()  # deleting "leftovers" of a run that took our lease would break its commit
        for kind in self._kinds:
            ids = _all_ids(self.storage, progress, kind)
            self.storage.put(names.full_id_map(kind), encode_ids(ids))
        self.storage.delete(uncommitted_objects(self.storage.list(), progress, list(self._kinds)))
        return progress

    def _validate(self, batch: EmbeddedBatch) -> ProductId:
        n = len(batch.ids)
        if len(batch.brands) != n or len(set(batch.ids)) != n:
            raise ValueError("EmbeddedBatch: ids must be unique and aligned with brands")
        for kind, dim in self.config.dims.items():
            array = batch.vectors.get(kind)
            if array is None or array.shape != (n, dim):
                got = None if array is None else array.shape
                raise ValueError(f"EmbeddedBatch: {kind} vectors must be ({n}, {dim}), got {got}")
        until = batch.covered_until()
        if any(_after(pid, until) for pid in [*batch.ids, *(f.id for f in batch.failures)]):
            raise ValueError(f"EmbeddedBatch: ids past last_id {until!r}")
        return until

    def _record_failures(self, failures: Sequence[FailedProduct]) -> None:
        for failure in failures:
            kinds = [k for k, state in self._kinds.items() if _after(failure.id, state.cursor)]
            if kinds:
                message = failure.message[: self._rollup.message_chars]
                record = FailureRecord(
                    id=failure.id,
                    reason=failure.reason,
                    message=message,
                    kinds=kinds,
                    run_id=self.run_id,
                )
                self._failures.recent.append(record)
                self._failures.total += 1

    def _append(self, state: _KindState, batch: EmbeddedBatch, until: ProductId) -> None:
        ids, vectors, brands = batch.ids, batch.vectors[state.kind], batch.brands
        if batch.ids and not _after(min(batch.ids), state.cursor):  # type: ignore[type-var]
            rows = [i for i, pid in enumerate(batch.ids) if _after(pid, state.cursor)]
            ids, vectors, brands = [ids[i] for i in rows], vectors[rows], [brands[i] for i in rows]
        # The common case (a fresh batch) takes no per-row Python work and no copy here.
        state.append(
            ids, np.asarray(vectors, dtype=np.float32), [b or UNKNOWN_BRAND for b in brands]
        )
        if _after(until, state.cursor):
            state.cursor = until

    def _guard(self) -> None:
        """The lease check (before_commit) before any write a newer lease holder may own.

        Open and sealed shard names are shared with whoever resumes after us: a writer whose lease
        expired must not overwrite them, not only not commit (its bytes would break that run's
        committed sha256s).
        """
        if self._before_commit is not None:
            self._before_commit()

    def _flush_sealed(self, *, guarded: bool = False) -> None:
        if not guarded and any(state.uploads for state in self._kinds.values()):
            self._guard()
        for state in self._kinds.values():
            for name in list(state.uploads):
                self.storage.put(name, state.uploads[name])
                del state.uploads[name]

    def _write_changed_objects(self) -> None:
        if self._has_changes():
            self._guard()
        self._flush_sealed(guarded=True)
        for state in self._kinds.values():
            self._write_open_shard(state)
            self._roll_segments(state)
        self._roll_failures()

    def _has_changes(self) -> bool:
        size = self._rollup
        return (
            any(
                state.uploads or state.open_dirty or len(state.sealed) >= size.segment_shards
                for state in self._kinds.values()
            )
            or len(self._failures.recent) >= size.failure_chunk
        )

    def _write_open_shard(self, state: _KindState) -> None:
        if not state.open_dirty:
            return
        index_bytes, id_bytes = state.open.encode()
        record = state.open.record(index_bytes, id_bytes, state.kind, sealed=False)
        self.storage.put(record.name, index_bytes)
        self.storage.put(record.id_map, id_bytes)
        state.open_record, state.open_dirty = record, False

    def _roll_segments(self, state: _KindState) -> None:
        size = self._rollup.segment_shards
        while len(state.sealed) >= size:
            records = state.sealed[:size]
            name = names.manifest_segment(state.kind, len(state.segments) + 1)
            data = ManifestSegment(kind=state.kind, shards=records).model_dump_json().encode()
            self.storage.put(name, data)
            state.segments.append(_segment_ref(name, data, records))
            state.sealed = state.sealed[size:]

    def _roll_failures(self) -> None:
        size = self._rollup.failure_chunk
        while len(self._failures.recent) >= size:
            records = self._failures.recent[:size]
            name = names.failure_chunk(self._next_failure_chunk())
            data = FailureChunk(failures=records).model_dump_json().encode()
            self.storage.put(name, data)
            self._failures.chunks.append(
                FailureChunkRef(name=name, sha256=sha256_hex(data), count=size)
            )
            self._failures.recent = self._failures.recent[size:]

    def _next_failure_chunk(self) -> int:
        """Never reuse a chunk name the committed progress.json still names (retry rewrites)."""
        refs = [*self.progress.failures.chunks, *self._failures.chunks]
        return 1 + max((int(_CHUNK_NUMBER.findall(ref.name)[-1]) for ref in refs), default=0)

    def _resolve_inflight(self) -> None:
        """A progress.json write that raised may still have landed: adopt it instead of guessing."""
        if self._inflight is None:
            return
        landed = read_progress(self.storage)
        inflight, self._inflight = self._inflight, None
        if landed and (landed.commit_seq, landed.run_id) == (inflight.commit_seq, inflight.run_id):
            self.progress = landed

    def _snapshot(self, commit_seq: int) -> Progress:
        kinds = dict(self.progress.kinds)
        kinds.update({kind: state.snapshot() for kind, state in self._kinds.items()})
        return Progress(
            format_version=FORMAT_VERSION,
            commit_seq=commit_seq,
            run_id=self.run_id,
            embedder=self.config.embedder,
            model=self.config.model,
            shard_max_vectors=self.config.shard_max_vectors,
            shard_max_bytes=self.config.shard_max_bytes,
            kinds=dict(sorted(kinds.items())),
            failures=self._failures.model_copy(deep=True),
        )


def check_resume(progress: Progress, config: BuildConfig, where: str) -> None:
    """Refuse to mix vector spaces or shard limits; raises ResumeRefused naming each difference."""
    wanted = {
        "embedder": (progress.embedder, config.embedder),
        "model": (progress.model, config.model),
        "shard_max_vectors": (progress.shard_max_vectors, config.shard_max_vectors),
        "shard_max_bytes": (progress.shard_max_bytes, config.shard_max_bytes),
    }
    for kind, dim in config.dims.items():
        if kind in progress.kinds:
            wanted[f"{kind} dimension"] = (progress.kinds[kind].dim, dim)
    diffs = [
        f"{key} {old!r} (this run: {new!r})" for key, (old, new) in wanted.items() if old != new
    ]
    if diffs:
        raise ResumeRefused(
            f"refusing to resume {where}: it was built with "
            + "; ".join(diffs)
            + ". Use a new store, or run with the settings it was built with."
        )


def verify_committed(
    storage: Storage, progress: Progress, kinds: Sequence[str], workers: int = 8
) -> None:
    """Refuse to build on damage: every committed sealed object of these kinds, and every failure
    chunk, must exist and hash to its commit (open shards are checked when restored).

    This reads the sealed shards once per run (not per checkpoint): the price of never extending
    a store whose committed part is corrupted.
    """
    try:
        records = [
            r for k in kinds if k in progress.kinds for r in shard_records(storage, progress, k)
        ]
        listed = set(storage.list())
        missing = [n for r in records for n in (r.name, r.id_map) if n not in listed]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise StateError(f"{missing[0]} is named by {names.PROGRESS} but missing{more}")

        def verify(record: ShardRecord) -> None:
            get_verified(storage, record.name, record.index_matches)
            get_verified(storage, record.id_map, record.id_map_matches)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(verify, [r for r in records if r.sealed]))
        list_failures(storage, progress)
    except StateError as exc:
        raise StateError(
            f"refusing to resume {storage.describe()}: {exc}; nothing was written "
            "(`faiss-builder check` reports every problem)"
        ) from exc


def uncommitted_objects(
    listed: Sequence[str], progress: Progress, kinds: Sequence[str]
) -> list[str]:
    """Layout objects of these kinds (and failure chunks) that no commit refers to."""
    last_shard = {k: progress.kinds[k].last_shard_number() for k in kinds if k in progress.kinds}
    segments = {k: len(progress.kinds[k].segments) for k in kinds if k in progress.kinds}
    # A retry rewrites the failure log under new numbers: a chunk is stale unless named.
    chunks = {ref.name for ref in progress.failures.chunks}
    leftovers = []
    for name in listed:
        parsed = names.parse(name)
        if parsed is None or parsed.number is None:
            continue
        if parsed.role == "failed":
            stale = name not in chunks
        elif parsed.kind not in kinds:
            continue
        elif parsed.role == "manifest":
            stale = parsed.number > segments.get(parsed.kind or "", 0)
        else:
            stale = parsed.number > last_shard.get(parsed.kind or "", 0)
        if stale:
            leftovers.append(name)
    return leftovers


def _empty_progress(config: BuildConfig, run_id: str) -> Progress:
    return Progress(
        commit_seq=0,
        run_id=run_id,
        embedder=config.embedder,
        model=config.model,
        shard_max_vectors=config.shard_max_vectors,
        shard_max_bytes=config.shard_max_bytes,
    )


def _restore_kind(
    storage: Storage, progress: Progress, config: BuildConfig, kind: str
) -> _KindState:
    dim = config.dims[kind]
    kp = progress.kinds.get(kind) or KindProgress(dim=dim)
    open_record = kp.open_shard()
    shard = _Shard(kp.last_shard_number() + 1, np.zeros((0, dim), np.float32), [])
    trimmed = False
    if open_record is not None:
        committed = load_shard(storage, open_record, dim)
        shard = _Shard(open_record.number, committed.vectors, committed.ids)
        trimmed = committed.trimmed
    return _KindState(
        kind=kind,
        dim=dim,
        capacity=config.capacity(kind),
        cursor=kp.cursor,
        total=kp.total_vectors,
        brands=Counter(kp.vectors_per_brand),
        segments=list(kp.segments),
        sealed=[r for r in kp.shards if r.sealed],
        open=shard,
        open_record=open_record,
        # An uncommitted run overwrote the open shard: rewrite it to the committed bytes.
        open_dirty=trimmed,
    )


def _segment_ref(name: str, data: bytes, records: Sequence[ShardRecord]) -> SegmentRef:
    return SegmentRef(
        name=name,
        sha256=sha256_hex(data),
        shards=len(records),
        vectors=sum(r.vectors for r in records),
        first_shard=records[0].number,
        last_shard=records[-1].number,
    )


def _same_state(candidate: Progress, committed: Progress) -> bool:
    volatile = {"commit_seq", "run_id", "written_at"}
    return candidate.model_dump(exclude=volatile) == committed.model_dump(exclude=volatile)


def _all_ids(storage: Storage, progress: Progress, kind: str, workers: int = 8) -> list[ProductId]:
    records = shard_records(storage, progress, kind)

    def read(record: ShardRecord) -> list[ProductId]:
        return decode_ids(get_verified(storage, record.id_map, record.id_map_matches))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [pid for ids in pool.map(read, records) for pid in ids]
