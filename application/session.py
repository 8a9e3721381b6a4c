"""One build run: the clients, the writer and its lease, the run's counters and its summary.

The Prefect tasks in tasks/build.py are one-line wrappers over the methods here, so the same
session can be driven without Prefect (tests, benchmarks) and the backend can be injected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from application.backends import CallPool
from application.catalog.base import Catalog, Product, ProductId, split_refused
from application.catalog.coverage import unindexed_below_cursor, unreachable_message
from application.connect import (
    EmbedBackend,
    fetch_limits,
    open_backend,
    open_catalog,
    open_storage,
)
from application.settings import Settings

if TYPE_CHECKING:
    from modal_workers.types import EmbedOutput, FetchLimits
    from sharding.lease import LeaseInfo, LeaseKeeper, StoreLease
    from sharding.progress import Progress
    from sharding.storage import Storage
    from sharding.writer import BuildConfig, EmbeddedBatch, IndexWriter

#: The run summary lists this many failures; all of them are durable in the store.
FAILURES_IN_SUMMARY = 100
#: Embedding batches in flight when neither the settings nor the backend say (local backend).
DEFAULT_MAX_IN_FLIGHT = 2
#: Chunks a run holds at least (products and vectors): the one being written and the next two,
#: whose calls keep the fleet busy meanwhile. With one queued, a fleet of fed A10Gs (a 256-call
#: in ~0.2 s) idled while each chunk was written: 0.78 of linear in bench.fleet at 1,226 img/s.
MIN_CHUNKS_HELD = 3
#: Catalog rows after the cursor looked at for image paths a remote backend cannot reach.
PATH_SAMPLE = 256


@dataclass
class BuildStats:
    """Counters for the run summary."""

    started: float = field(default_factory=time.monotonic)
    products: int = 0
    batches: int = 0  # embedding calls
    commits: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def count(self, products: list[Product], output: EmbedOutput, calls: int = 1) -> None:
        self.products += len(products)
        self.batches += calls
        self.commits += 1
        self.failed += len(output.failures)
        room = FAILURES_IN_SUMMARY - len(self.failures)
        self.failures.extend(
            {"id": f.id, "reason": f.reason, "message": f.message} for f in output.failures[:room]
        )


@dataclass
class PendingChunk:
    """One commit's products, split into calls queued on the run's CallPool (catalog order)."""

    products: list[Product]
    calls: list[list[Product]]
    futures: list[Future[EmbedOutput]]
    #: Calls whose error was raised to the caller once: a retry of collect sends them again.
    raised: set[int] = field(default_factory=set)


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
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    #: Products per embedding call, and per commit (a chunk: many calls, one Prefect task chain).
    batch_size: int = 256
    commit_size: int = 2 * 256
    #: When a kind gets an approximate index, and the recall it must reach to serve.
    ann_min_vectors: int = 100_000
    ann_min_recall: float = 0.95
    #: Seconds below the sync position each sync re-reads (application.sync, late commits).
    sync_overlap_s: float = 300.0
    _pool: CallPool | None = field(default=None, repr=False)

    @property
    def chunks_held(self) -> int:
        """Chunks the flow keeps dispatched before writing the oldest: enough queued calls to
        fill `max_in_flight` while one chunk is written, and never fewer than three."""
        wave = self.max_in_flight * self.batch_size
        return max(MIN_CHUNKS_HELD, math.ceil(wave / self.commit_size) + 1)

    def room_left(self, batch_size: int, queued: int) -> int:
        """How many products the next page may hold under max_images, given `queued` in flight."""
        if self.max_images is None:
            return batch_size
        return max(0, min(batch_size, self.max_images - self.stats.products - queued))

    def resume_after(self) -> ProductId | None:
        """The catalog id the next page starts after."""
        return self.writer.resume_after()

    def fetch_page(self, after: ProductId | None, limit: int) -> list[Product]:
        """The next products in id order after `after`, signed for fetching."""
        return self._signed(self.catalog.page(after, limit))

    def fetch_products(self, ids: list[ProductId]) -> list[Product]:
        """These products as the catalog has them now (gone ones are left out), signed."""
        return self._signed(self.catalog.get(ids))

    def count_pending(self) -> int | None:
        """Products this run will process, for progress: pending, capped by max_images."""
        count_after = getattr(self.catalog, "count_after", None)
        if count_after is None:
            return self.max_images
        pending = int(count_after(self.resume_after()))
        return min(pending, self.max_images) if self.max_images else pending

    def failed_ids(self) -> list[ProductId]:
        """Recorded failures in any of this run's kinds, oldest first, each id once."""
        return self.writer.failed_ids(self.kinds)

    def embed(self, products: list[Product]) -> EmbedOutput:
        """Download and embed one batch; bad images come back as failures, not exceptions."""
        from modal_workers.types import ImageRef

        # Rows the catalog already refused (a private path Storage would not sign) are recorded
        # as failed with the catalog's reason, never sent to a worker.
        ready, refused = split_refused(products)
        refs = [ImageRef(id=product.id, url=product.image_url) for product in ready]
        output = self.backend.embed(refs, self.kinds, self.limits)
        output.failures.extend(refused)
        return output

    def dispatch(self, products: list[Product]) -> PendingChunk:
        """Queue a chunk's calls of `batch_size` products on the shared pool; returns at once."""
        if self._pool is None:
            self._pool = CallPool(self.max_in_flight)
        size = self.batch_size
        calls = [products[start : start + size] for start in range(0, len(products), size)]
        return PendingChunk(products, calls, [self._pool.submit(self.embed, c) for c in calls])

    def collect(self, chunk: PendingChunk) -> EmbedOutput:
        """Wait for the chunk's calls in catalog order and join their answers into one output.

        A call's exception is raised (the task's retry policy judges it); collecting again sends
        the calls that raised once more and waits for them.
        """
        if self._pool is None:
            raise RuntimeError("collect() before dispatch()")
        for number in sorted(chunk.raised):
            chunk.futures[number] = self._pool.submit(self.embed, chunk.calls[number])
        chunk.raised.clear()
        outputs = []
        for number, future in enumerate(chunk.futures):
            try:
                outputs.append(future.result())
            except Exception:
                chunk.raised.add(number)
                raise
        chunk.futures.clear()  # the joined output is the only copy of the vectors now
        return join_outputs(outputs, self.kinds)

    def append(self, products: list[Product], output: EmbedOutput) -> None:
        """Append a batch to each kind's open shard, uploading shards it seals (safe to retry)."""
        self.writer.add_batch(to_embedded_batch(products, output))

    def retry(self, products: list[Product], output: EmbedOutput) -> None:
        """Index the failures that now embed; the others keep their record with a fresh reason."""
        self.writer.retry_failed(to_embedded_batch(products, output))

    def commit(self, products: list[Product], output: EmbedOutput) -> Progress:
        """Upload the open shards, write progress.json last, check the counts; count the chunk
        and its calls."""
        progress = self.writer.commit()
        self.stats.count(products, output, calls=math.ceil(len(products) / self.batch_size))
        return progress

    def finish(self) -> dict[str, Any]:
        """Refresh the full id maps and summarise the run."""
        self.writer.finish()
        return summarize(self)

    def update_ann(self, summary: dict[str, Any]) -> dict[str, Any]:
        """After the run's commits: train or extend each kind's approximate index, measure its
        recall, commit it under the lease (sharding.ann). The summary gains `ann` (per kind what
        it did); a kind whose index changed but missed the minimum recall is not served, and its
        failed check is listed under `ann.failed` and in `warnings`."""
        from sharding.ann import AnnConfig, update_ann

        config = AnnConfig(min_vectors=self.ann_min_vectors, min_recall=self.ann_min_recall)
        result: dict[str, Any] = {"kinds": {}, "failed": []}
        for kind in self.kinds:
            report = update_ann(
                self.writer.storage, kind, config, run_id=self.run_id, guard=self.lease.verify
            )
            result["kinds"][kind] = report.as_dict()
            if report.failed:
                assert report.state is not None
                result["failed"].append(
                    f"ann {kind}: recall@10 {report.state.recall_at_10} < {config.min_recall} "
                    f"even at nprobe {report.state.nprobe} of {report.state.nlist}: not served "
                    "(search stays exact)"
                )
        return {**summary, "ann": result, "warnings": [*summary["warnings"], *result["failed"]]}

    def close(self) -> None:
        """Cancel calls not started, stop renewing and give the store back, so the next run need
        not wait for the expiry."""
        self.close_pool()
        self.keeper.stop()
        self.lease.release()

    def close_pool(self) -> None:
        """Cancel the calls not started yet (the running ones end on their own)."""
        if self._pool is not None:
            self._pool.close()

    def _signed(self, products: list[Product]) -> list[Product]:
        """Private-bucket paths become signed URLs just before dispatch (Supabase catalogs)."""
        sign = getattr(self.catalog, "sign_for_fetch", None)
        return sign(products) if sign is not None and products else products


