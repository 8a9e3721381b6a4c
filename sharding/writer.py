"""The shard writer: append per kind, seal before the limits, commit with progress.json last.

The failure log lives in sharding.failures, resume checks and the verification of what a run
builds on in sharding.resume, the settings in sharding.config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
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
    refuse_inexact_id,
    sha256_hex,
    xxh3_hex,
)
from sharding.config import BuildConfig, RollupLimits
from sharding.errors import StateError
from sharding.failures import FailureJournal, FailureLike, failed_ids, kinds_by_product
from sharding.live import LiveSlots
from sharding.progress import (
    BRAND_CHARS,
    FORMAT_VERSION,
    UNKNOWN_BRAND,
    FailureRecord,
    KindProgress,
    ManifestSegment,
    Progress,
    SegmentRef,
    ShardRecord,
    SyncPosition,
)
from sharding.resume import (
    NOTHING_WRITTEN,
    check_not_rolled_back,
    check_resume,
    cursor_problem,
    last_commit_marker,
    uncommitted_objects,
    verify_sealed_id_maps,
)
from sharding.state import get_verified, load_shard, read_progress, shard_records
from sharding.storage import CrashingStorage, Storage
from sharding.tombstones import TombstoneJournal, dead_slots

# Application code imports these from here (application/session.py).
__all__ = ["BuildConfig", "EmbeddedBatch", "IndexWriter", "RollupLimits", "check_resume"]


@dataclass
class EmbeddedBatch:
    """One catalog batch after embedding: the successful products (aligned) and the failures.

    `failures` holds any objects with .id, .reason and .message (FailureLike).
    """

    ids: list[ProductId]
    brands: list[str | None]
    vectors: dict[str, np.ndarray]
    failures: Sequence[FailureLike] = field(default_factory=list)
    last_id: ProductId | None = None  # largest catalog id covered; None: largest id seen here
    #: A sync batch (changed catalog rows): in each kind, rows at or below the cursor are
    #: applied (a live id is replaced: its old slot dies; an id not live is inserted), rows above
    #: it are left to the append pass, and the cursor does not move. A failure kills the id's
    #: live slot (a wrong image is worse than none) and is recorded.
    changed: bool = False

    def covered_until(self) -> ProductId:
        if self.last_id is not None:
            return self.last_id
        seen = [*self.ids, *(f.id for f in self.failures)]
        if not seen:
            raise ValueError("an empty EmbeddedBatch needs last_id")
        return max(seen)  # type: ignore[type-var]


def _after(product_id: ProductId, cursor: ProductId | None) -> bool:
    return cursor is None or product_id > cursor  # type: ignore[operator]


def _brand(brand: str | None) -> str:
    """The brand as counted in vectors_per_brand: bounded, so one huge brand cannot bloat
    every progress.json (see docs/store-format.md)."""
    return UNKNOWN_BRAND if not brand else str(brand)[:BRAND_CHARS]


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

    def record(
        self, index_bytes: bytes, id_bytes: bytes, kind: str, sealed: bool, compaction: int = 0
    ) -> ShardRecord:
        if len(self.ids) != len(self.vectors):
            raise StateError(
                f"{kind} shard {self.number}: {len(self.vectors)} vectors, {len(self.ids)} ids"
            )
        return ShardRecord(
            number=self.number,
            name=names.shard_index(kind, self.number, compaction),
            id_map=names.shard_id_map(kind, self.number, compaction),
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
    max_id: ProductId | None
    total: int
    brands: Counter[str]
    segments: list[SegmentRef]
    sealed: list[ShardRecord]  # sealed records not rolled into a segment yet
    open: _Shard
    open_record: ShardRecord | None  # the open shard as last written
    open_dirty: bool = False
    uploads: dict[str, bytes] = field(default_factory=dict)  # sealed objects not written yet
    tombstones: TombstoneJournal = field(default_factory=lambda: TombstoneJournal(""))
    #: id -> live slot, built on first need (a replacement or delete): None until then.
    live: LiveSlots | None = None
    compaction: int = 0  # the kind's compaction (sharding.compact): its object names carry it

    def may_be_live(self, ids: Sequence[ProductId]) -> bool:
        """Whether any of these ids can have a live slot (cheap: no map for a fresh batch)."""
        if not ids:
            return False
        if self.live is not None:
            return True
        return self.max_id is not None and min(ids) <= self.max_id  # type: ignore[type-var,operator]

    def kill(self, ids: Iterable[ProductId]) -> list[ProductId]:
        """Make the live slot of each of these ids dead (needs the live map); the ids killed."""
        assert self.live is not None
        killed = []
        for pid in ids:
            slot = self.live.pop(pid)
            if slot is not None:
                self.tombstones.kill(slot)
                killed.append(pid)
        return killed

    def append(self, ids: Sequence[ProductId], vectors: np.ndarray, brands: Sequence[str]) -> None:
        """Append vectors; an id already live is a replacement (its old slot dies first), so
        no id is ever live twice in a kind."""
        if self.live is not None:
            self.kill(ids)
            for i, pid in enumerate(ids):
                self.live.add(pid, self.total + i)
        start = 0
        while start < len(ids):
            take = min(self.capacity - len(self.open.ids), len(ids) - start)
            self.open.extend(ids[start : start + take], vectors[start : start + take])
            self.open_dirty = True
            start += take
            if len(self.open.ids) >= self.capacity:
                self.seal()
        if ids:
            largest = max(ids)  # type: ignore[type-var]
            if self.max_id is None or largest > self.max_id:  # type: ignore[operator]
                self.max_id = largest
        self.total += len(ids)
        self.brands.update(brands)

    def seal(self) -> None:
        """Seal the open shard as it is (also when a smaller limit leaves it over the capacity)."""
        index_bytes, id_bytes = self.open.encode()
        record = self.open.record(index_bytes, id_bytes, self.kind, True, self.compaction)
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
            max_id=self.max_id,
            total_vectors=self.total,
            vectors_per_brand=dict(sorted(self.brands.items())),
            segments=list(self.segments),
            shards=shards,
            dead=self.tombstones.dead,
            tombstones=list(self.tombstones.chunks),
            recent_dead=list(self.tombstones.recent),
            compaction=self.compaction,
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
        self._failures = FailureJournal(storage, progress.failures, run_id, rollup)
        self._inflight: Progress | None = None
        self.sync_position: SyncPosition | None = progress.sync

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
        """Read progress.json as the truth and refuse, before any write, a resume with other
        settings, a commit that contradicts itself or was rolled back; restore the open shards.

        Reads progress.json, last_commit.json and the open shard of each kind this run builds,
        nothing else (format 1/2 stores: their id maps once, for max_id). `check` audits the rest.
        """
        committed = read_progress(storage)
        if committed is not None:
            check_resume(committed, config, storage.describe())
            check_not_rolled_back(storage, committed)
        progress = committed or _empty_progress(config, run_id)
        if crash_after_writes is not None:
            storage = CrashingStorage(storage, crash_after_writes, crash_when)
        listed = set(storage.list()) if committed is not None else set()
        try:
            kinds = {
                kind: _restore_kind(storage, progress, config, kind, listed) for kind in config.dims
            }
        except StateError as exc:
            raise StateError(
                f"refusing to resume {storage.describe()}: {exc}; {NOTHING_WRITTEN}"
            ) from exc
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
        if batch.changed:
            failed = [f.id for f in batch.failures]
            for state in self._kinds.values():
                covered = [pid for pid in failed if not _after(pid, state.cursor)]
                if state.may_be_live(covered):
                    self._ensure_live(state)
                    state.kill(covered)
            # Re-embedded: no longer failed there; failed again: one fresh record, not two.
            self._failures.forget([*batch.ids, *failed], self._kinds_at_or_below_cursor)
            self._failures.record(batch.failures, self._kinds_at_or_below_cursor)
        else:
            self._failures.record(batch.failures, self._kinds_past_cursor)
        for state in self._kinds.values():
            self._append(state, batch, until)
        self._flush_sealed()

    def delete(self, ids: Iterable[ProductId]) -> dict[str, int]:
        """Make the live slots of these products dead in every kind this run builds (ids not
        live are ignored), and drop their failure records (a product gone from the catalog is no
        longer failed); committed by the next commit. Returns slots killed per kind."""
        wanted = list(ids)
        for product_id in wanted:
            refuse_inexact_id(product_id)
        self._failures.forget(wanted, self._kinds_at_or_below_cursor)
        killed = {}
        for kind, state in self._kinds.items():
            if state.may_be_live(wanted):
                self._ensure_live(state)
                killed[kind] = len(state.kill(wanted))
            else:
                killed[kind] = 0
        return killed

    def set_sync_position(
        self,
        updated_at: str,
        product_id: ProductId | None,
        window_from: str | None = None,
        seen: dict[str, list[str]] | None = None,
    ) -> None:
        """Record how far catalog changes are applied (and the overlap window re-read below it,
        application.sync); committed by the next commit, with the replacements and deletions
        made before it (so a resumed sync starts after them)."""
        self.sync_position = SyncPosition(
            updated_at=updated_at, id=product_id, window_from=window_from, seen=seen or {}
        )

    def is_live(self, kind: str, product_id: ProductId) -> bool:
        """Whether a product has a live vector in a kind this run builds (builds the live map)."""
        state = self._kinds[kind]
        self._ensure_live(state)
        assert state.live is not None
        return product_id in state.live

    def live_ids(self, kind: str) -> set[ProductId]:
        """The ids with a live vector in a kind this run builds (builds the live map)."""
        state = self._kinds[kind]
        self._ensure_live(state)
        assert state.live is not None
        return state.live.ids()

    def retry_failed(self, batch: EmbeddedBatch) -> list[ProductId]:
        """Index recorded failures that now embed, in the kinds they failed in; keep the rest.

        `batch.ids` are products that embedded this time and `batch.failures` the ones that
        failed again; all must be recorded failures (send each once: `failed_ids`). The failure
        log is rewritten into chunks with new names (the committed ones stay until a commit no
        longer names them), so this costs O(failures): it runs only when a user asks for it.
        Returns the ids indexed.
        """
        self._validate(batch)
        records = self.failures()
        failed_in = kinds_by_product(records)  # per-kind runs each record their own failure
        strangers = [
            pid for pid in [*batch.ids, *(f.id for f in batch.failures)] if pid not in failed_in
        ]
        if strangers:
            raise ValueError(f"retry_failed: {strangers[:5]!r} are not recorded failures")
        fixed: dict[ProductId, set[str]] = {}
        for state in self._kinds.values():
            rows = [i for i, pid in enumerate(batch.ids) if state.kind in failed_in[pid]]
            vectors = np.asarray(batch.vectors[state.kind][rows], dtype=np.float32)
            brands = [_brand(batch.brands[i]) for i in rows]
            retried = [batch.ids[i] for i in rows]
            if state.may_be_live(retried):
                self._ensure_live(state)
            state.append(retried, vectors, brands)
            for i in rows:
                fixed.setdefault(batch.ids[i], set()).add(state.kind)
        self._failures.settle_retry(records, fixed, batch.failures)
        self._flush_sealed()
        return [pid for pid in batch.ids if pid in fixed]

    def failures(self) -> list[FailureRecord]:
        """Every failure record this writer knows: committed chunks (verified) and recent ones.

        A product can have several records (one per kind run); `failed_ids` lists each once."""
        return self._failures.records()

    def failed_ids(self, kinds: Iterable[str] | None = None) -> list[ProductId]:
        """Each recorded failure once, oldest first, that failed in any of `kinds` (default:
        the kinds this run builds): the list to retry, in batches of any size."""
        return failed_ids(self.failures(), list(self._kinds) if kinds is None else kinds)

    def commit(self) -> Progress:
        """Write what changed, check the lease, write progress.json last, assert the counts."""
        self._resolve_inflight()
        self._write_changed_objects()
        candidate = self._snapshot(self.progress.commit_seq + 1)
        if self.progress.commit_seq > 0 and _same_state(candidate, self.progress):
            return self.progress
        self._guard()
        self._inflight = candidate
        data = candidate.to_bytes()
        self.storage.put(names.PROGRESS, data)
        self._inflight, self.progress = None, candidate
        # After the commit point: a crash before this leaves the marker one commit behind.
        self.storage.put(names.LAST_COMMIT, last_commit_marker(candidate, data))
        for state in self._kinds.values():
            state.assert_aligned()
        return candidate

    def finish(self) -> Progress:
        """Commit, refresh the seed-compatible id_map_{kind}.json, remove uncommitted leftovers."""
        progress = self.commit()
        self._guard()  # deleting "leftovers" of a run that took our lease would break its commit
        for kind in self._kinds:
            ids = _all_ids(self.storage, progress, kind)
            for slot in dead_slots(self.storage, progress.kinds[kind]):
                ids[slot] = None  # type: ignore[call-overload]  # readers see null: not live
            self.storage.put(names.full_id_map(kind), encode_ids(ids))
        self.storage.delete(uncommitted_objects(self.storage.list(), progress, list(self._kinds)))
        return progress

    def _kinds_past_cursor(self, product_id: ProductId) -> list[str]:
        return [k for k, state in self._kinds.items() if _after(product_id, state.cursor)]

    def _kinds_at_or_below_cursor(self, product_id: ProductId) -> list[str]:
        return [k for k, state in self._kinds.items() if not _after(product_id, state.cursor)]

    def _ensure_live(self, state: _KindState) -> None:
        """Build the kind's id -> live slot map from its committed id maps and dead slots.

        Reads every id map of the kind (about 8 bytes an id, already verified at open) and its
        tombstone chunks; held as sharding.live.LiveSlots (about 17 bytes an integer id), only
        in runs that replace or delete.
        """
        if state.live is not None:
            return
        ids: list[ProductId] = []
        for record in [*_segment_records(self.storage, state), *state.sealed]:
            data = state.uploads.get(record.id_map)
            if data is None:
                data = get_verified(self.storage, record.id_map, record.id_map_digests)
            ids.extend(decode_ids(data))
        ids.extend(state.open.ids)
        if len(ids) != state.total:
            raise StateError(f"{state.kind}: {len(ids)} ids in shards, {state.total} counted")
        state.live = LiveSlots(ids, dead_slots(self.storage, _journal_progress(state)))

    def _validate(self, batch: EmbeddedBatch) -> ProductId:
        n = len(batch.ids)
        for product_id in [*batch.ids, *(f.id for f in batch.failures), batch.last_id]:
            if product_id is not None:
                refuse_inexact_id(product_id)
        types = {type(pid) for pid in [*batch.ids, *(f.id for f in batch.failures)]}
        types |= {type(batch.last_id)} if batch.last_id is not None else set()
        if len(types) > 1:
            raise ValueError("EmbeddedBatch: ids mix int and string ids")
        for state in self._kinds.values():
            if types and state.cursor is not None and {type(state.cursor)} != types:
                raise StateError(
                    f"{state.kind}: the store's ids are {type(state.cursor).__name__}s, this "
                    f"batch's are {types.pop().__name__}s (the catalog's id type changed)"
                )
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

    def _append(self, state: _KindState, batch: EmbeddedBatch, until: ProductId) -> None:
        ids, vectors, brands = batch.ids, batch.vectors[state.kind], batch.brands
        if batch.ids and not _after(min(batch.ids), state.cursor):  # type: ignore[type-var]
            rows = [i for i, pid in enumerate(batch.ids) if _after(pid, state.cursor)]
            if batch.changed:  # a sync batch: the rows the cursor covers, the others are later
                above = set(rows)
                rows = [i for i in range(len(batch.ids)) if i not in above]
            ids, vectors, brands = [ids[i] for i in rows], vectors[rows], [brands[i] for i in rows]
        elif batch.changed:
            ids, vectors, brands = [], vectors[:0], []
        if state.may_be_live(ids):
            self._ensure_live(state)
        # The common case (a fresh batch) takes no per-row Python work and no copy here.
        state.append(ids, np.asarray(vectors, dtype=np.float32), [_brand(b) for b in brands])
        if not batch.changed and _after(until, state.cursor):
            state.cursor = until

    def _guard(self) -> None:
        """The lease check (before_commit) before any write a newer lease holder may own.

        Open and sealed shard names are shared with whoever resumes after us: a writer whose lease
        expired must not overwrite them, not only not commit (its bytes would break that run's
        committed checksums).
        """
        if self._before_commit is not None:
            self._before_commit()

    def _flush_sealed(self, *, guarded: bool = False) -> None:
        if not guarded and any(state.uploads for state in self._kinds.values()):
            self._guard()
        for state in self._kinds.values():
            for name in list(state.uploads):
                self.storage.put(name, state.uploads[name], immutable=True)
                del state.uploads[name]

    def _write_changed_objects(self) -> None:
        if self._has_changes():
            self._guard()
        self._flush_sealed(guarded=True)
        for state in self._kinds.values():
            self._write_open_shard(state)
            self._roll_segments(state)
            state.tombstones.roll(self.storage, self._rollup.tombstone_chunk)
        self._failures.roll()

    def _has_changes(self) -> bool:
        size = self._rollup
        return (
            any(
                state.uploads
                or state.open_dirty
                or len(state.sealed) >= size.segment_shards
                or state.tombstones.must_roll(size.tombstone_chunk)
                for state in self._kinds.values()
            )
            or self._failures.must_roll()
        )

    def _write_open_shard(self, state: _KindState) -> None:
        if not state.open_dirty:
            return
        index_bytes, id_bytes = state.open.encode()
        record = state.open.record(index_bytes, id_bytes, state.kind, False, state.compaction)
        self.storage.put(record.name, index_bytes)
        self.storage.put(record.id_map, id_bytes)
        state.open_record, state.open_dirty = record, False

    def _roll_segments(self, state: _KindState) -> None:
        state.sealed, _ = roll_manifest_segments(
            self.storage,
            state.kind,
            state.compaction,
            state.segments,
            state.sealed,
            self._rollup.segment_shards,
        )

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
            model_digest=self.config.model_digest or self.progress.model_digest,
            shard_max_vectors=self.config.shard_max_vectors,
            shard_max_bytes=self.config.shard_max_bytes,
            kinds=dict(sorted(kinds.items())),
            failures=self._failures.snapshot(),
            sync=self.sync_position,
            ann=dict(self.progress.ann),  # sealed shards never change: sharding.ann's lists hold
        )


def _empty_progress(config: BuildConfig, run_id: str) -> Progress:
    return Progress(
        commit_seq=0,
        run_id=run_id,
        embedder=config.embedder,
        model=config.model,
        model_digest=config.model_digest,
        shard_max_vectors=config.shard_max_vectors,
        shard_max_bytes=config.shard_max_bytes,
    )


def _restore_kind(
    storage: Storage, progress: Progress, config: BuildConfig, kind: str, listed: set[str]
) -> _KindState:
    """The working state of a kind from its commit, verified: the open shard is read (an
    uncommitted tail cut off), the sealed id maps checked (resume.verify_sealed_id_maps), the
    ids against the cursor; over a smaller shard limit than it was written under, it seals."""
    dim = config.dims[kind]
    kp = progress.kinds.get(kind) or KindProgress(dim=dim)
    open_record = kp.open_shard()
    shard = _Shard(kp.last_shard_number() + 1, np.zeros((0, dim), np.float32), [])
    trimmed = False
    max_id: ProductId | None = None
    if kind in progress.kinds:
        max_id = verify_sealed_id_maps(storage, progress, kind, listed)
    if open_record is not None:
        committed = load_shard(storage, open_record, dim)
        shard = _Shard(open_record.number, committed.vectors, committed.ids)
        trimmed = committed.trimmed
        if shard.ids:
            max_id = _largest([*shard.ids, *([] if max_id is None else [max_id])], kind)
    if kp.max_id is not None and kp.max_id != max_id:  # format 3 records it; 1 and 2 do not
        raise StateError(f"{kind}: max_id is {kp.max_id!r} but the id maps hold up to {max_id!r}")
    problem = cursor_problem(kp.cursor, max_id)
    if problem:
        raise StateError(f"{kind}: {problem}")
    state = _KindState(
        kind=kind,
        dim=dim,
        capacity=config.capacity(kind),
        cursor=kp.cursor,
        max_id=max_id,
        total=kp.total_vectors,
        brands=Counter(kp.vectors_per_brand),
        segments=list(kp.segments),
        sealed=[r for r in kp.shards if r.sealed],
        open=shard,
        open_record=open_record,
        # An uncommitted run overwrote the open shard: rewrite it to the committed bytes.
        open_dirty=trimmed,
        tombstones=TombstoneJournal.from_committed(kind, kp),
        compaction=kp.compaction,
    )
    if shard.ids and len(shard.ids) >= state.capacity:
        state.seal()  # a smaller shard_max_bytes: the open shard takes no more vectors
    return state


def _journal_progress(state: _KindState) -> KindProgress:
    """The tombstones of a kind's working state, as dead_slots reads them."""
    journal = state.tombstones
    return KindProgress(
        dim=state.dim, dead=journal.dead, tombstones=journal.chunks, recent_dead=journal.recent
    )


