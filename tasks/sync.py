"""The Prefect task of a build's sync pass: one line over application.sync."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from application.session import BuildSession
from application.sync import sync_catalog as run_sync


@task(name="sync-catalog", cache_policy=NONE, persist_result=False)
def sync_catalog(session: BuildSession, batch_size: int, reconcile: bool) -> dict[str, Any]:
    """Re-embed changed products, kill deleted ones (soft; hard for files, and for a table when
    `reconcile`), commit per page."""
    stats = run_sync(session, batch_size, reconcile=reconcile)
    if stats.followed:
        get_run_logger().info(
            "sync: %d changed rows read, %d re-embedded (%d failed), %d soft- and %d hard-deleted",
            stats.rows_read,
            stats.reembedded,
            stats.failed,
            stats.soft_deleted,
            stats.hard_deleted,
        )
    return stats.to_dict()