def open_session(
    settings: Settings,
    run_id: str,
    *,
    backend: EmbedBackend | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildSession:
    """Connect everything and take the store lease; refuse bad configuration before any write.

    `backend` replaces the one the settings name (tests, benchmarks); `log` hears, among other
    things, for whom the run waits when another holds the store's lease.
    """
    from sharding.state import read_progress
    from sharding.writer import check_resume

    storage, catalog = open_storage(settings), open_catalog(settings)
    embed = settings.embed
    backend = backend or open_backend(settings, embed.embedder, embed.model)
    config = build_config(settings, backend.describe())
    committed = read_progress(storage)
    if committed is not None:  # refuse a mismatching resume before the lease, our first write
        check_resume(committed, config, storage.describe())
        for kind in embed.kinds:  # a catalog whose ids are of another type: CatalogMismatch
            cursor = committed.cursor(kind)
            if cursor is not None:
                catalog.count_at_or_below(cursor)
    cursors = [committed.cursor(kind) for kind in embed.kinds] if committed is not None else []
    after = None if not cursors or None in cursors else min(cursors)  # type: ignore[type-var]
    check_images_reachable(backend, catalog, after)
    lease, keeper, writer = open_writer(storage, config, settings, run_id, log=log)
    max_in_flight = embed.max_in_flight or calls_to_fill(backend)
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
        max_in_flight=max_in_flight,
        batch_size=embed.batch_size,
        commit_size=embed.commit_size or max_in_flight * embed.batch_size,
        ann_min_vectors=settings.store.ann_min_vectors,
        ann_min_recall=settings.store.ann_min_recall,
        sync_overlap_s=settings.catalog.sync_overlap_s,
    )


