"""The deployments and their schedules, in one table shared by `serve` and checked against prefect.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TIMEZONE = "UTC"
WORK_POOL = "faiss-builder"
#: A second scheduled build waits this long for the store lease instead of failing at once.
SCHEDULED_LEASE_WAIT_S = 1800.0
#: Seconds between flow-run heartbeats of deployment runs (Prefect's minimum is 30).
HEARTBEAT_S = 30
#: A run silent for this long is a zombie: deployments/zombies.py marks it Crashed.
ZOMBIE_AFTER_S = 3 * HEARTBEAT_S


@dataclass(frozen=True)
class DeploymentSpec:
    flow: str  # flow name: "build-index", "alignment-check" or "compact-index"
    name: str  # deployment name; run it as "<flow>/<name>"
    cron: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


# Builds are staggered so they rarely meet; when they do, the store lease makes the later one wait.
DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "build-index",
        "color",
        "0 2 * * *",
        {"kinds": ["color"], "lease_wait_s": SCHEDULED_LEASE_WAIT_S},
        "Nightly: embed new catalog products into the color index.",
    ),
    DeploymentSpec(
        "build-index",
        "structure",
        "30 2 * * *",
        {"kinds": ["structure"], "lease_wait_s": SCHEDULED_LEASE_WAIT_S},
        "Nightly: embed new catalog products into the structure index.",
    ),
    DeploymentSpec(
        "build-index",
        "combined",
        "0 3 * * *",
        {"kinds": ["combined"], "lease_wait_s": SCHEDULED_LEASE_WAIT_S},
        "Nightly: embed new catalog products into the combined index.",
    ),
    DeploymentSpec(
        "alignment-check",
        "all-kinds",
        "0 5 * * *",
        {"sample": 32},  # every kind the store holds
        "Nightly: prove every index agrees with its id maps.",
    ),
    # Sunday: find rows deleted from the table (ids only, issue 14), then compact what they and
    # the week's replacements left dead, before the 05:00 check audits the result.
    DeploymentSpec(
        "build-index",
        "reconcile",
        "0 4 * * 0",
        {"reconcile": True, "lease_wait_s": SCHEDULED_LEASE_WAIT_S},
        "Weekly: a build that also finds rows deleted from a Supabase table (ids-only pass).",
    ),
    DeploymentSpec(
        "compact-index",
        "weekly",
        "30 4 * * 0",
        {"lease_wait_s": SCHEDULED_LEASE_WAIT_S},  # every kind the store holds
        "Weekly: rewrite kinds whose dead slots reach FAISS_BUILDER_COMPACT_THRESHOLD.",
    ),
)
