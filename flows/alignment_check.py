"""The `alignment-check` flow: proves index and id maps agree; the run fails when anything is off."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from application.settings import Backend, Kind, load_settings
from application.verify import DEFAULT_SELF_SIMILARITY
from tasks.check import (
    check_sample_task,
    check_store_task,
    held_kinds_task,
    publish_check_report,
)
from tasks.config import check_deployment_settings


class AlignmentError(RuntimeError):
    """The store failed the alignment check; the message lists what is wrong."""


@flow(name="alignment-check")
def alignment_check(
    kinds: list[Kind] | None = None,
    sample: int = 16,
    threshold: float = DEFAULT_SELF_SIMILARITY,
    seed: int | None = None,
    backend: Backend | None = None,
    store: str | None = None,
    catalog: str | None = None,
    allow_private_urls: bool | None = None,
) -> dict[str, Any]:
    """Check each kind's shards, id maps and checksums, then re-embed a sample that must find itself.

    The run fails when anything is misaligned, or when the store holds no index at all. A
    requested kind the store never built is skipped with a warning in the run's log.

    Args:
        kinds: Kinds to check (color, structure, combined). Empty: every kind the store holds.
        sample: Products per kind to re-embed and look up; 0 skips the re-embedded sample.
        threshold: Lowest cosine similarity a re-embedded product may have with its own vector.
        seed: Seed of the random sample. Empty: a different sample every run.
        backend: Where the sample is re-embedded: local or modal. Empty: FAISS_BUILDER_BACKEND.
        store: A local folder, or supabase. Empty: FAISS_BUILDER_STORE of the worker's .env.
        catalog: CSV/JSONL file or supabase, to re-fetch the sample. Empty: FAISS_BUILDER_CATALOG.
        allow_private_urls: Allow loopback/private image hosts (local testing only). Empty:
            FAISS_BUILDER_ALLOW_PRIVATE_URLS.
    """
    settings = load_settings(
        backend=backend,
        store=store,
        catalog=catalog,
        allow_private_urls=allow_private_urls,
    )
    check_deployment_settings(settings)
    store_name, held = held_kinds_task(settings)
    kind_list = _kinds_to_check([str(kind) for kind in kinds or []], held, store_name)
    report = check_store_task(settings, kind_list)
    sample_report = (
        check_sample_task(settings, kind_list, sample, threshold, seed)
        if sample > 0 and report.ok
        else None
    )
    publish_check_report(report, sample_report, store_name, kind_list)
    result = {
        "store": report.to_dict(),
        "sample": sample_report.to_dict() if sample_report else None,
    }
    if not report.ok or (sample_report is not None and not sample_report.ok):
        raise AlignmentError(_failure_message(report, sample_report))
    get_run_logger().info("alignment check passed for %s", ", ".join(kind_list))
    return result


def _kinds_to_check(requested: list[str], held: list[str], store: str) -> list[str]:
    """The requested kinds the store holds (all it holds when none were requested)."""
    if not held:
        raise AlignmentError(f"alignment check failed: {store} holds no index yet (build first)")
    if not requested:
        return held
    missing = [kind for kind in requested if kind not in held]
    if missing:
        get_run_logger().warning(
            "skipping %s: never built in %s (it holds %s)",
            ", ".join(missing),
            store,
            ", ".join(held),
        )
    present = [kind for kind in requested if kind in held]
    if not present:
        raise AlignmentError(
            f"alignment check failed: {store} holds none of {', '.join(requested)} "
            f"(it holds {', '.join(held)})"
        )
    return present


def _failure_message(report: Any, sample_report: Any) -> str:
    problems = [f"{p.kind}: {p.message}" for p in report.problems if p.severity == "error"]
    if sample_report is not None and not sample_report.ok:
        failed = [f"{r.kind} {r.id!r}" for r in sample_report.results if not r.ok]
        problems.append(
            f"re-embedded sample: {len(failed)} not found as own neighbour ({', '.join(failed[:5])})"
            if failed
            else "re-embedded sample: no product could be re-embedded"
        )
    return "alignment check failed: " + "; ".join(problems)
