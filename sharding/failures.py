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
        return read_failure_log(self.storage, self.log)

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

    def must_roll(self) -> bool:
        return len(self.log.recent) >= self._rollup.failure_chunk

    def roll(self) -> None:
        """Write full chunks of recent records as immutable objects under fresh names."""
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

    def _record(self, failure: FailureLike, kinds: list[str]) -> FailureRecord:
        return FailureRecord(
            id=failure.id,
            reason=str(failure.reason),
            message=str(failure.message)[: self._rollup.message_chars],
            kinds=kinds,
            run_id=self.run_id,
        )


def _chunk_number(name: str) -> int:
    return int(_CHUNK_NUMBER.findall(name)[-1])
