"""The `compact-index` flow: kinds whose dead slots pass a threshold are rewritten into new shards."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from application.settings import Kind, load_settings
from tasks.compact import (
    compact_kinds,
    release_compaction_lease,
    start_compaction,
    update_ann_after_compaction,
)
from tasks.config import check_deployment_settings


@flow(name="compact-index")
def compact_index(
    kinds: list[Kind] | None = None,
    threshold: float | None = None,
    store: str | None = None,
    catalog: str | None = None,
    lease_wait_s: float | None = None,
) -> dict[str, Any]:
    """Compact each kind whose dead slots (deleted or replaced products) reach the threshold:
    its live vectors are rewritten into new shards, swapped in by one commit; the retired ones
    are deleted after it. Crash-safe at any point: a rerun finishes or cleans up.

    Args:
        kinds: Kinds to compact (color, structure, combined). Empty: every kind the store holds.
        threshold: Dead fraction at which a kind is compacted. Empty:
            FAISS_BUILDER_COMPACT_THRESHOLD, default 0.3.
        store: A local folder, or supabase. Empty: FAISS_BUILDER_STORE (a deployment refuses to
            start without it).
        catalog: CSV/JSONL file or supabase: the live products' brands are recounted from it.
            Empty: FAISS_BUILDER_CATALOG (a deployment refuses to start without it).
        lease_wait_s: Seconds to wait for the store lease while a build holds it. Empty:
            FAISS_BUILDER_LEASE_WAIT_S, default 0.
    """
    settings = load_settings(store=store, catalog=catalog, lease_wait_s=lease_wait_s)
    check_deployment_settings(settings)
    wanted = [str(kind) for kind in kinds] if kinds else None
    session = start_compaction(settings, str(flow_run.get_id() or "local"), wanted, threshold)
    try:
        summary = compact_kinds(session)
        summary = update_ann_after_compaction(session, summary)
    finally:
        release_compaction_lease(session)
    get_run_logger().info(
        "compaction: %s compacted, %s objects deleted",
        ", ".join(summary["compacted"]) or "nothing",
        summary["objects_deleted"],
    )
    return summary
