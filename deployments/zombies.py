"""Mark flow runs whose heartbeats stopped Crashed: `python -m deployments.zombies [SECONDS]`.

`python -m deployments.zombies --crash FLOW_RUN_ID` sets one such run Crashed at once, by hand.

A SIGKILLed worker and flow process tell Prefect nothing; the run stays Running and holds its
deployment's concurrency slot. Deployment runs send a heartbeat every HEARTBEAT_S (prefect.yaml
sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY for the work pool; serve sets it for its runs). This
creates, once per server, the automation Prefect documents for self-hosted servers
("detect zombie flows"): a run that sent a heartbeat and then nothing for ZOMBIE_AFTER_S, no
heartbeat and no final state, is set Crashed, which releases its concurrency slot.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any, cast

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from deployments.specs import ZOMBIE_AFTER_S

AUTOMATION_NAME = "faiss-builder: crash zombie flow runs"


def zombie_automation(after_s: float = ZOMBIE_AFTER_S) -> Automation:
    """The automation, not yet created."""
    return Automation(
        name=AUTOMATION_NAME,
        description=f"A flow run silent for {after_s:g} s after a heartbeat is set Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                force=False,
                message=f"No heartbeat for {after_s:g} s: the flow process or its machine died.",
            )
        ],
    )


def ensure_zombie_automation(after_s: float = ZOMBIE_AFTER_S) -> Automation:
    """Create the automation unless one of its name exists; the server's automation."""
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:
        existing = None
    if existing is not None:
        return cast(Automation, existing)
    return cast(Automation, zombie_automation(after_s).create())  # sync: the value


def crash_run(flow_run_id: str) -> str:
    """Set a run whose process is gone Crashed (frees its concurrency slot); its new state."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        result: Any = client.set_flow_run_state(
            flow_run_id, Crashed(message="Set Crashed by hand: its process is gone."), force=True
        )
    return str(result.state.type.value if result.state else result.status)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--crash"] and len(argv) == 2:
        print(f"flow run {argv[1]}: {crash_run(argv[1])}")
        return 0
    after_s = float(argv[0]) if argv else ZOMBIE_AFTER_S
    automation = ensure_zombie_automation(after_s)
    print(f"automation {automation.name!r} ({automation.id}) is in place")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