def calls_to_fill(backend: EmbedBackend) -> int:
    """Batches in flight that keep the backend busy: a Modal deployment's max_containers x
    inputs per container (read from the deployment), else DEFAULT_MAX_IN_FLIGHT."""
    calls_in_flight = getattr(backend, "calls_in_flight", None)
    return int(calls_in_flight()) if calls_in_flight is not None else DEFAULT_MAX_IN_FLIGHT


def check_images_reachable(
    backend: EmbedBackend, catalog: Catalog, after: ProductId | None
) -> None:
    """A backend that fetches on other machines (Modal) cannot read this machine's files: refuse
    a catalog whose next rows name local paths before anything is written."""
    from application.errors import ConfigError
    from modal_workers.fetch import is_http_url

    if not getattr(backend, "fetches_remotely", False) or catalog.local_root is None:
        return
    local = [p for p in catalog.page(after, PATH_SAMPLE) if not is_http_url(p.image_url)]
    if local:
        raise ConfigError(
            f"the catalog names local image files (e.g. product {local[0].id}) but the modal "
            "backend fetches images on Modal's machines, which cannot read them: upload the "
            "images and put their http(s) URLs in image_url, or use --backend local"
        )


def preflight(settings: Settings) -> None:
    """Open the store and the catalog and read the last commit, writing nothing: what the build
    would refuse for its configuration is refused here first, before anything is started."""
    from sharding.state import read_progress

    open_catalog(settings)
    read_progress(open_storage(settings))


def build_config(settings: Settings, described: dict[str, Any]) -> BuildConfig:
    """What the store must agree with: the backend's embedder, model and dims, the shard limits."""
    from sharding.writer import BuildConfig

    return BuildConfig(
        embedder=described["embedder"],
        model=described["model"],
        # Older Modal deployments do not describe their weights: the store then keeps what it has.
        model_digest=described.get("model_digest"),
        dims={kind: described["dims"][kind] for kind in settings.embed.kinds},
        shard_max_vectors=settings.store.shard_max_vectors,
        shard_max_bytes=settings.store.shard_max_bytes,
    )


