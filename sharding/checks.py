"""Alignment checks of a committed store: counts, ids, objects, digests, dimensions, norms.

The full audit: every committed object is read and both of its committed digests compared
(XXH3-128 and sha256), where a build reads only what it builds on (sharding.resume).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from sharding import names
from sharding.ann import check_ann, committed_ann_objects, parse_ann_name
from sharding.codec import ProductId, decode_ids, decode_index, index_vectors
from sharding.digests import match_committed
from sharding.errors import ObjectNotFound, StateError
from sharding.progress import Progress, ShardRecord
from sharding.resume import consistency_problems, rollback_problem, uncommitted_objects
from sharding.state import (
    committed_ids,
    committed_index,
    list_failures,
    read_progress,
    shard_records,
)
from sharding.storage import Storage
from sharding.tombstones import dead_slots

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    kind: str | None  # None: the store as a whole
    code: str
    message: str
    severity: Severity = "error"


@dataclass
class KindSummary:
    kind: str
    dim: int
    shards: int = 0
    vectors: int = 0
    committed_vectors: int = 0
    cursor: ProductId | None = None
    dead: int = 0


@dataclass
class AlignmentReport:
    """What check_store found; `ok` is False when any problem is an error."""

    store: str
    problems: list[Problem] = field(default_factory=list)
    kinds: dict[str, KindSummary] = field(default_factory=dict)
    failures: int = 0

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, kind: str | None, code: str, message: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(kind, code, message, severity))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "store": self.store,
            "failures": self.failures,
            "kinds": {k: asdict(s) for k, s in self.kinds.items()},
            "problems": [asdict(p) for p in self.problems],
        }

    def to_markdown(self) -> str:
        lines = [
            f"## Store structure: {'ok' if self.ok else 'FAIL'}",
            "",
            f"Store: {self.store}",
            "",
        ]
        lines += [
            "| kind | dim | shards | vectors | committed | cursor |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.kinds.values():
            row = (s.kind, s.dim, s.shards, s.vectors, s.committed_vectors, s.cursor)
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
        lines += ["", f"Failed products recorded: {self.failures}", ""]
        for p in self.problems or []:
            lines.append(f"- **{p.severity}** `{p.code}` ({p.kind or 'store'}): {p.message}")
        return "\n".join(lines) + "\n"


@dataclass
class _ShardResult:
    record: ShardRecord
    ids: list[ProductId] = field(default_factory=list)
    norms: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)


def check_store(
    storage: Storage,
    kinds: Sequence[str] | None = None,
    *,
    workers: int = 8,
    norm_tolerance: float = 1e-3,
) -> AlignmentReport:
    """Check every committed shard of the given kinds (default: all committed kinds)."""
    report = AlignmentReport(store=storage.describe())
    try:
        progress = read_progress(storage)
    except StateError as exc:
        report.add(None, "progress_invalid", str(exc))
        return report
    if progress is None:
        report.add(None, "no_progress", f"{names.PROGRESS} is missing: nothing was committed")
        return report
    for problem in consistency_problems(progress):
        report.add(None, "inconsistent_commit", problem)
    try:
        rolled_back = rollback_problem(storage, progress)
    except StateError as exc:  # a storage answer other than found / not found
        rolled_back = str(exc)
    if rolled_back:
        report.add(None, "rolled_back", rolled_back)
    wanted = list(kinds) if kinds else list(progress.kinds)
    for kind in wanted:
        if kind not in progress.kinds:
            report.add(kind, "unknown_kind", f"kind {kind!r} was never committed")
            continue
        _check_kind(storage, progress, kind, report, workers, norm_tolerance)
        for code, message in check_ann(storage, progress, kind):  # the approximate index
            report.add(kind, code, message)
    _check_failures(storage, progress, report)
    _check_objects(
        storage, storage.list(), progress, [k for k in wanted if k in progress.kinds], report
    )
    return report


def _check_kind(
    storage: Storage,
    progress: Progress,
    kind: str,
    report: AlignmentReport,
    workers: int,
    tol: float,
) -> None:
    kp = progress.kinds[kind]
    summary = KindSummary(kind, kp.dim, committed_vectors=kp.total_vectors, cursor=kp.cursor)
    report.kinds[kind] = summary
    try:
        records = shard_records(storage, progress, kind)
    except StateError as exc:
        report.add(kind, "manifest_segment", str(exc))
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda r: _check_shard(storage, r, kp.dim, kind), records))
    ids = [pid for result in results for pid in result.ids]
    summary.shards, summary.vectors = len(records), len(ids)
    for result in results:
        report.problems.extend(result.problems)
    live_ids = _check_dead(storage, progress, kind, ids, report)
    summary.dead = len(ids) - sum(1 for pid in live_ids if pid is not None)
    _check_totals(progress, kind, ids, live_ids, records, report)
    _check_norms(kind, [r.norms for r in results if r.norms is not None], tol, report)
    _check_full_id_map(storage, kind, live_ids, report)


def _check_dead(
    storage: Storage, progress: Progress, kind: str, ids: list[ProductId], report: AlignmentReport
) -> list[ProductId | None]:
    """The kind's slots with None at each dead one; tombstones must name existing slots once."""
    kp = progress.kinds[kind]
    try:
        dead = dead_slots(storage, kp)
    except StateError as exc:
        report.add(kind, "tombstone_chunk", str(exc))
        return list(ids)
    outside = [slot for slot in dead if not 0 <= slot < len(ids)]
    if outside:
        report.add(
            kind,
            "tombstone_slot",
            f"{len(outside)} tombstones name slots the kind does not have "
            f"({len(ids)} slots), e.g. {outside[:5]}",
        )
    twice = [slot for slot, n in Counter(dead).items() if n > 1]
    if twice:
        report.add(kind, "tombstone_repeated", f"slots {twice[:5]} are recorded dead twice")
    if len(dead) != kp.dead:
        report.add(kind, "dead_count", f"{len(dead)} tombstones, dead says {kp.dead}")
    live: list[ProductId | None] = list(ids)
    for slot in dead:
        if 0 <= slot < len(live):
            live[slot] = None
    return live


