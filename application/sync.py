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

4. **Late commits.** A row whose transaction commits after a sync read past its updated_at
   (the trigger stamps updated_at at the transaction's start) sorts below the position. Each
   sync therefore re-reads an overlap window below it (FAISS_BUILDER_SYNC_OVERLAP_S, default
   300 s: longer than any catalog transaction): the rows with updated_at after the window's
   start, which is the position's updated_at or the last read's time minus the overlap,
   whichever is older. A row read in the window is remembered (progress.json `sync.seen`: a
   digest of id and image_url per updated_at, committed with the page), so a re-read row
   already applied at the same updated_at and image_url is skipped, and a late one is applied
   once. At most MAX_SEEN rows are remembered; past that the window starts later (logged).

Cost: catalog reads proportional to the rows changed since the last sync plus the rows of the
overlap window (one keyset page when nothing changed lately), embeddings for the changed rows
only, and per page one commit (the open shard and progress.json; sealed shards are never
touched). Deletions and the hard-delete pass build each kind's id -> live slot map once (the
id maps: ~8 bytes an id read, ~17 bytes an integer id held: sharding.live).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from application.catalog.base import ChangeFeed, Product, ProductId, canonical_time

if TYPE_CHECKING:
    from application.session import BuildSession
    from sharding.progress import SyncPosition

log = logging.getLogger(__name__)

#: Seconds below the sync position re-read at each sync (FAISS_BUILDER_SYNC_OVERLAP_S).
DEFAULT_OVERLAP_S = 300.0
#: Rows of the overlap window remembered in progress.json (about 20 bytes each).
MAX_SEEN = 2_000


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
    already_applied: int = 0  # rows re-read in the overlap window, applied by an earlier sync
    reconciled: bool = False  # the catalog's ids were compared with the store's live ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sync_catalog(
    session: BuildSession,
    batch_size: int,
    *,
    reconcile: bool = False,
    overlap_s: float | None = None,
    clock: Callable[[], float] = time.time,
) -> SyncStats:
    """Apply the catalog's changes since the store's sync position (re-reading the overlap
    window below it), then its hard deletes (a local file's at every sync; a table's with
    `reconcile`). `overlap_s` None: the session's `sync_overlap_s`."""
    if overlap_s is None:
        overlap_s = float(getattr(session, "sync_overlap_s", DEFAULT_OVERLAP_S))
    stats = SyncStats()
    catalog, writer = session.catalog, session.writer
    if isinstance(catalog, ChangeFeed):
        stats.followed = True
        position = writer.sync_position
        if position is None:
            latest = catalog.latest_change()
            if latest is not None:
                Window(*latest, window_from=latest[0]).save(writer)
                stats.started_following = True
        else:
            window = Window.of(position)
            after_time, after_id = window.start()
            while True:
                read_at = clock()
                page = catalog.changed_since(after_time, after_id, batch_size)
                if not page:
                    break
                fresh = [p for p in page if not window.applied(p)]
                stats.already_applied += len(page) - len(fresh)
                _apply_page(session, page, fresh, stats)
                for product in page:
                    window.saw(product)
                after_time, after_id = page[-1].updated_at or after_time, page[-1].id
                window.slide(_horizon(read_at, overlap_s))
                window.save(writer)
                writer.commit()
            if window.slide(_horizon(clock(), overlap_s)):
                window.save(writer)  # nothing changed lately: the window shrinks to nothing
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


@dataclass
class Window:
    """The sync position and the overlap window below it, as progress.json `sync` holds them.

    `updated_at`/`id`: the largest (updated_at, id) applied. `window_from`: rows with a later
    updated_at are re-read by the next sync (== updated_at: none below the position).
    `seen`: per updated_at after window_from, the digests of the rows read at it."""

    updated_at: str
    id: ProductId | None
    window_from: str
    seen: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, position: SyncPosition) -> Window:
        start = position.window_from or position.updated_at
        seen = {stamp: set(digests) for stamp, digests in position.seen.items()}
        return cls(position.updated_at, position.id, start, seen)

    def start(self) -> tuple[str, ProductId | None]:
        """Where the next read starts: after window_from, or after the position itself."""
        if self.window_from < self.updated_at:
            return self.window_from, None
        return self.updated_at, self.id

    def applied(self, product: Product) -> bool:
        """Whether this row was applied already: it sorts at or below the position and was read
        at this same updated_at and image_url (a row below the window is final)."""
        stamp = product.updated_at
        if stamp is None or not _at_or_below(stamp, product.id, self.updated_at, self.id):
            return False
        return stamp <= self.window_from or _digest(product) in self.seen.get(stamp, ())

    def saw(self, product: Product) -> None:
        """A row read (and applied, or left to the append pass): remembered, the position moved."""
        stamp = product.updated_at
        if stamp is None:
            return
        if not _at_or_below(stamp, product.id, self.updated_at, self.id):
            self.updated_at, self.id = stamp, product.id
        if stamp > self.window_from:
            self.seen.setdefault(stamp, set()).add(_digest(product))

    def slide(self, horizon: str) -> bool:
        """Rows stamped before `horizon` are final: once the window's oldest remembered rows
        are, or the position itself is, start the window there (never past the position) and
        forget what lies below it (otherwise it stays, so a sync with nothing new writes
        nothing); keep at most MAX_SEEN rows. Returns whether anything changed."""
        start = max(self.window_from, min(self.updated_at, horizon))
        changed = False
        if start == self.updated_at or any(stamp <= start for stamp in self.seen):
            kept = {stamp: digests for stamp, digests in self.seen.items() if stamp > start}
            changed = start != self.window_from or len(kept) != len(self.seen)
            self.window_from, self.seen = start, kept
        remembered = 0
        for stamp in sorted(self.seen, reverse=True):
            remembered += len(self.seen[stamp])
            if remembered > MAX_SEEN:
                log.warning(
                    "sync: more than %d rows in the overlap window; it now starts at %s "
                    "(a transaction older than that which commits late is not seen)",
                    MAX_SEEN,
                    stamp,
                )
                self.window_from = stamp
                self.seen = {s: d for s, d in self.seen.items() if s > stamp}
                return True
        return changed

    def save(self, writer: Any) -> None:
        seen = {stamp: sorted(self.seen[stamp]) for stamp in sorted(self.seen)}
        window_from = self.window_from if self.window_from < self.updated_at else None
        writer.set_sync_position(self.updated_at, self.id, window_from, seen)


def _digest(product: Product) -> str:
    """16 hex digits naming a row's id (with its type), image_url and soft delete."""
    text = f"{type(product.id).__name__}:{product.id}\x00{product.image_url}\x00{product.deleted}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _at_or_below(stamp: str, product_id: ProductId, top: str, top_id: ProductId | None) -> bool:
    if stamp != top:
        return stamp < top
    return top_id is not None and product_id <= top_id  # type: ignore[operator]


def _horizon(now: float, overlap_s: float) -> str:
    """The updated_at below which every transaction has committed, `overlap_s` before `now`."""
    return canonical_time(datetime.fromtimestamp(now - overlap_s, UTC))


def _apply_page(
    session: BuildSession, read: list[Product], page: list[Product], stats: SyncStats
) -> None:
    from application.session import to_embedded_batch

    writer = session.writer
    stats.pages += 1
    stats.rows_read += len(read)
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
