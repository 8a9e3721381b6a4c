"""A build's sync pass: the index follows the catalog's changes before new rows are appended.

What a nightly build does first (flows/build_index.py, task `sync-catalog`):

1. **Changed rows.** A catalog that says when its rows changed (a ChangeFeed: `updated_at`, and
   `deleted_at` for soft deletes) is read in (updated_at, id) keyset pages from the store's sync
   position (progress.json `sync`). In each page, soft-deleted rows stop being live; the other
   rows that a kind's cursor already covers are re-embedded and replace their old vector (a row
   never indexed, inserted below the cursor, is inserted); a new image that fails leaves the
   product with no live vector and a failure record. Each page is one commit, with the sync
   position after its last row: a sync killed at any point resumes after the last page
   committed, so each change is applied once. Rows above every cursor are left to the append
   pass, which reads them anyway.
2. **Hard deletes.** A catalog that lists its ids cheaply (a local file: `ids()`) is compared
   with the store's live ids at every sync; live ids the file no longer has (or soft-deleted
   ones) die. A table (Supabase) is compared only when asked (`reconcile`): its `all_ids()` is
   a keyset pass over the id column alone (about 1,000 ids a request).
3. A store that never synced starts following the catalog from its latest change (the append
   pass covers everything above the cursor); it does not re-embed the catalog.

Cost: catalog reads proportional to the rows changed since the last sync (one keyset page when
nothing changed), embeddings for the changed rows only, and per page one commit (the open
shard and progress.json; sealed shards are never touched). Deletions and the hard-delete pass
build each kind's id -> live slot map once (the id maps: ~8 bytes an id read, ~17 bytes an
integer id held: sharding.live).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from application.catalog.base import ChangeFeed, Product

if TYPE_CHECKING:
    from application.session import BuildSession


@dataclass
class SyncStats:
    """What one sync pass did, for the run summary."""

    followed: bool = False  # the catalog reports changes at all
    started_following: bool = False  # first sync of this store: position set, nothing re-read
    pages: int = 0
    rows_read: int = 0
    reembedded: int = 0
    soft_deleted: int = 0
    hard_deleted: int = 0
    failed: int = 0
    reconciled: bool = False  # the catalog's ids were compared with the store's live ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_catalog(session: BuildSession, batch_size: int, *, reconcile: bool = False) -> SyncStats:
    """Apply the catalog's changes since the store's sync position, then its hard deletes
    (a local file's at every sync; a table's with `reconcile`)."""
    stats = SyncStats()
    catalog, writer = session.catalog, session.writer
    if isinstance(catalog, ChangeFeed):
        stats.followed = True
        position = writer.sync_position
        if position is None:
            latest = catalog.latest_change()
            if latest is not None:
                writer.set_sync_position(*latest)
                stats.started_following = True
        else:
            after_time, after_id = position.updated_at, position.id
            while page := catalog.changed_since(after_time, after_id, batch_size):
                _apply_page(session, page, stats)
                after_time, after_id = page[-1].updated_at or after_time, page[-1].id
                writer.set_sync_position(after_time, after_id)
                writer.commit()
    ids = getattr(catalog, "ids", None)
    if ids is None and reconcile:
        ids = getattr(catalog, "all_ids", None)
    if ids is not None and any(writer.progress.total_vectors(k) for k in session.kinds):
        stats.reconciled = True
        present = set(ids())
        for kind in session.kinds:
            killed = writer.delete(writer.live_ids(kind) - present)
            stats.hard_deleted = max(stats.hard_deleted, *killed.values())
    writer.commit()
    return stats


def _apply_page(session: BuildSession, page: list[Product], stats: SyncStats) -> None:
    from application.session import to_embedded_batch

    writer = session.writer
    stats.pages += 1
    stats.rows_read += len(page)
    deleted = [p.id for p in page if p.deleted]
    if deleted:
        killed = writer.delete(deleted)
        stats.soft_deleted += max(killed.values(), default=0)
    # Rows no kind's cursor covers yet are the append pass's: embedding them here is waste.
    cursors = [writer.cursor(kind) for kind in session.kinds]
    covered = [c for c in cursors if c is not None]
    if not covered:
        return
    top = max(covered)  # type: ignore[type-var]
    changed = [p for p in page if not p.deleted and p.id <= top]  # type: ignore[operator]
    if not changed:
        return
    sign = getattr(session.catalog, "sign_for_fetch", None)
    ready = sign(changed) if sign is not None else changed
    output = session.embed(ready)
    batch = to_embedded_batch(ready, output)
    # A page is in (updated_at, id) order: the batch covers up to its largest id.
    batch.changed, batch.last_id = True, max(p.id for p in ready)  # type: ignore[type-var]
    writer.add_batch(batch)
    stats.reembedded += len(output.ids)
    stats.failed += len(output.failures)
