"""build-index against a simulated Modal fleet: enough calls in flight across chunk boundaries,
at most three chunks held, lost calls accounted for.

The real flow and the real ModalEmbedClient drive FakeDeployment (the deployed class's call
shape, in-process), registered as a backend with application.backends.register_backend.
"""

from __future__ import annotations

import csv
import json
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modal.exception
import pytest
from typer.testing import CliRunner

from application.backends import BACKENDS, register_backend
from faiss_builder.cli import app as cli
from faiss_builder.demo import make_demo_catalog
from faiss_builder.errors import EXIT_CONFIG
from flows.build_index import build_index
from modal_workers.remote import ModalEmbedClient
from sharding.loader import load_index
from sharding.local_store import LocalStore
from sharding.state import read_progress
from tests.support.fake_modal import FakeDeployment

KINDS = ["color", "structure", "combined"]
PRODUCTS = 100
BATCH = 5


@pytest.fixture(scope="module")
def url_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet-catalog") / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image_url", "brand"])
        writer.writerows(
            (i, f"https://images.invalid/{i}.jpg", f"b{i % 3}") for i in range(1, PRODUCTS + 1)
        )
    return path


def _register(name: str, deployment: FakeDeployment) -> str:
    register_backend(name, lambda settings, embedder, model: ModalEmbedClient(remote=deployment))
    return name


def _build(store: Path, catalog: Path, backend: str, **params: object) -> dict:
    return build_index(
        kinds=KINDS,  # type: ignore[arg-type]
        batch_size=BATCH,
        backend=backend,  # type: ignore[arg-type]
        embedder="clip",
        store=str(store),
        catalog=str(catalog),
        **params,  # type: ignore[arg-type]
    )


def _ids(store: Path) -> dict[str, list]:
    return {kind: list(load_index(LocalStore(store), kind).ids) for kind in KINDS}


def test_the_flow_keeps_the_whole_fleet_busy_and_writes_in_catalog_order(
    prefect_api: object, url_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAISS_BUILDER_MAX_IN_FLIGHT", raising=False)
    rng = random.Random(3)
    seconds = [rng.uniform(0.15, 0.6) for _ in range(PRODUCTS // BATCH)]
    deployment = FakeDeployment(
        containers=3, inputs_per_container=2, batch_seconds=lambda n, refs: seconds[n]
    )
    summary = _build(tmp_path / "store", url_catalog, _register("fake-fleet", deployment))
    # No max_in_flight given: the flow keeps containers x inputs = 6 calls running.
    assert deployment.most_running == 6
    assert deployment.finished != sorted(deployment.finished)  # calls ended out of order ...
    everything = list(range(1, PRODUCTS + 1))
    assert _ids(tmp_path / "store") == {kind: everything for kind in KINDS}  # ... written in order
    assert summary["products"] == PRODUCTS and summary["failed"] == 0


def test_the_next_chunk_runs_while_the_previous_is_written_and_three_at_most_are_held(
    prefect_api: object, url_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAISS_BUILDER_MAX_IN_FLIGHT", raising=False)
    store, lock = tmp_path / "store", threading.Lock()
    started: list[tuple[Any, Any, Any]] = []  # (first id, last id, committed cursor) per call

    def seconds(number: int, refs: Sequence[Any]) -> float:
        progress = read_progress(LocalStore(store))
        cursor = (progress.cursor("color") if progress is not None else None) or 0
        with lock:
            started.append((refs[0][0], refs[-1][0], cursor))
        return 0.05

    commit = 20  # one wave: 4 calls in flight x 5 products
    deployment = FakeDeployment(containers=2, inputs_per_container=2, batch_seconds=seconds)
    summary = _build(store, url_catalog, _register("fake-chunks", deployment), commit_size=commit)
    assert (summary["commits"], summary["batches"]) == (PRODUCTS // commit, PRODUCTS // BATCH)
    assert deployment.most_running == 4
    # Memory: products sent but not committed never pass three chunks.
    assert max(last - cursor for _, last, cursor in started) <= 3 * commit
    # The fleet is kept busy: calls of a chunk ran while the chunk before it was not committed.
    assert any(first > cursor + commit for first, _, cursor in started)
    assert _ids(store) == {kind: list(range(1, PRODUCTS + 1)) for kind in KINDS}


def test_an_explicit_max_in_flight_bounds_the_calls(
    prefect_api: object, url_catalog: Path, tmp_path: Path
) -> None:
    deployment = FakeDeployment(containers=10, batch_seconds=lambda n, refs: 0.1)
    _build(tmp_path / "store", url_catalog, _register("fake-fleet-3", deployment), max_in_flight=3)
    assert deployment.most_running == 3


def test_lost_calls_are_redispatched_or_recorded_never_dropped_never_twice(
    prefect_api: object, url_catalog: Path, tmp_path: Path
) -> None:
    lock, seen = threading.Lock(), set()
    crash = modal.exception.InternalFailure("container exited with code 137")

    def fail(number: int, refs: list) -> BaseException | None:
        first = refs[0][0]
        if first == 11:  # lost on every dispatch: recorded as worker_lost
            return crash
        with lock:  # lost once: the second dispatch answers
            if first in (26, 51) and first not in seen:
                seen.add(first)
                return modal.exception.FunctionTimeoutError("Function timed out")
        return None

    deployment = FakeDeployment(
        containers=4, batch_seconds=lambda n, refs: 0.05 * (n % 3), fail=fail
    )
    store = tmp_path / "store"
    summary = _build(store, url_catalog, _register("fake-lossy", deployment))
    lost = [11, 12, 13, 14, 15]
    assert summary["products"] == PRODUCTS and summary["failed"] == len(lost)
    assert [f["id"] for f in summary["failures"]] == lost
    assert {f["reason"] for f in summary["failures"]} == {"worker_lost"}
    indexed = [i for i in range(1, PRODUCTS + 1) if i not in lost]
    assert _ids(store) == {kind: indexed for kind in KINDS}  # 26-30 and 51-55 once each

    deployment = FakeDeployment(containers=4)  # the fleet is healthy again
    retried = _build(store, url_catalog, _register("fake-healthy", deployment), retry_failed=True)
    assert retried["failed"] == 0
    assert _ids(store) == {kind: indexed + lost for kind in KINDS}  # retries append at the end
    assert sorted(_ids(store)["color"]) == list(range(1, PRODUCTS + 1))


def test_modal_with_local_image_files_is_refused_before_any_work(
    prefect_api: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = FakeDeployment()
    monkeypatch.setitem(
        BACKENDS, "modal", lambda settings, embedder, model: ModalEmbedClient(remote=deployment)
    )
    catalog, _ = make_demo_catalog(tmp_path / "catalog", 6)
    store = tmp_path / "store"
    result = CliRunner().invoke(
        cli, ["build", "--store", str(store), "--catalog", str(catalog), "--backend", "modal"]
    )
    assert result.exit_code == EXIT_CONFIG, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "local image files" in lines[0] and "--backend local" in lines[0]
    assert "upload the images" in lines[0]
    assert deployment.calls == 0
    assert not store.exists() or not any(store.iterdir())


def test_a_catalog_of_urls_goes_through_with_modal(
    prefect_api: object, url_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = FakeDeployment()
    monkeypatch.setitem(
        BACKENDS, "modal", lambda settings, embedder, model: ModalEmbedClient(remote=deployment)
    )
    result = CliRunner().invoke(
        cli,
        ["build", "--store", str(tmp_path / "s"), "--catalog", str(url_catalog),
         "--backend", "modal", "--max-images", "10", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["products"] == 10 and deployment.calls == 1
