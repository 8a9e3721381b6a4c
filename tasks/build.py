"""Prefect tasks of a build: open the run, fetch a page, embed it, write and commit it, finish."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from faiss_builder.catalog.base import Catalog, Product, ProductId
from faiss_builder.connect import (
    EmbedBackend,
    fetch_limits,
    open_backend,
    open_catalog,
    open_storage,
)
from faiss_builder.settings import Settings
from tasks import progress_events
from tasks.retry import TRANSIENT_RETRIES

if TYPE_CHECKING:
    from modal_workers.types import EmbedOutput, FetchLimits
    from sharding.lease import LeaseKeeper, StoreLease
    from sharding.storage import Storage
    from sharding.writer import BuildConfig, EmbeddedBatch, IndexWriter

# Tasks pass live objects (writer, clients) between each other in one process: no caching,
# no result persistence.
FAILURES_IN_SUMMARY = 100
_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}


@dataclass
class BuildStats:
    """Counters for the run summary."""

    started: float = field(default_factory=time.monotonic)
    products: int = 0
    batches: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass
class BuildSession:
    """Everything one build run holds open: clients, the writer and its lease."""

    run_id: str
    kinds: list[str]
    storage: Storage
    catalog: Catalog
    backend: EmbedBackend
    limits: FetchLimits
    writer: IndexWriter
    lease: StoreLease
    keeper: LeaseKeeper
    max_images: int | None
    totals_at_start: dict[str, int]
    stats: BuildStats = field(default_factory=BuildStats)

    def room_left(self, batch_size: int, queued: int) -> int:
        """How many products the next page may hold under max_images, given `queued` in flight."""
        if self.max_images is None:
            return batch_size
        return max(0, min(batch_size, self.max_images - self.stats.products - queued))


@task(name="start-build", **_TASK_OPTIONS)
def start_build(settings: Settings, run_id: str) -> BuildSession:
    """Connect everything and take the store lease; refuse bad configuration before any write."""
    from sharding.state import read_progress
    from sharding.writer import check_resume

    storage, catalog = open_storage(settings), open_catalog(settings)
    embed = settings.embed
    backend = open_backend(settings, embed.embedder, embed.model)
    config = build_config(settings, backend.describe())
    committed = read_progress(storage)
    if committed is not None:  # refuse a mismatching resume before the lease, our first write
        check_resume(committed, config, storage.describe())
    lease, keeper, writer = open_writer(storage, config, settings, run_id)
    return BuildSession(
        run_id=run_id,
        kinds=list(embed.kinds),
        storage=storage,
        catalog=catalog,
        backend=backend,
        limits=fetch_limits(settings, catalog.local_root),
        writer=writer,
        lease=lease,
        keeper=keeper,
        max_images=embed.max_images,
        totals_at_start={kind: writer.progress.total_vectors(kind) for kind in embed.kinds},
    )


def build_config(settings: Settings, described: dict[str, Any]) -> BuildConfig:
    """What the store must agree with: the backend's embedder, model and dims, the shard limits."""
    from sharding.writer import BuildConfig

    return BuildConfig(
        embedder=described["embedder"],
        model=described["model"],
        dims={kind: described["dims"][kind] for kind in settings.embed.kinds},
        shard_max_vectors=settings.store.shard_max_vectors,
        shard_max_bytes=settings.store.shard_max_bytes,
    )


def open_writer(
    storage: Storage, config: BuildConfig, settings: Settings, run_id: str
) -> tuple[StoreLease, LeaseKeeper, IndexWriter]:
    """Take the lease, keep it renewed from now on, then open (and verify) the store under it."""
    from sharding.lease import LeaseKeeper, StoreLease
    from sharding.writer import IndexWriter

    store = settings.store
    lease = StoreLease.acquire(storage, run_id, ttl_s=store.lease_ttl_s, wait_s=store.lease_wait_s)
    keeper = LeaseKeeper(lease).start()
    try:
        writer = IndexWriter.open(
            storage,
            config,
            run_id=run_id,
            crash_after_writes=store.crash_after_writes,
            # The keeper renews in the background; before each write we only confirm ownership.
            before_commit=lease.verify,
        )
    except BaseException:
        keeper.stop()
        lease.release()
        raise
    return lease, keeper, writer


