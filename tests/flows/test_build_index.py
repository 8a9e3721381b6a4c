"""build-index end to end under Prefect: local catalog + local store + tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from faiss_builder.demo import make_demo_catalog
from flows.alignment_check import AlignmentError, alignment_check
from flows.build_index import build_index
from sharding.errors import InjectedCrash, LeaseHeld
from sharding.lease import StoreLease
from sharding.loader import load_index
from sharding.local_store import LocalStore

KINDS = ["color", "structure", "combined"]
PRODUCTS = 36


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog, _ = make_demo_catalog(tmp_path_factory.mktemp("catalog"), PRODUCTS)
    return catalog


def _build(store: Path, catalog: Path, model: Path, **params: object) -> dict:
    return build_index(
        kinds=KINDS,
        batch_size=8,
        embedder="clip",
        model=str(model),
        store=str(store),
        catalog=str(catalog),
        **params,
    )


def _contents(store: Path) -> dict[str, tuple[list, np.ndarray]]:
    out = {}
    for kind in KINDS:
        index = load_index(LocalStore(store), kind)
        vectors = np.vstack([index.vector(product_id) for product_id in index.ids])
        out[kind] = (list(index.ids), vectors)
    return out


@pytest.fixture(scope="module")
def clean_store(
    prefect_api: object,
    catalog_file: Path,
    tiny_clip_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("clean-store")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("FAISS_BUILDER_SHARD_MAX_VECTORS", "10")
    try:
        summary = _build(store, catalog_file, tiny_clip_dir)
    finally:
        monkeypatch.undo()
    return store, summary


def test_build_indexes_every_product_for_every_kind(clean_store: tuple[Path, dict]) -> None:
    store, summary = clean_store
    assert summary["products"] == PRODUCTS and summary["failed"] == 0
    assert summary["total_vectors"] == {kind: PRODUCTS for kind in KINDS}
    assert summary["embedder"] == "clip"
    progress = json.loads((store / "progress.json").read_text())
    assert progress["embedder"] == "clip"
    for kind in KINDS:
        first = faiss.read_index(str(store / f"clip_{kind}_shard_00001.index"))
        ids = json.loads((store / f"id_map_{kind}_shard_00001.json").read_text())
        assert first.ntotal == len(ids) == 10
        assert json.loads((store / f"id_map_{kind}.json").read_text()) == list(
            range(1, PRODUCTS + 1)
        )


def test_alignment_check_flow_passes_on_a_clean_build(
    clean_store: tuple[Path, dict], catalog_file: Path
) -> None:
    store, _ = clean_store
    result = alignment_check(sample=6, seed=1, store=str(store), catalog=str(catalog_file))
    assert result["sample"]["checked"] == 6 * len(KINDS)
    assert result["sample"]["passed"] == 6 * len(KINDS)


def test_a_second_run_finds_nothing_new(
    clean_store: tuple[Path, dict], catalog_file: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = _build(store, catalog_file, tiny_clip_dir, max_images=20)
    second = _build(store, catalog_file, tiny_clip_dir)
    third = _build(store, catalog_file, tiny_clip_dir)
    assert (first["products"], second["products"], third["products"]) == (20, PRODUCTS - 20, 0)
    assert _contents(store)["color"][0] == list(range(1, PRODUCTS + 1))


def test_crash_mid_run_then_resume_equals_the_uninterrupted_build(
    clean_store: tuple[Path, dict],
    catalog_file: Path,
    tiny_clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "store"
    monkeypatch.setenv("FAISS_BUILDER_SHARD_MAX_VECTORS", "10")
    monkeypatch.setenv("FAISS_BUILDER_CRASH_AFTER_WRITES", "17")
    with pytest.raises(InjectedCrash):
        _build(store, catalog_file, tiny_clip_dir)
    monkeypatch.delenv("FAISS_BUILDER_CRASH_AFTER_WRITES")
    resumed = _build(store, catalog_file, tiny_clip_dir)
    assert 0 < resumed["products"] < PRODUCTS
    expected, got = _contents(clean_store[0]), _contents(store)
    for kind in KINDS:
        assert got[kind][0] == expected[kind][0]
        np.testing.assert_allclose(got[kind][1], expected[kind][1], atol=1e-5)


def test_a_second_writer_is_refused_while_the_lease_is_held(
    catalog_file: Path, tiny_clip_dir: Path, tmp_path: Path, prefect_api: object
) -> None:
    store = tmp_path / "store"
    lease = StoreLease.acquire(LocalStore(store), "someone-else", ttl_s=60)
    try:
        with pytest.raises(LeaseHeld, match="someone-else"):
            _build(store, catalog_file, tiny_clip_dir)
    finally:
        lease.release()
    assert not (store / "progress.json").exists()


def test_alignment_check_flow_fails_on_a_tampered_id_map(
    catalog_file: Path, tiny_clip_dir: Path, tmp_path: Path, prefect_api: object
) -> None:
    store = tmp_path / "store"
    _build(store, catalog_file, tiny_clip_dir, max_images=12)
    id_map = store / "id_map_color_shard_00001.json"
    ids = json.loads(id_map.read_text())
    id_map.write_text(json.dumps(ids[:-1]))
    with pytest.raises(AlignmentError, match="color"):
        alignment_check(sample=2, store=str(store), catalog=str(catalog_file))
