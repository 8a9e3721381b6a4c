"""The failure log: recording failed products, listing them per product, rewriting it on retry.

progress.json keeps the most recent records inline and names full, immutable chunks
(`failed_{NNNNN}.json`, docs/store-format.md). Each run records one record per failed product
naming the kinds it failed in, so after per-kind runs one product has several records:
`failed_ids` and `kinds_by_product` group them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from sharding import names
from sharding.codec import ProductId, sha256_hex
from sharding.config import RollupLimits
from sharding.progress import FailureChunk, FailureChunkRef, FailureLog, FailureRecord
from sharding.state import read_failure_log
from sharding.storage import Storage

_CHUNK_NUMBER = re.compile(r"(\d+)")


class FailureLike(Protocol):
    """What the writer needs of a failed product: any object with these three attributes
    (modal_workers' FailedProduct is one)."""

    @property
    def id(self) -> ProductId: ...

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...


def kinds_by_product(records: Iterable[FailureRecord]) -> dict[ProductId, set[str]]:
    """Every failed product (oldest record first) and the kinds any of its records name."""
    failed_in: dict[ProductId, set[str]] = {}
    for record in records:
        failed_in.setdefault(record.id, set()).update(record.kinds)
    return failed_in


def failed_ids(
    records: Iterable[FailureRecord], kinds: Iterable[str] | None = None
) -> list[ProductId]:
    """Each failed product once, oldest first, that failed in any of `kinds` (None: any kind).

    What a retry should send: a list with repeats would send a product again after an earlier
    batch fixed it.
    """
    wanted = None if kinds is None else set(kinds)
    return [
        pid
        for pid, failed_in in kinds_by_product(records).items()
        if wanted is None or failed_in & wanted
    ]


class FailureJournal:
    """One writer's working copy of the failure log (committed when progress.json is)."""

    def __init__(
        self, storage: Storage, committed: FailureLog, run_id: str, rollup: RollupLimits
    ) -> None:
        self.storage = storage
        self.run_id = run_id
        self._rollup = rollup
        self.log = committed.model_copy(deep=True)
        # Chunk numbers only grow: a retry rewrites the log under names no commit used.
        self._last_chunk = max((_chunk_number(ref.name) for ref in committed.chunks), default=0)
        #: id -> names of the chunks holding a record of it; read on the first forget() that
        #: needs it (about 150 bytes a chunked record), kept up to date from then on.
        self._where: dict[ProductId, set[str]] | None = None
        self._members: dict[str, set[ProductId]] = {}  # the same index by chunk name
        #: Chunks whose records a forget() changed: rewritten under fresh names at roll().
        self._rewrites: dict[str, list[FailureRecord]] = {}

    def record(
        self, failures: Sequence[FailureLike], kinds_for: Callable[[ProductId], list[str]]
    ) -> None:
        """One record per failed product, naming the kinds `kinds_for` says it failed in."""
        for failure in failures:
            kinds = kinds_for(failure.id)
            if kinds:
                self.log.recent.append(self._record(failure, kinds))
                self.log.total += 1

    def records(self) -> list[FailureRecord]:
        """Every record this journal holds: committed chunks (verified) and the recent ones."""
        if not self._rewrites:
            return read_failure_log(self.storage, self.log)
        records: list[FailureRecord] = []
        for ref in self.log.chunks:
            records.extend(self._chunk(ref))
        return records + list(self.log.recent)

    def forget(self, ids: Sequence[ProductId], kinds_for: Callable[[ProductId], list[str]]) -> int:
        """Drop the kinds `kinds_for` names from these products' records (a record left with no
        kind goes): a product a sync re-embedded is no longer failed there, and one that failed
        again is recorded afresh (`record`) instead of twice. Recent records are edited in
        place; a chunk that holds one is rewritten under a fresh name at the next roll, so a sync
        page costs O(recent + chunks it touches), the chunk index being read once. Returns the
        records dropped."""
        if not ids or not self.log.total:
            return 0
        wanted = {pid: set(kinds_for(pid)) for pid in ids}
        wanted = {pid: kinds for pid, kinds in wanted.items() if kinds}
        if not wanted:
            return 0
        before = self.log.total
        self.log.recent = _without(self.log.recent, wanted)
        if self.log.chunks:
            where = self._chunk_index()
            touched = {name for pid in wanted for name in where.get(pid, ())}
            for ref in self.log.chunks:
                if ref.name in touched:
                    kept = _without(self._chunk(ref), wanted)
                    self._rewrites[ref.name] = kept
                    ref.count = len(kept)
                    still = {record.id for record in kept}
                    for pid in wanted:
                        if pid not in still:
                            where.get(pid, set()).discard(ref.name)
                            self._members.get(ref.name, set()).discard(pid)
        self.log.total = sum(ref.count for ref in self.log.chunks) + len(self.log.recent)
        return before - self.log.total

    def settle_retry(
        self,
        records: Sequence[FailureRecord],
        fixed: Mapping[ProductId, set[str]],
        again: Sequence[FailureLike],
    ) -> None:
        """Replace the log by what a retry left: kinds fixed are dropped from each record, a
        product that failed again gets its fresh reason; rolled into new chunk names later."""
        again_by_id = {f.id: f for f in again}
        kept = []
        for record in records:
            kinds = [kind for kind in record.kinds if kind not in fixed.get(record.id, set())]
            if not kinds:
                continue
            failure = again_by_id.get(record.id)
            if failure is not None:
                fresh = self._record(failure, kinds)
                kept.append(record.model_copy(update=fresh.model_dump(exclude={"id"})))
            else:
                kept.append(record.model_copy(update={"kinds": kinds}))
        self.log = FailureLog(total=len(kept), recent=kept)
        self._where, self._members, self._rewrites = None, {}, {}

    def must_roll(self) -> bool:
        return bool(self._rewrites) or len(self.log.recent) >= self._rollup.failure_chunk

    def roll(self) -> None:
        """Write the chunks a forget() changed, and full chunks of recent records, as
        immutable objects under fresh names (a chunk left empty is dropped)."""
        chunks = []
        for ref in self.log.chunks:
            kept = self._rewrites.pop(ref.name, None)
            if kept is None:
                chunks.append(ref)
            elif kept:
                self._last_chunk += 1
                name = names.failure_chunk(self._last_chunk)
                data = FailureChunk(failures=kept).model_dump_json().encode()
                self.storage.put(name, data, immutable=True)
                chunks.append(FailureChunkRef(name=name, sha256=sha256_hex(data), count=len(kept)))
                self._renamed(ref.name, name)
            else:
                self._renamed(ref.name, None)
        self.log.chunks = chunks
        size = self._rollup.failure_chunk
        while len(self.log.recent) >= size:
            records = self.log.recent[:size]
            self._last_chunk += 1
            name = names.failure_chunk(self._last_chunk)
            data = FailureChunk(failures=records).model_dump_json().encode()
            self.storage.put(name, data, immutable=True)
            self.log.chunks.append(FailureChunkRef(name=name, sha256=sha256_hex(data), count=size))
            self.log.recent = self.log.recent[size:]

    def snapshot(self) -> FailureLog:
        return self.log.model_copy(deep=True)

    def _chunk(self, ref: FailureChunkRef) -> list[FailureRecord]:
        pending = self._rewrites.get(ref.name)
        if pending is not None:
            return list(pending)
        return read_failure_log(self.storage, FailureLog(total=ref.count, chunks=[ref]))

    def _chunk_index(self) -> dict[ProductId, set[str]]:
        if self._where is None:
            self._where = {}
            for ref in self.log.chunks:
                for record in self._chunk(ref):
                    self._where.setdefault(record.id, set()).add(ref.name)
                    self._members.setdefault(ref.name, set()).add(record.id)
        return self._where

    def _renamed(self, old: str, new: str | None) -> None:
        if self._where is None:
            return
        members = self._members.pop(old, set())
        for pid in members:
            chunks = self._where.get(pid, set())
            chunks.discard(old)
            if new is not None:
                chunks.add(new)
        if new is not None:
            self._members[new] = members

    def _record(self, failure: FailureLike, kinds: list[str]) -> FailureRecord:
        return FailureRecord(
            id=failure.id,
            reason=str(failure.reason),
            message=str(failure.message)[: self._rollup.message_chars],
            kinds=kinds,
            run_id=self.run_id,
        )


def _without(
    records: Sequence[FailureRecord], wanted: Mapping[ProductId, set[str]]
) -> list[FailureRecord]:
    """The records with the kinds `wanted` names for their product dropped (emptied: gone)."""
    kept = []
    for record in records:
        drop = wanted.get(record.id)
        if not drop:
            kept.append(record)
            continue
        kinds = [kind for kind in record.kinds if kind not in drop]
        if kinds:
            kept.append(record.model_copy(update={"kinds": kinds}))
    return kept


def _chunk_number(name: str) -> int:
    return int(_CHUNK_NUMBER.findall(name)[-1])
