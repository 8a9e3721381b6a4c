"""ModalEmbedClient: refuses at once without credentials; wire format round-trips; lost calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import modal.exception
import numpy as np
import pytest

from modal_workers.reasons import REASONS
from modal_workers.remote import ModalEmbedClient, WorkerLostStreak, wire_arguments
from modal_workers.types import EmbedOutput, FailedProduct, FetchLimits, ImageRef
from tests.support.fake_modal import FakeDeployment


def run_client_without_credentials(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    empty_config = tmp_path / "modal.toml"
    empty_config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env |= {"MODAL_CONFIG_PATH": str(empty_config), "HOME": str(tmp_path)}
    code = (
        "from modal_workers.remote import ModalEmbedClient, ModalNotConfigured\n"
        "try:\n    ModalEmbedClient('clip')\nexcept ModalNotConfigured as exc:\n    print(exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )


def test_no_credentials_fails_at_once_naming_the_fix(tmp_path: Path) -> None:
    started = time.monotonic()
    message = run_client_without_credentials(tmp_path).stdout
    assert "modal token new" in message
    assert "MODAL_TOKEN_ID" in message and "modal deploy modal_workers/app.py" in message
    assert time.monotonic() - started < 15


def test_credentials_from_env_construct_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    client = ModalEmbedClient("histogram", None)
    assert (client.app_name, client.cls_name, client.model) == (
        "modal-faiss-builder",
        "Embedder",
        "",
    )


def test_wire_round_trip() -> None:
    refs = [ImageRef(7, "https://example.com/a.jpg"), ImageRef("x", "https://example.com/b.jpg")]
    assert wire_arguments(refs, ("color",), FetchLimits())[0] == [
        (7, refs[0].url),
        ("x", refs[1].url),
    ]
    output = EmbedOutput(
        ids=[7],
        vectors={"color": np.ones((1, 4), np.float32)},
        failures=[FailedProduct("x", "too_large", "m")],
    )
    back = EmbedOutput.from_wire(output.to_wire())
    assert back.ids == [7] and back.failures == output.failures
    np.testing.assert_array_equal(back.vectors["color"], output.vectors["color"])


# The client's handling of calls that fail after Modal's retries, against FakeDeployment (the
# deployed class's call shape, in-process).

REFS = [ImageRef(i, f"https://example.com/{i}.jpg") for i in range(5)]


def _client(deployment: FakeDeployment, **options: int) -> ModalEmbedClient:
    client = ModalEmbedClient("clip", remote=deployment, **options)
    client.describe()
    return client


def test_a_call_lost_once_is_dispatched_again_and_answered_once() -> None:
    timeout = modal.exception.FunctionTimeoutError("Function timed out")
    deployment = FakeDeployment(fail=lambda n, refs: timeout if n == 0 else None)
    output = _client(deployment).embed(REFS, ["color", "combined"], FetchLimits())
    assert deployment.calls == 2 and deployment.failed_calls == [0]
    assert output.ids == [0, 1, 2, 3, 4] and output.failures == []
    assert output.vectors["combined"].shape == (5, 16)


def test_a_call_lost_on_every_dispatch_comes_back_as_worker_lost_failures() -> None:
    crash = modal.exception.InternalFailure("container exited with code 137")
    deployment = FakeDeployment(fail=lambda n, refs: crash)
    output = _client(deployment, redispatches=2).embed(REFS, ["color"], FetchLimits())
    assert deployment.calls == 3
    assert output.ids == [] and output.vectors["color"].shape == (0, 8)
    assert [f.id for f in output.failures] == [0, 1, 2, 3, 4]
    assert {f.reason for f in output.failures} == {"worker_lost"}
    assert "InternalFailure: container exited with code 137 (after 3 dispatches)" in (
        output.failures[0].message
    )
    assert "worker_lost" in REASONS


def test_a_deployment_that_never_answers_stops_the_build_after_a_streak() -> None:
    crash = modal.exception.InternalFailure("boom")
    deployment = FakeDeployment(fail=lambda n, refs: crash if n < 10 else None)
    client = _client(deployment, redispatches=0, lost_streak_limit=3)
    for _ in range(2):
        assert len(client.embed(REFS, ["color"], FetchLimits()).failures) == 5
    with pytest.raises(WorkerLostStreak, match="3 batches in a row failed on Modal"):
        client.embed(REFS, ["color"], FetchLimits())


def test_a_success_resets_the_lost_streak() -> None:
    crash = modal.exception.InternalFailure("boom")
    deployment = FakeDeployment(fail=lambda n, refs: crash if n % 2 == 0 else None)
    client = _client(deployment, redispatches=0, lost_streak_limit=2)
    answers = [client.embed(REFS, ["color"], FetchLimits()) for _ in range(6)]
    assert [len(a.ids) for a in answers] == [0, 5, 0, 5, 0, 5]


def test_configuration_errors_are_raised_not_redispatched() -> None:
    missing = modal.exception.NotFoundError("App 'modal-faiss-builder' not found")
    deployment = FakeDeployment(fail=lambda n, refs: missing)
    with pytest.raises(modal.exception.NotFoundError):
        _client(deployment).embed(REFS, ["color"], FetchLimits())
    assert deployment.calls == 1


def test_calls_in_flight_fill_the_deployed_fleet() -> None:
    client = _client(FakeDeployment(containers=10, inputs_per_container=2))
    assert client.calls_in_flight() == 20
    assert "deployment" not in client.describe()  # the store's config sees the engine only
    older = ModalEmbedClient("clip", remote=FakeDeployment())
    older.deployment = None  # a deployment from before it described itself
    assert older.calls_in_flight() == 2


def test_the_client_is_called_from_many_threads_at_once() -> None:
    deployment = FakeDeployment(containers=4, batch_seconds=lambda n, refs: 0.05)
    client = _client(deployment)
    batches = [
        [ImageRef(b * 10 + i, "https://example.com/x.jpg") for i in range(3)] for b in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda refs: client.embed(refs, ["color"], FetchLimits()), batches))
    assert [o.ids for o in outputs] == [[r.id for r in refs] for refs in batches]
    assert deployment.most_running == 4