def _segment_records(storage: Storage, state: _KindState) -> list[ShardRecord]:
    """Sealed records of segments this run rolled (not yet named by the last commit)."""
    records: list[ShardRecord] = []
    for ref in state.segments:
        segment = ManifestSegment.model_validate_json(get_verified(storage, ref.name, ref.digests))
        records.extend(segment.shards)
    return records


def _largest(ids: Sequence[ProductId], kind: str) -> ProductId:
    try:
        return max(ids)  # type: ignore[type-var]
    except TypeError as exc:
        raise StateError(f"{kind}: the id maps mix int and string ids") from exc


def roll_manifest_segments(
    storage: Storage,
    kind: str,
    compaction: int,
    segments: list[SegmentRef],
    sealed: list[ShardRecord],
    size: int,
) -> tuple[list[ShardRecord], int]:
    """Roll every full run of `size` sealed shard records into the next manifest segment object
    (written immutable, its reference appended to `segments`). Returns the records left inline
    and the bytes written."""
    written = 0
    while len(sealed) >= size:
        records, sealed = sealed[:size], sealed[size:]
        name = names.manifest_segment(kind, len(segments) + 1, compaction)
        data = ManifestSegment(kind=kind, shards=records).model_dump_json().encode()
        storage.put(name, data, immutable=True)
        written += len(data)
        segments.append(
            SegmentRef(
                name=name,
                sha256=sha256_hex(data),
                shards=len(records),
                vectors=sum(r.vectors for r in records),
                first_shard=records[0].number,
                last_shard=records[-1].number,
            )
        )
    return sealed, written


def _same_state(candidate: Progress, committed: Progress) -> bool:
    volatile = {"commit_seq", "run_id", "written_at"}
    return candidate.model_dump(exclude=volatile) == committed.model_dump(exclude=volatile)


def _all_ids(storage: Storage, progress: Progress, kind: str, workers: int = 8) -> list[ProductId]:
    records = shard_records(storage, progress, kind)

    def read(record: ShardRecord) -> list[ProductId]:
        return decode_ids(get_verified(storage, record.id_map, record.id_map_digests))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [pid for ids in pool.map(read, records) for pid in ids]