def _check_shard(storage: Storage, record: ShardRecord, dim: int, kind: str) -> _ShardResult:
    result = _ShardResult(record)
    index_bytes, id_bytes = (
        _get(storage, record.name, kind, result),
        _get(storage, record.id_map, kind, result),
    )
    if index_bytes is None or id_bytes is None:
        return result
    vectors = _checked_vectors(index_bytes, record, dim, kind, result)
    ids = _checked_ids(id_bytes, record, kind, result)
    if vectors is None or ids is None:
        return result
    if len(vectors) != record.vectors:
        result.problems.append(
            Problem(
                kind,
                "count_mismatch",
                f"{record.name}: {len(vectors)} vectors, committed {record.vectors}",
            )
        )
    if len(ids) != len(vectors):
        result.problems.append(
            Problem(
                kind, "id_map_length", f"{record.id_map}: {len(ids)} ids for {len(vectors)} vectors"
            )
        )
    result.ids, result.norms = ids, np.linalg.norm(vectors, axis=1)
    return result


def _get(storage: Storage, name: str, kind: str, result: _ShardResult) -> bytes | None:
    try:
        return storage.get(name)
    except ObjectNotFound:
        result.problems.append(Problem(kind, "missing_object", f"{name} is committed but missing"))
        return None


def _checked_vectors(
    data: bytes, record: ShardRecord, dim: int, kind: str, result: _ShardResult
) -> np.ndarray | None:
    try:
        index = decode_index(data)
    except RuntimeError as exc:
        result.problems.append(Problem(kind, "unreadable_index", f"{record.name}: {exc}"))
        return None
    if index.d != dim:
        result.problems.append(
            Problem(kind, "dimension", f"{record.name}: dimension {index.d}, committed {dim}")
        )
        return None
    match = match_committed(record.name, data, record.index_digests, audit=True)
    if match.committed:  # both digests audited
        return index_vectors(index)
    try:
        index, _ = committed_index(data, record, dim, match)
    except StateError as exc:
        result.problems.append(Problem(kind, "sha256_mismatch", str(exc)))
        return None
    message = f"{record.name} holds vectors written after the last commit (ignored by readers)"
    result.problems.append(Problem(kind, "uncommitted_tail", message, "warning"))
    return index_vectors(index)


def _checked_ids(
    data: bytes, record: ShardRecord, kind: str, result: _ShardResult
) -> list[ProductId] | None:
    match = match_committed(record.id_map, data, record.id_map_digests, audit=True)
    try:
        ids, trimmed = committed_ids(data, record, match)
    except StateError as exc:
        result.problems.append(Problem(kind, "sha256_mismatch", str(exc)))
        return None
    if trimmed:
        message = f"{record.id_map} holds ids written after the last commit (ignored by readers)"
        result.problems.append(Problem(kind, "uncommitted_tail", message, "warning"))
    return ids


