"""Serve every deployment from this process, no work pool or worker needed: `python -m deployments.serve`."""

from __future__ import annotations

from typing import Any, cast

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment

from deployments.specs import DEPLOYMENTS, TIMEZONE, DeploymentSpec
from flows.alignment_check import alignment_check
from flows.build_index import build_index

FLOWS: dict[str, Flow[..., Any]] = {"build-index": build_index, "alignment-check": alignment_check}


def to_runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """One spec as a served deployment: cron schedule, parameters, one run at a time."""
    deployment = FLOWS[spec.flow].to_deployment(
        name=spec.name,
        schedules=[CronSchedule(cron=spec.cron, timezone=TIMEZONE)],
        parameters=spec.parameters,
        description=spec.description,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
    )
    return cast(RunnerDeployment, deployment)  # sync call: async_dispatch returns the value


def main() -> None:
    serve(*(to_runner_deployment(spec) for spec in DEPLOYMENTS))


if __name__ == "__main__":
    main()
