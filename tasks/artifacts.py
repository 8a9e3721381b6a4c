"""Prefect artifacts for a build: live progress, the final summary, vectors per brand, failures."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from application.session import FAILURES_IN_SUMMARY


def artifact_key(what: str, store: str, kinds: Iterable[str]) -> str:
    """A Prefect artifact key of one store and its kinds: `<what>-<kinds>-<store slug>-<hash>`.

    Prefect keys take lowercase letters, digits and dashes only, so the store's description is
    slugged (its last 24 characters) and an 8-digit hash of the whole description keeps two
    stores whose slugs meet apart. The Artifacts page then lists each store and kind on its own.
    """
    digest = hashlib.sha256(store.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", store.lower())[-24:].strip("-") or "store"
    kind_part = "-".join(re.sub(r"[^a-z0-9]+", "-", kind.lower()) for kind in kinds) or "all"
    return f"{what}-{kind_part}-{slug}-{digest}"


@task(name="create-progress-artifact", cache_policy=NONE, persist_result=False)
def start_progress(store: str, kinds: list[str]) -> UUID:
    # Called from sync code, so Prefect's async_dispatch returns the id, not a coroutine.
    artifact_id = create_progress_artifact(
        0.0,
        key=artifact_key("build-progress", store, kinds),
        description=f"Products processed into {', '.join(kinds)} of {store}",
    )
    return cast(UUID, artifact_id)


@task(name="update-progress-artifact", cache_policy=NONE, persist_result=False)
def report_progress(artifact_id: UUID, done: int, total: int | None) -> None:
    percent = 100.0 * done / total if total else 0.0
    update_progress_artifact(
        artifact_id, min(percent, 100.0), description=f"{done} of {total or '?'} products"
    )


@task(name="publish-build-summary", cache_policy=NONE, persist_result=False)
def publish_summary(summary: dict[str, Any]) -> None:
    """Markdown summary, per-brand table and the first failures, attached to the flow run."""
    store, kinds = summary["store"], summary["kinds"]
    create_markdown_artifact(
        render_summary(summary), key=artifact_key("build-summary", store, kinds)
    )
    brand_rows = [
        {"kind": kind, "brand": brand or "(none)", "vectors": count}
        for kind, brands in summary["vectors_per_brand"].items()
        for brand, count in sorted(brands.items())
    ]
    create_table_artifact(
        brand_rows, key=artifact_key("build-brands", store, kinds), description="Vectors per brand"
    )
    create_table_artifact(
        summary["failures"] or [{"id": "", "reason": "", "message": "no failures"}],
        key=artifact_key("build-failures", store, kinds),
        description=f"Failed products of this run (first {FAILURES_IN_SUMMARY}, with reasons)",
    )


def render_summary(summary: dict[str, Any]) -> str:
    """A short markdown report of one build run."""
    lines = [
        f"# build-index run `{summary['run_id']}`",
        "",
        f"Store: {summary['store']}  ",
        f"Embedder: **{summary['embedder']}** (`{summary['model']}`)",
        "",
        "| kind | vectors added | total vectors | shards |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {kind} | {summary['vectors_added'][kind]} | {summary['total_vectors'][kind]} "
        f"| {summary['shards'][kind]} |"
        for kind in summary["kinds"]
    ]
    lines += [
        "",
        f"Products processed: {summary['products']} in {summary['batches']} batches; "
        f"failed: {summary['failed']}; skipped (already indexed): {summary['skipped']}",
        f"Throughput: {summary['images_per_s']} images/s over {summary['elapsed_s']} s",
    ]
    ann = summary.get("ann", {}).get("kinds", {})
    if any("type" in a for a in ann.values()):  # the update-ann step (sharding.ann)
        lines += [
            "",
            "| kind | approximate index | nlist | nprobe | recall@10 | vectors | serving |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {kind} | {a['type']} g{a['generation']} ({a['action']}) | {a['nlist']} "
            f"| {a['nprobe']} | {a['recall_at_10']} | {a['vectors']} | {a['serving']} |"
            for kind, a in ann.items()
            if "type" in a
        ]
    lines += [f"Warning: {w}" for w in summary.get("ann", {}).get("failed", [])]
    return "\n".join(lines)