def _check_totals(
    progress: Progress,
    kind: str,
    ids: list[ProductId],
    live_ids: list[ProductId | None],
    records: list[ShardRecord],
    report: AlignmentReport,
) -> None:
    kp = progress.kinds[kind]
    committed = sum(r.vectors for r in records)
    if not len(ids) == committed == kp.total_vectors:
        report.add(
            kind,
            "total_mismatch",
            f"{len(ids)} ids, {committed} in shard records, total_vectors {kp.total_vectors}",
        )
    if sum(kp.vectors_per_brand.values()) != kp.total_vectors:
        report.add(kind, "brand_totals", "vectors_per_brand does not sum to total_vectors")
    # An id may sit in several slots (a replaced product's old ones are dead); live once only.
    duplicates = [pid for pid, n in Counter(live_ids).items() if n > 1 and pid is not None]
    if duplicates:
        report.add(
            kind,
            "duplicate_ids",
            f"{len(duplicates)} ids are live twice, e.g. {duplicates[:5]}",
        )
    _check_cursor(kind, kp.cursor, ids, report)


def _check_cursor(
    kind: str, cursor: ProductId | None, ids: list[ProductId], report: AlignmentReport
) -> None:
    if cursor is None:
        if ids:
            report.add(kind, "cursor", f"{len(ids)} vectors committed but the cursor is empty")
        return
    try:
        beyond = [pid for pid in ids if pid > cursor]  # type: ignore[operator]
    except TypeError:
        report.add(kind, "cursor", f"ids and cursor {cursor!r} have different types")
        return
    if beyond:
        report.add(
            kind, "cursor", f"{len(beyond)} ids lie past the cursor {cursor!r}, e.g. {beyond[:5]}"
        )


def _check_norms(kind: str, norms: list[np.ndarray], tol: float, report: AlignmentReport) -> None:
    if not norms:
        return
    all_norms = np.concatenate(norms)
    bad = int(np.sum(np.abs(all_norms - 1.0) > tol))
    if bad:
        report.add(kind, "vector_norms", f"{bad} vectors are not L2-normalised (tolerance {tol})")


def _check_full_id_map(
    storage: Storage, kind: str, ids: list[ProductId | None], report: AlignmentReport
) -> None:
    """id_map_{kind}.json must be the slots' ids with null at dead ones (format 4). A copy that
    lags the commit is a warning: one written before some slots died or were added (the same
    ids at the same slots, a prefix), or before a compaction dropped dead slots (longer, and
    every live id in it in the same order: a compaction killed between its commit and this
    copy's rewrite leaves that, and its next run, or the next build, rewrites it)."""
    name = names.full_id_map(kind)
    try:
        full = decode_ids(storage.get(name))
    except ObjectNotFound:
        if ids:
            report.add(kind, "missing_full_id_map", f"{name} is missing", "warning")
        return
    except ValueError as exc:
        report.add(kind, "full_id_map_mismatch", f"{name}: {exc}")
        return
    if full == ids:
        return
    if _lags(full, ids):
        report.add(
            kind,
            "stale_full_id_map",
            f"{name} lags the commit ({len(full)} slots; the commit has {len(ids)})",
            "warning",
        )
    else:
        report.add(kind, "full_id_map_mismatch", f"{name} disagrees with the shard id maps")


def _lags(full: Sequence[ProductId | None], ids: Sequence[ProductId | None]) -> bool:
    if len(full) <= len(ids) and all(
        got == want or want is None for got, want in zip(full, ids, strict=False)
    ):
        return True
    # Before a compaction: every live id, in order, among slots the compaction dropped.
    live = [pid for pid in ids if pid is not None]
    alive = set(live)
    return len(full) > len(ids) and [pid for pid in full if pid in alive] == live


def _check_failures(storage: Storage, progress: Progress, report: AlignmentReport) -> None:
    try:
        report.failures = len(list_failures(storage, progress))
    except StateError as exc:
        report.add(None, "failure_chunk", str(exc))
        return
    if report.failures != progress.failures.total:
        report.add(
            None,
            "failure_totals",
            f"{report.failures} failures listed, total says {progress.failures.total}",
        )


def _check_objects(
    storage: Storage,
    listed: list[str],
    progress: Progress,
    kinds: list[str],
    report: AlignmentReport,
) -> None:
    """Objects no commit names: leftovers of a crashed run are warnings, never failures."""
    leftovers = set(uncommitted_objects(listed, progress, kinds))
    ann_named = committed_ann_objects(storage, progress)
    for name in listed:
        ann = parse_ann_name(name)
        if ann is not None and ann[0] in kinds:  # sharding.ann's objects
            if name not in ann_named:
                report.add(ann[0], "uncommitted_object", f"{name} is named by no commit", "warning")
            continue
        parsed = names.parse(name)
        if name in (names.PROGRESS, names.LEASE, names.LAST_COMMIT) or (
            parsed and parsed.kind not in (None, *kinds)
        ):
            continue
        if name in leftovers:
            report.add(
                parsed.kind if parsed else None,
                "uncommitted_object",
                f"{name} was written after the last commit",
                "warning",
            )
        elif parsed is None:
            report.add(None, "unexpected_object", f"{name} is not part of the layout", "warning")
