"""What a Prefect user meets: typed and described run-form parameters, artifacts keyed by store
and kind, an alignment check of the kinds the store holds, a waiting build that says why."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema

from faiss_builder.demo import make_demo_catalog
from flows.alignment_check import alignment_check
from flows.build_index import build_index
from sharding.errors import LeaseHeld
from sharding.lease import StoreLease
from sharding.local_store import LocalStore
from tasks.artifacts import artifact_key

FLOWS = [build_index, alignment_check]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_demo_catalog(tmp_path_factory.mktemp("catalog"), 10)
    return path


def _types(prop: dict[str, Any]) -> set[str]:
    if "type" in prop:
        return {prop["type"]}
    found: set[str] = set()
    for variant in prop.get("anyOf", []) + prop.get("allOf", []):
        found |= _types(variant) if "$ref" not in variant else {"ref"}
    return found


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_run_form_parameter_has_a_type_and_a_description(flow: Any) -> None:
    properties = parameter_schema(flow).model_dump()["properties"]
    assert properties
    for name, prop in properties.items():
        assert _types(prop) - {"null"}, f"{flow.name}.{name} has no type: {prop}"
        assert prop.get("description"), f"{flow.name}.{name} has no description"


def test_artifact_keys_are_prefect_keys_of_one_store_and_kind() -> None:
    a = artifact_key("build-summary", "local folder /data/Store_A", ["color"])
    assert re.fullmatch(r"[a-z0-9-]+", a) and "color" in a
    assert a == artifact_key("build-summary", "local folder /data/Store_A", ["color"])
    assert a != artifact_key("build-summary", "local folder /data/Store_A", ["structure"])
    assert a != artifact_key("build-summary", "local folder /data/store-a", ["color"])
    assert a != artifact_key("build-summary", "supabase bucket faiss-indexes/faiss/", ["color"])


def test_a_build_publishes_artifacts_under_its_store_and_kind(
    prefect_api: object, catalog: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    store = tmp_path / "store"
    summary = build_index(
        kinds=["color"], embedder="histogram", store=str(store), catalog=str(catalog)
    )
    key = artifact_key("build-summary", summary["store"], ["color"])
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert [artifact.key for artifact in found] == [key]


def test_the_alignment_check_skips_kinds_never_built(
    prefect_api: object, catalog: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    build_index(kinds=["color"], embedder="histogram", store=str(store), catalog=str(catalog))
    # What the all-kinds deployment would ask for by name: only color exists, so color is checked.
    result = alignment_check(
        kinds=["color", "structure", "combined"], sample=2, store=str(store), catalog=str(catalog)
    )
    assert list(result["store"]["kinds"]) == ["color"]
    assert result["sample"]["passed"] == 2
    # With no kinds (the deployment's parameters): the kinds the store holds.
    assert list(alignment_check(sample=0, store=str(store))["store"]["kinds"]) == ["color"]


def test_the_alignment_check_fails_when_the_store_holds_nothing(
    prefect_api: object, tmp_path: Path
) -> None:
    store = tmp_path / "empty"
    with pytest.raises(Exception, match=r"progress\.json|holds no index"):
        alignment_check(sample=0, store=str(store))


def test_a_build_waiting_for_the_lease_logs_for_whom(
    prefect_api: object, catalog: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    store = tmp_path / "store"
    lease = StoreLease.acquire(LocalStore(store), "nightly-color", ttl_s=60)
    try:
        state = build_index(
            kinds=["color"],
            embedder="histogram",
            store=str(store),
            catalog=str(catalog),
            lease_wait_s=1.0,
            return_state=True,
        )
    finally:
        lease.release()
    with pytest.raises(LeaseHeld):
        state.result()
    run_id = state.state_details.flow_run_id
    wanted = ("held by run nightly-color", "waiting up to 1 s")
    messages: list[str] = []
    deadline = time.monotonic() + 15  # run logs reach the API in batches
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
        messages = [log.message for log in logs]
        if any(all(part in message for part in wanted) for message in messages):
            return
        time.sleep(0.5)
    pytest.fail(f"no log says who holds the lease: {messages}")