@task(name="fetch-page", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def fetch_page(catalog: Catalog, after: ProductId | None, limit: int) -> list[Product]:
    """The next products in id order after `after`, with private-bucket paths signed for fetching."""
    return _signed_for_fetch(catalog, catalog.page(after, limit))


@task(name="count-pending", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def count_pending(session: BuildSession) -> int | None:
    """Products this run will process, for progress: pending in the catalog, capped by max_images."""
    count_after = getattr(session.catalog, "count_after", None)
    if count_after is None:
        return session.max_images
    pending = int(count_after(session.writer.resume_after()))
    return min(pending, session.max_images) if session.max_images else pending


@task(name="list-failed", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def list_failed(session: BuildSession) -> list[ProductId]:
    """Recorded failures in any of this run's kinds, oldest first."""
    kinds = set(session.kinds)
    return [f.id for f in session.writer.failures() if kinds & set(f.kinds)]


@task(name="fetch-products", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def fetch_products(catalog: Catalog, ids: list[ProductId]) -> list[Product]:
    """These products as the catalog has them now (gone ones are left out), signed for fetching."""
    return _signed_for_fetch(catalog, catalog.get(ids))


@task(name="retry-batch", **_TASK_OPTIONS)
def retry_batch(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Index the failures that now embed; the others keep their record with a fresh reason."""
    session.writer.retry_failed(to_embedded_batch(products, output))


@task(name="embed-batch", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def embed_batch(
    backend: EmbedBackend, products: list[Product], kinds: list[str], limits: FetchLimits
) -> EmbedOutput:
    """Download and embed one batch; bad images come back as failures, not exceptions."""
    from modal_workers.types import ImageRef

    refs = [ImageRef(id=product.id, url=product.image_url) for product in products]
    return backend.embed(refs, kinds, limits)


@task(name="append-batch", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def append_batch(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Append the batch to each kind's open shard and upload shards it sealed (safe to retry)."""
    session.writer.add_batch(to_embedded_batch(products, output))


@task(name="commit-batch", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def commit_batch(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Upload the open shards, renew the lease, write progress.json last, check the counts."""
    progress = session.writer.commit()
    _count(session, products, output)
    stats = session.stats
    get_run_logger().info(
        "batch %d: %d products (%d failed) up to id %r; commit %d",
        stats.batches,
        len(products),
        len(output.failures),
        products[-1].id,
        progress.commit_seq,
    )
    progress_events.publish("batch", done=stats.products, failed=stats.failed)


def to_embedded_batch(products: list[Product], output: EmbedOutput) -> EmbeddedBatch:
    """The embedding result in the writer's terms: brands attached, failures kept, the page's end."""
    from sharding.writer import EmbeddedBatch, FailedProduct

    brands = {product.id: product.brand for product in products}
    return EmbeddedBatch(
        ids=list(output.ids),
        brands=[brands[product_id] for product_id in output.ids],
        vectors=output.vectors,
        failures=[
            FailedProduct(id=f.id, reason=f.reason, message=f.message) for f in output.failures
        ],
        last_id=products[-1].id,
    )


@task(name="finish-build", **_TASK_OPTIONS)
def finish_build(session: BuildSession) -> dict[str, Any]:
    """Refresh the full id maps and summarise the run."""
    session.writer.finish()
    progress = session.writer.progress
    stats = session.stats
    return {
        "run_id": session.run_id,
        "store": session.storage.describe(),
        "embedder": progress.embedder,
        "model": progress.model,
        "kinds": session.kinds,
        "products": stats.products,
        "batches": stats.batches,
        "failed": stats.failed,
        # Products this run read that a kind had already indexed (a kind's cursor was ahead).
        "skipped": sum(
            stats.products - stats.failed - (progress.total_vectors(k) - session.totals_at_start[k])
            for k in session.kinds
        ),
        "vectors_added": {
            kind: progress.total_vectors(kind) - session.totals_at_start[kind]
            for kind in session.kinds
        },
        "total_vectors": {kind: progress.total_vectors(kind) for kind in session.kinds},
        "shards": {kind: progress.kinds[kind].shard_count() for kind in session.kinds},
        "elapsed_s": round(stats.elapsed_s, 3),
        "images_per_s": round(stats.products / stats.elapsed_s, 2) if stats.elapsed_s else 0.0,
        "failures": stats.failures,
        "vectors_per_brand": {
            kind: dict(progress.kinds[kind].vectors_per_brand) for kind in session.kinds
        },
    }


@task(name="release-lease", **_TASK_OPTIONS)
def release_lease(session: BuildSession) -> None:
    """Stop renewing and give the store back, so the next run need not wait for the expiry."""
    session.keeper.stop()
    session.lease.release()


def _signed_for_fetch(catalog: Catalog, products: list[Product]) -> list[Product]:
    """Private-bucket paths become signed URLs just before dispatch (Supabase catalogs only)."""
    sign = getattr(catalog, "sign_for_fetch", None)
    return sign(products) if sign is not None and products else products


def _count(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    stats = session.stats
    stats.products += len(products)
    stats.batches += 1
    stats.failed += len(output.failures)
    # The summary shows the first few; all of them are durable in the store (status --failed).
    room = FAILURES_IN_SUMMARY - len(stats.failures)
    stats.failures.extend(
        {"id": f.id, "reason": f.reason, "message": f.message} for f in output.failures[:room]
    )
