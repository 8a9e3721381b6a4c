"""The `build-index` flow: catalog chunks → their embedding calls in flight → ordered append and
commit, one chunk at a time."""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from application.session import PendingChunk
from application.settings import Backend, EmbedderName, Kind, load_settings
from tasks import progress_events
from tasks.artifacts import publish_summary, report_progress, start_progress
from tasks.build import (
    BuildSession,
    append_chunk,
    collect_chunk,
    commit_chunk,
    count_pending,
    dispatch_chunk,
    fetch_page,
    fetch_products,
    finish_build,
    list_failed,
    release_lease,
    retry_chunk,
    start_build,
    update_ann,
)
from tasks.config import check_deployment_settings
from tasks.sync import sync_catalog

T = TypeVar("T")


# The embedding calls run on the session's own pool (application.backends.CallPool), not as
# Prefect tasks: Prefect's cost is paid per chunk of commit_size products, not per call.
@flow(name="build-index")
def build_index(
    kinds: list[Kind] | None = None,
    max_images: int | None = None,
    batch_size: int | None = None,
    backend: Backend | None = None,
    embedder: EmbedderName | None = None,
    model: str | None = None,
    max_in_flight: int | None = None,
    commit_size: int | None = None,
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
        batch_size: Products per embedding call. Empty: FAISS_BUILDER_BATCH_SIZE, default 256.
        backend: Where images are embedded: local (in the flow's process) or modal (A10G GPUs).
            Empty: FAISS_BUILDER_BACKEND, default local.
        embedder: clip, or the weight-free histogram. Empty: FAISS_BUILDER_EMBEDDER, default
            clip.
        model: CLIP model id or local folder. Empty: FAISS_BUILDER_MODEL, default
            openai/clip-vit-base-patch32.
        max_in_flight: Embedding calls running at once. Empty: FAISS_BUILDER_MAX_IN_FLIGHT,
            default 2 (local) or, for modal, what fills the deployment's containers.
        commit_size: Products per commit: one chunk of calls, one chain of Prefect tasks.
            Empty: FAISS_BUILDER_COMMIT_SIZE, default max_in_flight x batch_size.
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
        commit_size=commit_size,
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
            _retry_failures(session, session.commit_size)
        _run_chunks(session, session.commit_size, session.chunks_held)
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


def _run_chunks(session: BuildSession, commit_size: int, chunks_held: int) -> None:
    """Keep `chunks_held` chunks dispatched (their calls queued on the session's pool, so the
    fleet stays busy while the oldest is written); write chunks strictly in catalog order."""
    artifact = start_progress(session.storage.describe(), session.kinds)
    total = count_pending(_unvisited(session))
    progress_events.publish("start", total=total)
    held: deque[PendingChunk] = deque()
    after = session.resume_after()
    while limit := session.room_left(commit_size, _queued(held)):
        products = fetch_page(_unvisited(session), after, limit)
        if not products:
            break
        after = products[-1].id
        held.append(dispatch_chunk(_unvisited(session), _unvisited(products)))
        if len(held) >= chunks_held:
            _write_oldest(session, held, artifact, total)
    while held:
        _write_oldest(session, held, artifact, total)


def _retry_failures(session: BuildSession, commit_size: int) -> None:
    """Recorded failures, chunk by chunk: fetch as the catalog has them now, embed, index, commit."""
    failed = list_failed(_unvisited(session))
    for start in range(0, len(failed), commit_size):
        products = fetch_products(_unvisited(session), failed[start : start + commit_size])
        if not products:
            continue
        chunk = dispatch_chunk(_unvisited(session), _unvisited(products))
        output = collect_chunk(_unvisited(session), _unvisited(chunk))
        retry_chunk(_unvisited(session), _unvisited(products), _unvisited(output))
        commit_chunk(_unvisited(session), _unvisited(products), _unvisited(output))


def _write_oldest(
    session: BuildSession, held: deque[PendingChunk], artifact: Any, total: int | None
) -> None:
    chunk = held.popleft()
    output = collect_chunk(_unvisited(session), _unvisited(chunk))
    append_chunk(_unvisited(session), _unvisited(chunk.products), _unvisited(output))
    commit_chunk(_unvisited(session), _unvisited(chunk.products), _unvisited(output))
    # The shards hold copies now. Prefect's future <-> state reference cycle would keep this
    # chunk's vectors alive until a full GC: peak memory grew with the catalog (bench/memory).
    output.vectors.clear()
    report_progress(artifact, session.stats.products, total)


def _unvisited(value: T) -> T:
    """A task argument Prefect passes as is: unquoted, it walks every product and vector looking
    for futures (about 0.25 s per 4,096-product batch, measured by bench/flow_ceiling)."""
    return cast(T, quote(value))


def _queued(held: deque[PendingChunk]) -> int:
    """Products fetched but not yet written count against max_images too."""
    return sum(len(chunk.products) for chunk in held)
