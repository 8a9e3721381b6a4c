"""application.searcher over a store with an approximate index (sharding.ann): the service
searches through it, with and without a brand filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from application.catalog.local import LocalCatalog
from application.searcher import load_commit
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore
from sharding.ann import AnnConfig, update_ann
from sharding.codec import ProductId
from sharding.loader import MappedVectors
from sharding.local_store import LocalStore

DIM, N, KIND = 32, 3000, "color"


def _store(
    tmp_path: Path, local: bool = False
) -> tuple[MemoryStore | LocalStore, LocalCatalog, np.ndarray]:
    centres = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    rng = np.random.default_rng(1)
    x = centres[rng.integers(0, 40, N)] + 0.35 * rng.standard_normal((N, DIM)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store: MemoryStore | LocalStore = LocalStore(tmp_path / "store") if local else MemoryStore()
    config = BuildConfig(embedder="test", model="m", dims={KIND: DIM}, shard_max_vectors=500)
    writer = IndexWriter.open(store, config, run_id="run")
    brands = [f"b{i % 3}" for i in range(1, N + 1)]
    for s in range(0, N, 250):
        ids = list[ProductId](range(s + 1, s + 251))
        writer.add_batch(EmbeddedBatch(ids, list(brands[s : s + 250]), {KIND: x[s : s + 250]}))
        writer.commit()
    writer.finish()
    update_ann(store, KIND, AnnConfig(min_vectors=1000, first_nprobe=2, max_nlist=32), run_id="a")
    catalog = tmp_path / "catalog.csv"
    rows = "".join(f"{i},https://img.example/{i}.jpg,{brands[i - 1]}\n" for i in range(1, N + 1))
    catalog.write_text("id,image_url,brand\n" + rows)
    return store, LocalCatalog(catalog), x


def test_searches_go_through_the_approximate_index(tmp_path: Path) -> None:
    store, catalog, _ = _store(tmp_path)
    commit = load_commit(store, catalog=catalog)
    assert set(commit.approximate) == {KIND}
    index, ann = commit.indexes[KIND], commit.approximate[KIND]
    found, truth = 0, 0
    for pid in range(1, N + 1, 97):
        query = commit.stored_vector(KIND, pid)
        approx = [r.id for r in commit.search(KIND, query, 10)]
        exact = [h.id for h in index.search(query.reshape(1, -1), 10)[0]]
        assert approx[0] == pid and len(approx) == 10
        _, rows = ann.search(index.vectors, query.reshape(1, -1), 10)
        assert approx == [index.ids[r] for r in rows[0]]  # the answer is the IVF search's
        found += len(set(approx) & set(exact))
        truth += 10
    assert found / truth >= 0.9


def test_brand_filter_through_the_approximate_index(tmp_path: Path) -> None:
    store, catalog, _ = _store(tmp_path)
    commit = load_commit(store, catalog=catalog)
    results = commit.search(KIND, commit.stored_vector(KIND, 5), 50, brand="b2")
    assert len(results) == 50 and {r.brand for r in results} == {"b2"}
    assert results[0].id == 5  # 5 % 3 == 2: the product itself, first
    assert commit.search(KIND, commit.stored_vector(KIND, 5), 10, brand="nobody") == []
    assert results[0].image_url == "https://img.example/5.jpg"


def test_a_local_store_is_served_from_disk_with_the_same_answers(tmp_path: Path) -> None:
    """The kind with an approximate index is mapped (its vectors left on disk); every search
    (approximate, brand-filtered, exact) answers as the fully loaded commit does."""
    store, catalog, _ = _store(tmp_path, local=True)
    commit = load_commit(store, catalog=catalog)
    loaded = load_commit(store, catalog=catalog, mapped=False)
    assert isinstance(commit.indexes[KIND].vectors, MappedVectors)
    assert not isinstance(loaded.indexes[KIND].vectors, MappedVectors)
    assert commit.live_vectors() == loaded.live_vectors() == {KIND: N}
    for pid in (1, 700, 2999):
        query = commit.stored_vector(KIND, pid)
        np.testing.assert_array_equal(query, loaded.stored_vector(KIND, pid))
        for args in ({}, {"brand": "b1"}, {"exact": True}, {"exact": True, "brand": "b0"}):
            got = commit.search(KIND, query, 10, **args)  # type: ignore[arg-type]
            want = loaded.search(KIND, query, 10, **args)  # type: ignore[arg-type]
            assert [r.id for r in got] == [r.id for r in want], args
            np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-5)
