"""Serve every deployment from this process, no work pool or worker needed: `python -m deployments.serve`.

Served and deployed (`prefect deploy`, bound to a work pool) deployments share their names, so
one server holds one or the other. Serving takes a deployment over (its schedules, its work
pool binding), so serve refuses while any of these names is deployed to a work pool. On exit it
pauses only the deployments it still serves: one that `prefect deploy` took over meanwhile keeps
its schedules.
"""

from __future__ import annotations

import os
import sys
from typing import Any, cast

from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound

from deployments.specs import DEPLOYMENTS, HEARTBEAT_S, TIMEZONE, DeploymentSpec
from flows.alignment_check import alignment_check
from flows.build_index import build_index
from flows.compact_index import compact_index

FLOWS: dict[str, Flow[..., Any]] = {
    "build-index": build_index,
    "alignment-check": alignment_check,
    "compact-index": compact_index,
}
EXIT_REFUSED = 2


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


def deployed_to_work_pools() -> dict[str, str]:
    """{"flow/name": work pool} for each of our deployments that `prefect deploy` created."""
    found: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS:
            try:
                deployment = client.read_deployment_by_name(spec.full_name)
            except ObjectNotFound:
                continue
            if deployment.work_pool_name:
                found[spec.full_name] = deployment.work_pool_name
    return found


def pause_still_served() -> list[str]:
    """Pause the deployments no work pool took over while we served them; their names."""
    paused = []
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS:
            try:
                deployment = client.read_deployment_by_name(spec.full_name)
            except ObjectNotFound:
                continue
            if not deployment.work_pool_name:
                client.pause_deployment(deployment.id)
                paused.append(spec.full_name)
    return paused


def main() -> int:
    # Served runs inherit this process's environment: heartbeats for deployments.zombies.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    taken = deployed_to_work_pools()
    if taken:
        listed = ", ".join(f"{name} (work pool {pool})" for name, pool in sorted(taken.items()))
        print(
            f"deployments.serve: refusing: {listed} deployed with `prefect deploy`; serving "
            "would take them over. Run them with a worker (prefect worker start --pool "
            "faiss-builder), or delete them first: prefect deployment delete <flow>/<name>",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    try:
        serve(*(to_runner_deployment(spec) for spec in DEPLOYMENTS), pause_on_shutdown=False)
    finally:
        pause_still_served()
    return 0


if __name__ == "__main__":
    sys.exit(main())
