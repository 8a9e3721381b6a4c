"""Prefect tasks of a build: one line each over application.session.BuildSession."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from application.session import BuildSession, PendingChunk, open_session
from tasks import progress_events
from tasks.retry import TRANSIENT_RETRIES

if TYPE_CHECKING:
    from application.catalog.base import Product, ProductId
    from application.settings import Settings
    from modal_workers.types import EmbedOutput

# Tasks pass live objects (the session, its clients) between each other in one process: no
# caching, no result persistence.
_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}


@task(name="start-build", **_TASK_OPTIONS)
def start_build(settings: Settings, run_id: str) -> BuildSession:
    """Connect everything and take the store lease; refuse bad configuration before any write."""
    return open_session(settings, run_id, log=get_run_logger().info)


@task(name="fetch-page", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def fetch_page(session: BuildSession, after: ProductId | None, limit: int) -> list[Product]:
    """The next products in id order after `after`, signed for fetching."""
    return session.fetch_page(after, limit)


@task(name="count-pending", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def count_pending(session: BuildSession) -> int | None:
    """Products this run will process, for the progress bar and artifact."""
    return session.count_pending()


@task(name="list-failed", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def list_failed(session: BuildSession) -> list[ProductId]:
    """Recorded failures in any of this run's kinds, oldest first, each id once."""
    return session.failed_ids()


@task(name="fetch-products", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def fetch_products(session: BuildSession, ids: list[ProductId]) -> list[Product]:
    """These products as the catalog has them now, signed for fetching."""
    return session.fetch_products(ids)


@task(name="dispatch-chunk", **_TASK_OPTIONS)
def dispatch_chunk(session: BuildSession, products: list[Product]) -> PendingChunk:
    """Queue a chunk's embedding calls (batch_size products each) behind the ones in flight."""
    return session.dispatch(products)


@task(name="collect-chunk", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def collect_chunk(session: BuildSession, chunk: PendingChunk) -> EmbedOutput:
    """Wait for the chunk's calls, in catalog order; a retry sends the calls that raised again."""
    return session.collect(chunk)


@task(name="append-chunk", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def append_chunk(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Append the chunk to each kind's open shard and upload shards it sealed (safe to retry)."""
    session.append(products, output)


@task(name="retry-chunk", **_TASK_OPTIONS)
def retry_chunk(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Index the failures that now embed; the others keep their record with a fresh reason."""
    session.retry(products, output)


@task(name="commit-chunk", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def commit_chunk(session: BuildSession, products: list[Product], output: EmbedOutput) -> None:
    """Write progress.json last (the commit), then log the chunk and tell the CLI's progress bar."""
    progress = session.commit(products, output)
    stats = session.stats
    get_run_logger().info(
        "commit %d: %d products in %d calls (%d failed) up to id %r",
        progress.commit_seq,
        len(products),
        -(-len(products) // session.batch_size),
        len(output.failures),
        products[-1].id,
    )
    progress_events.publish("batch", done=stats.products, failed=stats.failed)


@task(name="finish-build", **_TASK_OPTIONS)
def finish_build(session: BuildSession) -> dict[str, Any]:
    """Refresh the full id maps and summarise the run."""
    return session.finish()


@task(name="update-ann", **TRANSIENT_RETRIES, **_TASK_OPTIONS)
def update_ann(session: BuildSession, summary: dict[str, Any]) -> dict[str, Any]:
    """Train or extend each kind's approximate index, measure recall, commit it (under the lease)."""
    return session.update_ann(summary)


@task(name="release-lease", **_TASK_OPTIONS)
def release_lease(session: BuildSession) -> None:
    """Stop renewing and give the store back."""
    session.close()
