"""The build's update-ann step (BuildSession.update_ann): trains the approximate index past the
minimum, adds list objects for newly sealed shards on the next run, and reports a recall that
misses the minimum as a failed check (not served)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from application.session import BuildSession, open_session
from application.settings import load_settings
from modal_workers.types import EmbedOutput
from sharding import LocalStore, read_progress
from tests.sharding.test_ann import DIM, clustered


class ClusteredBackend:
    """CLIP-like vectors (clustered unit vectors) for each product id, no images fetched."""

    def describe(self) -> dict[str, Any]:
        return {"embedder": "histogram", "model": "histogram-v1", "dims": {"color": DIM}}

    def embed(self, refs: list[Any], kinds: list[str], limits: Any) -> EmbedOutput:
        ids = [ref.id for ref in refs]
        vectors = np.concatenate([clustered(1, int(i)) for i in ids]) if ids else np.zeros((0, DIM))
        return EmbedOutput(ids=ids, vectors={"color": vectors.astype(np.float32)}, failures=[])


def _catalog(path: Path, n: int) -> Path:
    rows = "".join(f"{i},https://img.example/{i}.jpg,b{i % 3}\n" for i in range(1, n + 1))
    path.write_text("id,image_url,brand\n" + rows)
    return path


def _run(
    tmp_path: Path, n: int, minimum: float | None = None, **overrides: object
) -> tuple[dict[str, Any], BuildSession]:
    settings = load_settings(
        store=str(tmp_path / "store"),
        catalog=str(_catalog(tmp_path / "catalog.csv", n)),
        kinds=("color",),
        embedder="histogram",
        batch_size=500,
        shard_max_vectors=500,
        ann_min_vectors=1000,
        **overrides,
    )
    session = open_session(settings, "run", backend=ClusteredBackend())
    if minimum is not None:
        session.ann_min_recall = minimum
    try:
        after = session.resume_after()
        while products := session.fetch_page(after, 500):
            output = session.embed(products)
            session.append(products, output)
            session.commit(products, output)
            after = products[-1].id
        summary = session.finish()
        return session.update_ann(summary), session
    finally:
        session.close()


def test_the_build_trains_then_extends_the_approximate_index(tmp_path: Path) -> None:
    summary, _ = _run(tmp_path, 900)
    assert summary["ann"]["kinds"]["color"]["action"] == "none"  # 900 <= 1000
    summary, _ = _run(tmp_path, 2600)
    color = summary["ann"]["kinds"]["color"]
    assert color["action"] == "trained" and color["shards"] == 5 and color["serving"]
    assert color["recall_at_10"] >= 0.95 and summary["ann"]["failed"] == []
    from tasks.artifacts import render_summary  # the Prefect summary artifact

    assert f"| color | IVFFlat g1 (trained) | {color['nlist']} |" in render_summary(summary)
    summary, _ = _run(tmp_path, 3100)
    color = summary["ann"]["kinds"]["color"]
    assert color["action"] == "added" and color["objects_written"] == 1 and color["shards"] == 6
    progress = read_progress(LocalStore(tmp_path / "store"))
    assert progress is not None and progress.ann["color"].vectors == 3000


def test_a_recall_below_the_minimum_is_a_failed_check_and_not_served(tmp_path: Path) -> None:
    # Settings stop at 1.0, which an exhaustive IVFFlat reaches; the session takes any minimum.
    summary, _ = _run(tmp_path, 2600, ann_min_recall=1.0, minimum=1.01)
    color = summary["ann"]["kinds"]["color"]
    assert not color["serving"] and color["nprobe"] == color["nlist"]
    assert summary["ann"]["failed"] == [
        f"ann color: recall@10 {color['recall_at_10']} < 1.01 even at nprobe {color['nlist']} of "
        f"{color['nlist']}: not served (search stays exact)"
    ]
    assert summary["warnings"] == summary["ann"]["failed"]
    from tasks.artifacts import render_summary

    assert f"Warning: {summary['warnings'][0]}" in render_summary(summary)


def test_search_uses_the_approximate_index_unless_exact_and_status_shows_it(
    tmp_path: Path,
) -> None:
    import json

    from typer.testing import CliRunner

    from faiss_builder.cli import app as cli

    _run(tmp_path, 2600)
    store = str(tmp_path / "store")
    catalog = str(tmp_path / "catalog.csv")
    runner = CliRunner()
    args = ["search", "--store", store, "--catalog", catalog, "--id", "77", "-k", "10", "--json"]
    approx = json.loads(runner.invoke(cli, args).stdout)
    exact = json.loads(runner.invoke(cli, [*args, "--exact"]).stdout)
    assert approx["method"] == "ivf" and exact["method"] == "exact"
    assert approx["hits"][0]["id"] == exact["hits"][0]["id"] == 77
    assert len(approx["hits"]) == 10 and approx["hits"][0]["brand"] == "b2"
    shared = {h["id"] for h in approx["hits"]} & {h["id"] for h in exact["hits"]}
    assert len(shared) >= 8  # one query; the committed recall@10 is over 200
    result = runner.invoke(cli, ["status", "--store", store, "--json"])
    ann = json.loads(result.stdout)["ann"]["color"]
    assert {k: ann[k] for k in ("type", "nlist", "vectors", "serving")} == {
        "type": "IVFFlat",
        "nlist": 62,  # 2500 // 40 training vectors per list
        "vectors": 2500,
        "serving": True,
    }
    assert ann["recall_at_10"] >= 0.95 and 1 <= ann["nprobe"] <= 62
    text = runner.invoke(cli, ["status", "--store", store]).stdout
    assert "approximate index IVFFlat g1: nlist 62" in text and "serving" in text


def test_the_library_and_the_http_service_take_exact(tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from application.catalog.local import LocalCatalog
    from application.searcher import load_commit
    from service.app import create_app
    from service.settings import ServiceSettings

    _run(tmp_path, 2600)
    store = LocalStore(tmp_path / "store")
    commit = load_commit(store, catalog=LocalCatalog(tmp_path / "catalog.csv"))
    assert set(commit.approximate) == {"color"}
    index = commit.indexes["color"]

    def flat(pid: int) -> list[Any]:
        return [h.id for h in index.search(commit.stored_vector("color", pid)[None], 10)[0]]

    for pid in range(1, 2601, 250):
        query = commit.stored_vector("color", pid)
        assert [r.id for r in commit.search("color", query, 10, exact=True)] == flat(pid)
    settings = load_settings(store=str(tmp_path / "store"), catalog=str(tmp_path / "catalog.csv"))
    with TestClient(create_app(settings, ServiceSettings())) as client:  # type: ignore[call-arg]
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health").json()["approximate"] == ["color"]
        body = {"id": 77, "kind": "color", "k": 10}
        exact = client.post("/search", json={**body, "exact": True})
        approx = client.post("/search", json=body)
        assert exact.status_code == approx.status_code == 200, exact.text
        assert [r["id"] for r in exact.json()["results"]] == flat(77)
        assert approx.json()["results"][0]["id"] == 77
