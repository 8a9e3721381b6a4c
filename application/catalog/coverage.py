"""Catalog rows a store's cursor has made unreachable: counted, so they are never lost silently.

A resumed build reads only `id > cursor` (keyset pagination). A row added later whose id sorts
at or below a kind's cursor (string ids P10..P12 appended after P1..P9, an id -1 inserted
later, a deleted id added again) is never read. Such rows cannot be listed cheaply, but they
can be counted: the catalog counts its rows with `id <= cursor` (one request, or a bisection),
and every one of those the store has not indexed or recorded as failed in that kind is
unreachable. Rows deleted from the catalog after they were indexed make the count smaller, so
it is a lower bound: "at least N".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from application.catalog.base import Catalog

if TYPE_CHECKING:
    from sharding.progress import FailureRecord, Progress

HINT = "ids must be ascending for new rows: see README, The catalog"


def unindexed_below_cursor(
    catalog: Catalog, progress: Progress, failures: Iterable[FailureRecord], kinds: Sequence[str]
) -> dict[str, int]:
    """Per kind with a cursor: at least how many catalog rows sort at or below the cursor but
    were neither indexed nor recorded as failed in that kind (0 when none are known)."""
    failed: dict[str, set[Any]] = {kind: set() for kind in kinds}
    for record in failures:
        for kind in record.kinds:
            if kind in failed:
                failed[kind].add(record.id)
    counts: dict[str, int] = {}
    for kind in kinds:
        kp = progress.kinds.get(kind)
        if kp is None or kp.cursor is None:
            continue
        at_or_below = catalog.count_at_or_below(kp.cursor)
        counts[kind] = max(0, at_or_below - kp.live_vectors - len(failed[kind]))
    return counts


def unreachable_message(counts: dict[str, int]) -> str | None:
    """One line for the build summary and `status`, or None when no row is unreachable."""
    worst = max(counts.values(), default=0)
    if worst == 0:
        return None
    per_kind = ", ".join(f"{kind} {count}" for kind, count in counts.items() if count)
    return (
        f"{worst} catalog rows sort at or below the cursor but were never indexed "
        f"({per_kind}; {HINT})"
    )
