"""Prefect tasks of a compaction: one line each over application.compact.CompactionSession."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from application.compact import CompactionSession, open_compaction
from application.settings import Settings

_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NONE, "persist_result": False}


@task(name="start-compaction", **_TASK_OPTIONS)
def start_compaction(
    settings: Settings, run_id: str, kinds: Sequence[str] | None, threshold: float | None
) -> CompactionSession:
    """Open the store and the catalog and take the store lease (as a build does)."""
    return open_compaction(
        settings, run_id, kinds=kinds, threshold=threshold, log=get_run_logger().info
    )


@task(name="compact-kinds", **_TASK_OPTIONS)
def compact_kinds(session: CompactionSession) -> dict[str, Any]:
    """Rewrite the kinds past the threshold into new shards, one commit; delete retired objects."""
    return session.compact()


@task(name="update-ann-after-compaction", **_TASK_OPTIONS)
def update_ann_after_compaction(
    session: CompactionSession, summary: dict[str, Any]
) -> dict[str, Any]:
    """Train a fresh approximate index where the compaction dropped one (above the minimum)."""
    return session.update_ann(summary)


@task(name="release-compaction-lease", **_TASK_OPTIONS)
def release_compaction_lease(session: CompactionSession) -> None:
    """Stop renewing and give the store back."""
    session.close()