def open_writer(
    storage: Storage,
    config: BuildConfig,
    settings: Settings,
    run_id: str,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[StoreLease, LeaseKeeper, IndexWriter]:
    """Take the lease, keep it renewed from now on, then open (and verify) the store under it.

    The writer gets the store through a fence: no write of its starts, and no retry of one goes
    on, once the lease may have passed to another run (the lease's own deadline, monotonic).
    """
    from sharding.lease import LeaseKeeper, StoreLease
    from sharding.storage import FencedStorage
    from sharding.writer import IndexWriter

    store = settings.store

    def waiting(holder: LeaseInfo, wait_s: float) -> None:
        if log is not None:
            log(
                f"{storage.describe()} is held by run {holder.run_id}; "
                + (f"waiting up to {wait_s:g} s for it" if wait_s > 0 else "waiting for it")
            )

    lease = StoreLease.acquire(
        storage, run_id, ttl_s=store.lease_ttl_s, wait_s=store.lease_wait_s, on_wait=waiting
    )
    keeper = LeaseKeeper(lease).start()
    try:
        writer = IndexWriter.open(
            FencedStorage(storage, lease),
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


def join_outputs(outputs: list[EmbedOutput], kinds: list[str]) -> EmbedOutput:
    """Consecutive calls' answers as one: ids, vectors and failures in call order."""
    import numpy as np

    from modal_workers.types import EmbedOutput

    if len(outputs) == 1:
        return outputs[0]
    if not outputs:
        raise ValueError("a chunk of no calls")
    vectors = {}
    for kind in kinds:
        parts = [o.vectors[kind] for o in outputs if len(o.vectors[kind])]
        vectors[kind] = np.concatenate(parts) if parts else outputs[0].vectors[kind]
    return EmbedOutput(
        ids=[product_id for o in outputs for product_id in o.ids],
        vectors=vectors,
        failures=[failure for o in outputs for failure in o.failures],
    )


def to_embedded_batch(products: list[Product], output: EmbedOutput) -> EmbeddedBatch:
    """The embedding result in the writer's terms: brands attached, failures kept, the page's end."""
    from sharding.writer import EmbeddedBatch

    brands = {product.id: product.brand for product in products}
    return EmbeddedBatch(
        ids=list(output.ids),
        brands=[brands[product_id] for product_id in output.ids],
        vectors=output.vectors,
        failures=list(output.failures),  # the writer takes any .id/.reason/.message object
        last_id=products[-1].id,
    )


def summarize(session: BuildSession) -> dict[str, Any]:
    """The run summary: counts, vectors added and held per kind, speed, failures, brands."""
    progress = session.writer.progress
    stats = session.stats
    kinds = session.kinds
    added = {k: progress.total_vectors(k) - session.totals_at_start[k] for k in kinds}
    unreachable = unindexed_below_cursor(
        session.catalog, progress, session.writer.failures(), kinds
    )
    return {
        "run_id": session.run_id,
        "store": session.storage.describe(),
        "embedder": progress.embedder,
        "model": progress.model,
        "kinds": kinds,
        "products": stats.products,
        "batches": stats.batches,
        "commits": stats.commits,
        "calls_in_flight": session.max_in_flight,
        "commit_size": session.commit_size,
        "failed": stats.failed,
        # Products this run read that a kind had already indexed (a kind's cursor was ahead).
        "skipped": sum(stats.products - stats.failed - added[k] for k in kinds),
        "vectors_added": added,
        "total_vectors": {kind: progress.total_vectors(kind) for kind in kinds},
        "shards": {kind: progress.kinds[kind].shard_count() for kind in kinds},
        "elapsed_s": round(stats.elapsed_s, 3),
        "images_per_s": round(stats.products / stats.elapsed_s, 2) if stats.elapsed_s else 0.0,
        "failures": stats.failures,
        "vectors_per_brand": {kind: dict(progress.kinds[kind].vectors_per_brand) for kind in kinds},
        "unindexed_below_cursor": unreachable,
        "warnings": [line for line in [unreachable_message(unreachable)] if line],
    }
