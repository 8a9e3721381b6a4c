"""Prefect tasks of the alignment check: structural checks, the re-embedded sample, the report."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from application.connect import open_storage
from application.settings import Settings
from application.verify import SampleReport, check_sample, render_check, store_kinds
from sharding.checks import AlignmentReport
from tasks.artifacts import artifact_key
from tasks.retry import TRANSIENT_RETRIES

_OPTIONS: dict[str, Any] = {"cache_policy": NONE, "persist_result": False, **TRANSIENT_RETRIES}


@task(name="held-kinds", **_OPTIONS)
def held_kinds_task(settings: Settings) -> tuple[str, list[str]]:
    """The store's description and the kinds its progress.json has committed."""
    storage = open_storage(settings)
    return storage.describe(), store_kinds(storage)


@task(name="check-store", **_OPTIONS)
def check_store_task(settings: Settings, kinds: list[str] | None) -> AlignmentReport:
    """Counts, id maps, duplicates, objects, checksums, dimensions and norms of each kind."""
    from sharding.checks import check_store

    storage = open_storage(settings)
    return check_store(storage, kinds or store_kinds(storage))


@task(name="check-sample", **_OPTIONS)
def check_sample_task(
    settings: Settings, kinds: list[str], sample: int, threshold: float, seed: int | None
) -> SampleReport:
    """Re-embed a random sample with the index's own embedder; each must find itself."""
    return check_sample(settings, open_storage(settings), kinds, sample, threshold, seed)


@task(name="publish-check-report", cache_policy=NONE, persist_result=False)
def publish_check_report(
    report: AlignmentReport, sample: SampleReport | None, store: str, kinds: list[str]
) -> None:
    """The report as a markdown artifact, and the sample as a table, keyed by store and kinds."""
    create_markdown_artifact(
        render_check(report, sample), key=artifact_key("check-report", store, kinds)
    )
    if sample is not None and sample.results:
        create_table_artifact(
            [
                {"kind": r.kind, "id": r.id, "ok": r.ok, "score": r.score, "note": r.note}
                for r in sample.results
            ],
            key=artifact_key("check-sample", store, kinds),
        )
