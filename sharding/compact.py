"""Compaction: a kind whose dead slots pass a threshold is rewritten into new shards, live rows only.

Sealed shards are never rewritten in place. A compaction of a kind writes its live vectors, in
slot order, into shards of a new *compaction* (KindProgress.compaction + 1), whose layout names
carry it (`clip_{kind}_c{CCC}_shard_{N}.index`, ...: sharding.names), so nothing the committed
progress.json names is touched. Then one progress.json swaps them in for every compacted kind at
once (no dead slots, shards numbered from 1 again, the kind's approximate index dropped: its lists
reference the old slots). Only after that commit are the retired objects deleted. A run killed
anywhere before the commit leaves the previous commit serving; its uploads are named by no
commit and are deleted (resume.uncommitted_objects) by the next compaction or build. A run killed
after it leaves retired objects, which the next run recognises by their compaction number.

Slots are renumbered: slot s of the compacted kind is its s-th live vector of before, in the same
order, so search results over live vectors are unchanged. See docs/store-format.md, "Compaction".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from sharding import names
from sharding.ann import parse_ann_name
from sharding.codec import (
    ProductId,
    encode_ids,
    encode_index,
    sha256_hex,
    shard_capacity,
    xxh3_hex,
)
from sharding.config import RollupLimits
from sharding.digests import match_committed
from sharding.errors import StateError
from sharding.progress import (
    BRAND_CHARS,
    FORMAT_VERSION,
    UNKNOWN_BRAND,
    KindProgress,
    Progress,
    SegmentRef,
    ShardRecord,
)
from sharding.resume import (
    NOTHING_WRITTEN,
    check_not_rolled_back,
    consistency_problems,
    last_commit_marker,
    uncommitted_objects,
)
from sharding.state import (
    committed_ids,
    fetch_committed,
    load_shard,
    require_progress,
    shard_records,
)
from sharding.storage import Storage
from sharding.tombstones import dead_slots, live_mask
from sharding.writer import roll_manifest_segments

#: Default dead fraction at which a kind is compacted (FAISS_BUILDER_COMPACT_THRESHOLD).
DEFAULT_THRESHOLD = 0.3

#: The brand of each of these products as the catalog names it now (None: no brand, or the
#: catalog no longer has it). A compaction recounts vectors_per_brand from it: the store keeps
#: counts per brand, not each vector's brand, so the dead slots' share cannot be subtracted.
BrandsOf = Callable[[Sequence[ProductId]], Sequence[str | None]]


@dataclass
class KindCompaction:
    """What a compaction did (or would do) to one kind."""

    kind: str
    action: str  # "compacted", "below_threshold", "no_dead", "unknown_kind"
    dead_fraction: float = 0.0
    slots_before: int = 0
    dead_before: int = 0
    live: int = 0
    shards_before: int = 0
    shards_after: int = 0
    compaction: int = 0  # the kind's compaction number after this run
    bytes_written: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "dead_fraction": round(self.dead_fraction, 4),
            "slots_before": self.slots_before,
            "dead_before": self.dead_before,
            "live": self.live,
            "shards_before": self.shards_before,
            "shards_after": self.shards_after,
            "compaction": self.compaction,
            "bytes_written": self.bytes_written,
        }


@dataclass
class CompactionReport:
    """One compaction run: per kind what happened, the commit it made, what it cleaned up."""

    store: str
    threshold: float
    kinds: dict[str, KindCompaction] = field(default_factory=dict)
    commit_seq: int | None = None  # the compaction's commit; None: nothing was compacted
    deleted: int = 0  # retired and leftover objects deleted after the commit
    full_id_maps: list[str] = field(default_factory=list)

    @property
    def compacted(self) -> list[str]:
        return [k for k, c in self.kinds.items() if c.action == "compacted"]

    def as_dict(self) -> dict[str, object]:
        return {
            "store": self.store,
            "threshold": self.threshold,
            "compacted": self.compacted,
            "commit_seq": self.commit_seq,
            "objects_deleted": self.deleted,
            "kinds": {k: c.as_dict() for k, c in self.kinds.items()},
        }


def dead_fraction(kp: KindProgress) -> float:
    return kp.dead / kp.total_vectors if kp.total_vectors else 0.0


def plan(progress: Progress, kinds: Sequence[str] | None, threshold: float) -> dict[str, str]:
    """kind -> action: "compacted" for each kind whose dead fraction reaches the threshold."""
    check_threshold(threshold)
    wanted = list(progress.kinds) if kinds is None else list(kinds)
    actions = {}
    for kind in wanted:
        kp = progress.kinds.get(kind)
        if kp is None:
            actions[kind] = "unknown_kind"
        elif kp.dead == 0:
            actions[kind] = "no_dead"
        elif dead_fraction(kp) >= threshold:
            actions[kind] = "compacted"
        else:
            actions[kind] = "below_threshold"
    return actions


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"compaction threshold {threshold!r}: a dead fraction in (0, 1]")


def compact(
    storage: Storage,
    *,
    run_id: str,
    brands_of: BrandsOf,
    kinds: Sequence[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    guard: Callable[[], None] | None = None,
    rollup: RollupLimits | None = None,
) -> CompactionReport:
    """Compact every kind of `kinds` (default: all) whose dead fraction reaches `threshold`.

    Writes, in order: the new shards of each compacted kind (file, then id map; sealed ones as
    immutable objects) and its manifest segments, all under the new compaction's names; then
    progress.json (commit_seq + 1) and last_commit.json; then, after the commit, the full id maps
    of the compacted kinds; and deletes the retired objects, the kinds' approximate index objects
    (the commit dropped that state) and leftovers of killed runs. Kinds below the threshold are
    not touched, except that leftovers of an earlier run are cleaned up. `guard` (the lease check)
    runs before the first write, before the commit and before the deletions.

    The approximate index is not retrained here: the caller runs sharding.ann.update_ann for the
    compacted kinds after this returns (application.compact does).
    """
    rollup = rollup or RollupLimits()
    progress = require_progress(storage)
    problems = consistency_problems(progress)
    if problems:
        raise StateError(
            f"refusing to compact {storage.describe()}: {problems[0]}; {NOTHING_WRITTEN}"
        )
    check_not_rolled_back(storage, progress)
    actions = plan(progress, kinds, threshold)
    report = CompactionReport(store=storage.describe(), threshold=threshold)
    for kind, action in actions.items():
        kp = progress.kinds.get(kind)
        report.kinds[kind] = KindCompaction(
            kind,
            action,
            dead_fraction=dead_fraction(kp) if kp else 0.0,
            slots_before=kp.total_vectors if kp else 0,
            dead_before=kp.dead if kp else 0,
            live=kp.live_vectors if kp else 0,
            shards_before=kp.shard_count() if kp else 0,
            shards_after=kp.shard_count() if kp else 0,
            compaction=kp.compaction if kp else 0,
        )
    scope = [kind for kind, action in actions.items() if action != "unknown_kind"]
    full_maps: dict[str, list[ProductId | None]] = {}
    if report.compacted:
        if guard is not None:
            guard()
        updated = dict(progress.kinds)
        for kind in report.compacted:
            updated[kind], full_maps[kind] = _rewrite_kind(
                storage, progress, kind, brands_of, rollup, report.kinds[kind]
            )
        if guard is not None:
            guard()
        progress = _commit(storage, progress, updated, report.compacted, run_id)
        report.commit_seq = progress.commit_seq
    # After the commit (or for an earlier run that died after its commit): the full id maps of
    # kinds whose retired objects are still there, then those objects.
    listed = storage.list()
    leftovers = uncommitted_objects(listed, progress, scope)
    retired = {
        parsed.kind
        for name in leftovers
        if (parsed := names.parse(name)) is not None
        and parsed.kind in progress.kinds
        and parsed.compaction < progress.kinds[parsed.kind].compaction
    }
    for kind in sorted(retired - set(full_maps)):
        full_maps[kind] = _live_ids(storage, progress, kind)
    stale_ann = [
        name
        for name in listed
        if (ann := parse_ann_name(name)) is not None
        and ann[0] in scope
        and ann[0] not in progress.ann  # a kind whose state was dropped: nothing names them
    ]
    if full_maps or leftovers or stale_ann:
        if guard is not None:
            guard()
        for kind, ids in sorted(full_maps.items()):
            storage.put(names.full_id_map(kind), encode_ids(ids))  # type: ignore[arg-type]  # null: dead
            report.full_id_maps.append(kind)
        doomed = [*leftovers, *stale_ann]
        if doomed:
            storage.delete(doomed)
        report.deleted = len(doomed)
    return report


def _rewrite_kind(
    storage: Storage,
    progress: Progress,
    kind: str,
    brands_of: BrandsOf,
    rollup: RollupLimits,
    summary: KindCompaction,
) -> tuple[KindProgress, list[ProductId | None]]:
    """Write the kind's live rows as the shards of its next compaction; (its new committed state,
    its live ids in slot order). One old shard and one new one in memory at a time."""
    kp = progress.kinds[kind]
    dim, generation = kp.dim, kp.compaction + 1
    capacity = shard_capacity(dim, progress.shard_max_vectors, progress.shard_max_bytes)
    mask = live_mask(kp.total_vectors, dead_slots(storage, kp))
    records: list[ShardRecord] = []
    segments: list[SegmentRef] = []
    inline: list[ShardRecord] = []
    brands: Counter[str] = Counter()
    all_ids: list[ProductId] = []
    pending_v: list[np.ndarray] = []
    pending_ids: list[ProductId] = []

    def emit(vectors: np.ndarray, ids: list[ProductId], sealed: bool) -> None:
        number = len(records) + 1
        index_bytes, id_bytes = encode_index(vectors, dim), encode_ids(ids)
        record = ShardRecord(
            number=number,
            name=names.shard_index(kind, number, generation),
            id_map=names.shard_id_map(kind, number, generation),
            vectors=len(ids),
            sha256=sha256_hex(index_bytes),
            id_map_sha256=sha256_hex(id_bytes),
            xxh3=xxh3_hex(index_bytes),
            id_map_xxh3=xxh3_hex(id_bytes),
            sealed=sealed,
        )
        storage.put(record.name, index_bytes, immutable=sealed)
        storage.put(record.id_map, id_bytes, immutable=sealed)
        summary.bytes_written += len(index_bytes) + len(id_bytes)
        records.append(record)
        inline.append(record)
        brands.update(_brand(b) for b in brands_of(ids))
        if sealed:  # only sealed records roll
            inline[:], written = roll_manifest_segments(
                storage, kind, generation, segments, inline, rollup.segment_shards
            )
            summary.bytes_written += written

    start = 0
    for old in shard_records(storage, progress, kind):
        keep = np.flatnonzero(mask[start : start + old.vectors])
        start += old.vectors
        if not len(keep):
            continue
        shard = load_shard(storage, old, dim)  # verified; an open shard's uncommitted tail cut
        pending_v.append(shard.vectors[keep])
        pending_ids.extend(shard.ids[i] for i in keep.tolist())
        while len(pending_ids) >= capacity:
            block = np.concatenate(pending_v) if len(pending_v) > 1 else pending_v[0]
            emit(np.ascontiguousarray(block[:capacity]), pending_ids[:capacity], sealed=True)
            all_ids.extend(pending_ids[:capacity])
            pending_v, pending_ids = [block[capacity:]], pending_ids[capacity:]
    if start != kp.total_vectors:
        raise StateError(f"{kind}: {start} slots in shards, {kp.total_vectors} committed")
    if pending_ids:  # the rest is the open shard the next build appends to
        block = np.concatenate(pending_v) if len(pending_v) > 1 else pending_v[0]
        emit(np.ascontiguousarray(block), pending_ids, sealed=False)
        all_ids.extend(pending_ids)
    if len(all_ids) != kp.live_vectors:
        raise StateError(f"{kind}: {len(all_ids)} live rows rewritten, {kp.live_vectors} live")
    summary.live, summary.shards_after, summary.compaction = len(all_ids), len(records), generation
    compacted = KindProgress(
        dim=dim,
        cursor=kp.cursor,
        max_id=_largest(all_ids),
        total_vectors=len(all_ids),
        vectors_per_brand=dict(sorted(brands.items())),
        segments=segments,
        shards=list(inline),
        compaction=generation,
    )
    return compacted, list(all_ids)


def _commit(
    storage: Storage,
    progress: Progress,
    kinds: dict[str, KindProgress],
    compacted: Sequence[str],
    run_id: str,
) -> Progress:
    """progress.json with the compacted kinds swapped in and their ann state dropped."""
    candidate = progress.model_copy(
        update={
            "format_version": FORMAT_VERSION,
            "commit_seq": progress.commit_seq + 1,
            "run_id": run_id,
            "written_at": datetime.now(UTC),
            "kinds": dict(sorted(kinds.items())),
            "ann": {k: s for k, s in progress.ann.items() if k not in compacted},
        }
    )
    data = candidate.to_bytes()
    candidate = Progress.model_validate_json(data)  # what a reader will see
    problems = consistency_problems(candidate)
    if problems:  # a bug here must never become a commit
        raise StateError(f"compaction would commit an inconsistent state: {problems[0]}")
    storage.put(names.PROGRESS, data)
    storage.put(names.LAST_COMMIT, last_commit_marker(candidate, data))
    return candidate


def _live_ids(storage: Storage, progress: Progress, kind: str) -> list[ProductId | None]:
    """The kind's full id map as committed: every slot's id, None at dead ones."""
    ids: list[ProductId | None] = []
    for record in shard_records(storage, progress, kind):
        data = fetch_committed(storage.get, record.id_map)
        match = match_committed(record.id_map, data, record.id_map_digests)
        ids.extend(committed_ids(data, record, match)[0])  # an open shard's tail cut off
    for slot in dead_slots(storage, progress.kinds[kind]):
        ids[slot] = None
    return ids


def _brand(brand: str | None) -> str:
    return UNKNOWN_BRAND if not brand else str(brand)[:BRAND_CHARS]


def _largest(ids: list[ProductId]) -> ProductId | None:
    return max(ids) if ids else None  # type: ignore[type-var]
