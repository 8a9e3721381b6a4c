"""prefect.yaml and deployments/specs.py describe the same deployments, schedules and parameters."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.client.schemas.schedules import CronSchedule

from deployments.specs import DEPLOYMENTS, TIMEZONE, WORK_POOL

ENTRYPOINTS = {
    "build-index": "flows/build_index.py:build_index",
    "alignment-check": "flows/alignment_check.py:alignment_check",
    "compact-index": "flows/compact_index.py:compact_index",
}


def _yaml_deployments() -> dict[str, dict]:
    document = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    return {d["name"]: d for d in document["deployments"]}


def test_prefect_yaml_matches_the_spec_table() -> None:
    in_yaml = _yaml_deployments()
    assert set(in_yaml) == {spec.name for spec in DEPLOYMENTS}
    for spec in DEPLOYMENTS:
        entry = in_yaml[spec.name]
        assert entry["entrypoint"] == ENTRYPOINTS[spec.flow]
        assert entry["parameters"] == spec.parameters
        assert entry["schedules"] == [{"cron": spec.cron, "timezone": TIMEZONE}]
        assert entry["concurrency_limit"]["limit"] == 1
        assert entry["work_pool"]["name"] == WORK_POOL


def test_every_build_kind_has_a_deployment_and_valid_cron() -> None:
    names = {spec.full_name for spec in DEPLOYMENTS}
    assert {"build-index/color", "build-index/structure", "build-index/combined"} <= names
    for spec in DEPLOYMENTS:
        assert CronSchedule(cron=spec.cron, timezone=TIMEZONE).cron == spec.cron


def test_reconciliation_and_compaction_have_schedules_of_their_own() -> None:
    """Issue 14: the ids-only reconciliation pass runs on its own schedule (a build with
    reconcile), and compaction after it, before the nightly check audits the store."""
    by_name = {spec.full_name: spec for spec in DEPLOYMENTS}
    reconcile, compact = by_name["build-index/reconcile"], by_name["compact-index/weekly"]
    assert reconcile.parameters["reconcile"] is True
    assert "kinds" not in compact.parameters  # every kind the store holds
    nightly = {spec.cron for spec in DEPLOYMENTS if spec.name != "reconcile"} - {compact.cron}
    assert reconcile.cron not in nightly and compact.cron != reconcile.cron
    assert reconcile.cron.endswith(" 0") and compact.cron.endswith(" 0")  # weekly, Sunday
    assert int(reconcile.cron.split()[1]) <= int(compact.cron.split()[1]) < 5  # before 05:00


def test_the_compact_flow_takes_every_deployment_parameter() -> None:
    import inspect

    from flows.compact_index import compact_index

    accepted = set(inspect.signature(compact_index.fn).parameters)
    for spec in DEPLOYMENTS:
        if spec.flow == "compact-index":
            assert set(spec.parameters) <= accepted


def test_served_deployments_carry_schedule_parameters_and_one_run_at_a_time() -> None:
    from deployments.serve import to_runner_deployment

    for spec in DEPLOYMENTS:
        deployment = to_runner_deployment(spec)
        assert (deployment.flow_name, deployment.name) == (spec.flow, spec.name)
        assert deployment.entrypoint == ENTRYPOINTS[spec.flow]
        assert deployment.parameters == spec.parameters
        assert [s.schedule.cron for s in deployment.schedules] == [spec.cron]
        assert deployment.concurrency_limit == 1
