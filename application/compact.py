"""One compaction run: the store under its lease, the catalog for brands, then the ann update.

`faiss-builder compact` calls run_compaction; the compact-index flow drives the same
CompactionSession through one-line tasks (tasks/compact.py). The library part is
sharding.compact; see docs/store-format.md, "Compaction".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from application.catalog.base import Catalog, ProductId
from application.connect import open_catalog, open_storage
from application.errors import UsageError
from application.settings import Settings

if TYPE_CHECKING:
    from sharding.lease import LeaseInfo, LeaseKeeper, StoreLease
    from sharding.storage import Storage


@dataclass
class CompactionSession:
    """Everything one compaction run holds open: the fenced store, the lease, the catalog."""

    run_id: str
    storage: Storage
    catalog: Catalog
    lease: StoreLease
    keeper: LeaseKeeper
    kinds: list[str] | None  # None: every committed kind
    threshold: float
    ann_min_vectors: int = 100_000
    ann_min_recall: float = 0.95
    #: Live products the catalog no longer has, counted under "(none)" in vectors_per_brand.
    not_in_catalog: int = 0
    _compacted: list[str] = field(default_factory=list)

    def brands_of(self, ids: Sequence[ProductId]) -> list[str | None]:
        """The catalog's brand of each product now (None: no brand, or no longer there)."""
        found = {product.id: product.brand for product in self.catalog.get(list(ids))}
        self.not_in_catalog += sum(1 for pid in ids if pid not in found)
        return [found.get(pid) for pid in ids]

    def compact(self) -> dict[str, Any]:
        """Compact the kinds past the threshold in one commit, then clean up (sharding.compact)."""
        from sharding.compact import compact

        report = compact(
            self.storage,
            run_id=self.run_id,
            brands_of=self.brands_of,
            kinds=self.kinds,
            threshold=self.threshold,
            guard=self.lease.verify,
        )
        self._compacted = report.compacted
        unknown = [kind for kind, c in report.kinds.items() if c.action == "unknown_kind"]
        summary: dict[str, Any] = {"run_id": self.run_id, **report.as_dict()}
        summary["brands_not_in_catalog"] = self.not_in_catalog
        summary["warnings"] = [f"kind {kind!r} was never committed" for kind in unknown]
        if self.not_in_catalog:
            summary["warnings"].append(
                f"{self.not_in_catalog} live products are no longer in the catalog: counted "
                "under '(none)' (a `build --reconcile` finds rows deleted from a table)"
            )
        return summary

    def update_ann(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Train the approximate index of each kind in scope that needs one (a compacted kind
        has none left: the commit dropped its lists, which named old slots)."""
        from sharding.ann import AnnConfig, update_ann

        config = AnnConfig(min_vectors=self.ann_min_vectors, min_recall=self.ann_min_recall)
        done: dict[str, Any] = {}
        for kind in summary["kinds"]:
            if summary["kinds"][kind]["action"] == "unknown_kind":
                continue
            report = update_ann(
                self.storage, kind, config, run_id=self.run_id, guard=self.lease.verify
            )
            done[kind] = report.as_dict()
            if report.failed:
                summary["warnings"].append(f"ann {kind}: recall below the minimum, not served")
        return {**summary, "ann": done}

    def close(self) -> None:
        self.keeper.stop()
        self.lease.release()


def open_compaction(
    settings: Settings,
    run_id: str,
    *,
    kinds: Sequence[str] | None = None,
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
) -> CompactionSession:
    """Check the threshold, open the store and the catalog, take the lease (as a build does)."""
    from sharding.compact import check_threshold
    from sharding.lease import LeaseKeeper, StoreLease
    from sharding.state import require_progress
    from sharding.storage import CrashingStorage, FencedStorage

    wanted = threshold if threshold is not None else settings.store.compact_threshold
    try:
        check_threshold(wanted)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    storage, catalog = open_storage(settings), open_catalog(settings)
    require_progress(storage)  # an empty store: a StateError before the lease
    store = settings.store

    def waiting(holder: LeaseInfo, wait_s: float) -> None:
        if log is not None:
            log(f"{storage.describe()} is held by run {holder.run_id}; waiting for it")

    lease = StoreLease.acquire(
        storage, run_id, ttl_s=store.lease_ttl_s, wait_s=store.lease_wait_s, on_wait=waiting
    )
    keeper = LeaseKeeper(lease).start()
    fenced: Storage = FencedStorage(storage, lease)
    if store.crash_after_writes is not None:  # the crash tests' hook, as for builds
        fenced = CrashingStorage(fenced, store.crash_after_writes)
    return CompactionSession(
        run_id=run_id,
        storage=fenced,
        catalog=catalog,
        lease=lease,
        keeper=keeper,
        kinds=None if kinds is None else list(kinds),
        threshold=wanted,
        ann_min_vectors=store.ann_min_vectors,
        ann_min_recall=store.ann_min_recall,
    )


def run_compaction(
    settings: Settings,
    run_id: str,
    *,
    kinds: Sequence[str] | None = None,
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """A whole compaction without Prefect (the CLI): open, compact, update ann, release."""
    session = open_compaction(settings, run_id, kinds=kinds, threshold=threshold, log=log)
    try:
        return session.update_ann(session.compact())
    finally:
        session.close()
