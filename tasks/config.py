"""A deployment run refuses at once when the settings that locate its data were never set."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run

from application.errors import ConfigError
from application.settings import Settings

#: Settings whose built-in defaults (`faiss-store`, `catalog.csv`, relative to wherever the flow
#: process happens to run) cannot serve a deployment: set them once for the worker or serve.
REQUIRED_IN_DEPLOYMENTS: dict[str, str] = {
    "store": "FAISS_BUILDER_STORE",
    "catalog": "FAISS_BUILDER_CATALOG",
}


def missing_deployment_settings(settings: Settings) -> list[str]:
    """The variables of REQUIRED_IN_DEPLOYMENTS that neither env, .env nor a parameter set."""
    given = settings.store.model_fields_set | settings.catalog.model_fields_set
    return [variable for name, variable in REQUIRED_IN_DEPLOYMENTS.items() if name not in given]


@task(name="check-deployment-settings", cache_policy=NONE, persist_result=False)
def check_deployment_settings(settings: Settings) -> None:
    """In a deployment run, ConfigError (one line, before any connection or write) when the
    store or catalog were left at their defaults; outside deployments the defaults stand."""
    if deployment.get_id() is None:
        return
    missing = missing_deployment_settings(settings)
    if missing:
        name = f"{flow_run.get_flow_name()}/{deployment.get_name()}"
        raise ConfigError(
            f"{name}: set {' and '.join(missing)} in .env in the folder the worker (or "
            "`python -m deployments.serve`) runs from, or as the parameters store/catalog; "
            "see README, Prefect"
        )
