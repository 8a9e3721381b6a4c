"""The `build-index` flow: catalog pages → embedding batches in flight → ordered append and commit."""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from application.catalog.base import Product
from application.settings import Backend, EmbedderName, Kind, load_settings
from tasks import progress_events
from tasks.artifacts import publish_summary, report_progress, start_progress
from tasks.build import (
    BuildSession,
    append_batch,
    commit_batch,
    count_pending,
    embed_batch,
    fetch_page,
    fetch_products,
    finish_build,
    list_failed,
    release_lease,
    retry_batch,
    start_build,
    update_ann,
)
from tasks.config import check_deployment_settings
from tasks.sync import sync_catalog

InFlight = deque[tuple[list[Product], PrefectFuture[Any]]]
T = TypeVar("T")


# 64 workers: max_in_flight may be up to 64 (a Modal fleet's max_containers x inputs each).
@flow(name="build-index", task_runner=ThreadPoolTaskRunner(max_workers=64))  # type: ignore[arg-type]
def build_index(
    kinds: list[Kind] | None = None,
    max_images: int | None = None,
    batch_size: int | None = None,
    backend: Backend | None = None,
    embedder: EmbedderName | None = None,
    model: str | None = None,
    max_in_flight: int | None = None,
    store: str | None = None,
    catalog: str | None = None,
    allow_private_urls: bool | None = None,
    lease_wait_s: float | None = None,
    retry_failed: bool | None = None,
    reconcile: bool | None = None,
) -> dict[str, Any]:
    """Embed pending catalog products into the FAISS shards of each kind; resumable at any point.

    A parameter left empty takes its setting (FAISS_BUILDER_* variables, or .env in the folder
    the flow runs in: for a deployment, the project folder the worker or serve runs from).

    Args:
        kinds: Index kinds to build (color, structure, combined). Empty: FAISS_BUILDER_KINDS,
            default all three.
        max_images: Stop after this many products. Empty: FAISS_BUILDER_MAX_IMAGES, default no
            limit.
        batch_size: Products per embedding batch. Empty: FAISS_BUILDER_BATCH_SIZE, default 256.
        backend: Where images are embedded: local (in the flow's process) or modal (A10G GPUs).
            Empty: FAISS_BUILDER_BACKEND, default local.
        embedder: clip, or the weight-free histogram. Empty: FAISS_BUILDER_EMBEDDER, default
            clip.
        model: CLIP model id or local folder. Empty: FAISS_BUILDER_MODEL, default
            openai/clip-vit-base-patch32.
        max_in_flight: Embedding batches running at once. Empty: FAISS_BUILDER_MAX_IN_FLIGHT,
            default 2 (local) or, for modal, what fills the deployment's containers.
        store: A local folder, or supabase. Empty: FAISS_BUILDER_STORE (a deployment refuses to
            start without it).
        catalog: A CSV/JSONL file, or supabase. Empty: FAISS_BUILDER_CATALOG (a deployment
            refuses to start without it).
        allow_private_urls: Allow loopback/private image hosts (local testing only). Empty:
            FAISS_BUILDER_ALLOW_PRIVATE_URLS, default false.
        lease_wait_s: Seconds a second build waits for the store lease before giving up. Empty:
            FAISS_BUILDER_LEASE_WAIT_S, default 0.
        retry_failed: First re-fetch and re-embed the products recorded as failed. Empty:
            FAISS_BUILDER_RETRY_FAILED, default false.
        reconcile: Also find rows deleted from a Supabase table, by one pass over its ids (a
            local file's deletions are found at every build). Empty: FAISS_BUILDER_RECONCILE,
            default false.
    """
    settings = load_settings(
        kinds=tuple(kinds) if kinds else None,
        max_images=max_images,
        batch_size=batch_size,
        backend=backend,
        embedder=embedder,
        model=model,
        max_in_flight=max_in_flight,
        store=store,
        catalog=catalog,
        allow_private_urls=allow_private_urls,
        lease_wait_s=lease_wait_s,
        retry_failed=retry_failed,
        reconcile=reconcile,
    )
    check_deployment_settings(settings)
    run_id = str(flow_run.get_id() or "local")
    session = start_build(settings, run_id)
    try:
        # First follow the catalog (changed, deleted rows), then append rows above the cursor.
        sync = sync_catalog(
            _unvisited(session), settings.embed.batch_size, settings.catalog.reconcile
        )
        if settings.embed.retry_failed:
            _retry_failures(session, settings.embed.batch_size)
        _run_batches(session, settings.embed.batch_size, session.max_in_flight)
        summary = finish_build(session)
        summary = update_ann(session, summary)
        summary["sync"] = sync
    finally:
        release_lease(session)
    publish_summary(summary)
    get_run_logger().info(
        "built %s: %s products, %s failed, %s images/s",
        ", ".join(summary["kinds"]),
        summary["products"],
        summary["failed"],
        summary["images_per_s"],
    )
    return summary


def _run_batches(session: BuildSession, batch_size: int, max_in_flight: int) -> None:
    """Keep up to `max_in_flight` embedding batches running; write results strictly in batch order."""
    artifact = start_progress(session.storage.describe(), session.kinds)
    total = count_pending(_unvisited(session))
    progress_events.publish("start", total=total)
    in_flight: InFlight = deque()
    after = session.resume_after()
    while limit := session.room_left(batch_size, _queued(in_flight)):
        products = fetch_page(_unvisited(session), after, limit)
        if not products:
            break
        after = products[-1].id
        future = embed_batch.submit(_unvisited(session), _unvisited(products))
        in_flight.append((products, future))
        if len(in_flight) >= max_in_flight:
            _write_oldest(session, in_flight, artifact, total)
    while in_flight:
        _write_oldest(session, in_flight, artifact, total)


def _retry_failures(session: BuildSession, batch_size: int) -> None:
    """Recorded failures, batch by batch: fetch as the catalog has them now, embed, index, commit."""
    failed = list_failed(_unvisited(session))
    for start in range(0, len(failed), batch_size):
        products = fetch_products(_unvisited(session), failed[start : start + batch_size])
        if not products:
            continue
        output = embed_batch(_unvisited(session), _unvisited(products))
        retry_batch(_unvisited(session), _unvisited(products), _unvisited(output))
        commit_batch(_unvisited(session), _unvisited(products), _unvisited(output))


def _write_oldest(
    session: BuildSession, in_flight: InFlight, artifact: Any, total: int | None
) -> None:
    products, future = in_flight.popleft()
    output = future.result()
    append_batch(_unvisited(session), _unvisited(products), _unvisited(output))
    commit_batch(_unvisited(session), _unvisited(products), _unvisited(output))
    # The shards hold copies now. Prefect's future <-> state reference cycle would keep this
    # batch's vectors alive until a full GC: peak memory grew with the catalog (bench/memory).
    output.vectors.clear()
    report_progress(artifact, session.stats.products, total)


def _unvisited(value: T) -> T:
    """A task argument Prefect passes as is: unquoted, it walks every product and vector looking
    for futures (about 0.25 s per 4,096-product batch, measured by bench/flow_ceiling)."""
    return cast(T, quote(value))


def _queued(in_flight: InFlight) -> int:
    """Products fetched but not yet written count against max_images too."""
    return sum(len(products) for products, _ in in_flight)
