"""The `alignment-check` flow: proves index and id maps agree; the run fails when anything is off."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from application.settings import Backend, Kind, load_settings
from application.verify import DEFAULT_SELF_SIMILARITY
from tasks.check import check_sample_task, check_store_task, publish_check_report


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

    Kinds default to every kind the store holds; the run fails when anything is misaligned.
    """
    settings = load_settings(
        backend=backend,
        store=store,
        catalog=catalog,
        allow_private_urls=allow_private_urls,
    )
    requested: list[str] | None = [str(kind) for kind in kinds] if kinds else None
    report = check_store_task(settings, requested)
    kind_list = requested or list(report.kinds)
    sample_report = (
        check_sample_task(settings, kind_list, sample, threshold, seed)
        if sample > 0 and report.ok
        else None
    )
    publish_check_report(report, sample_report)
    result = {
        "store": report.to_dict(),
        "sample": sample_report.to_dict() if sample_report else None,
    }
    if not report.ok or (sample_report is not None and not sample_report.ok):
        raise AlignmentError(_failure_message(report, sample_report))
    get_run_logger().info("alignment check passed for %s", ", ".join(kind_list))
    return result


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
