"""Shard rotation and sizes, the seed-compatible layout, refused resumes, failures, kinds."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from sharding import (
    BuildConfig,
    EmbeddedBatch,
    IndexWriter,
    LocalStore,
    ResumeRefused,
    check_store,
    list_failures,
    read_progress,
)
from sharding.codec import predicted_index_bytes
from sharding.storage import CountingStorage
from tests.sharding.builds import SMALL, Catalog, run_build, unit_vector


def _random_batch(ids: list[int], dims: dict[str, int], seed: int = 0) -> EmbeddedBatch:
    rng = np.random.default_rng(seed)
    vectors = {}
    for kind, dim in dims.items():
        v = rng.standard_normal((len(ids), dim)).astype(np.float32)
        vectors[kind] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return EmbeddedBatch(ids, ["b"] * len(ids), vectors, [], last_id=ids[-1])


@pytest.mark.parametrize("dim", [4, 512, 768])
def test_predicted_size_is_exact(dim: int) -> None:
    index = faiss.IndexFlatIP(dim)
    index.add(np.ones((7, dim), np.float32))
    assert len(faiss.serialize_index(index)) == predicted_index_bytes(dim, 7)


def test_dim_512_under_1_mb_no_shard_exceeds_the_limit(tmp_path: Path) -> None:
    config = BuildConfig("clip", "m", {"color": 512}, shard_max_bytes=1_000_000)
    writer = IndexWriter.open(LocalStore(tmp_path), config, run_id="r")
    for start in range(0, 1200, 300):  # batches larger than a shard's room are split
        writer.add_batch(_random_batch(list(range(start + 1, start + 301)), {"color": 512}, start))
        writer.commit()
    writer.finish()
    shards = sorted(tmp_path.glob("clip_color_shard_*.index"))
    assert len(shards) == 3  # 488 + 488 + 224
    assert all(p.stat().st_size <= 1_000_000 for p in shards)
    assert [faiss.read_index(str(p)).ntotal for p in shards] == [488, 488, 224]


def test_defaults_seal_at_1000_and_objects_read_with_plain_tools(tmp_path: Path) -> None:
    config = BuildConfig("clip", "m", {"structure": 8})
    writer = IndexWriter.open(LocalStore(tmp_path), config, run_id="r")
    for start in range(0, 2500, 700):
        ids = list(range(start + 1, min(start + 701, 2501)))
        writer.add_batch(_random_batch(ids, {"structure": 8}, start))
        writer.commit()
    writer.finish()
    counts = [
        faiss.read_index(str(tmp_path / f"clip_structure_shard_0000{n}.index")).ntotal
        for n in (1, 2, 3)
    ]
    assert counts == [1000, 1000, 500]
    id_maps = [
        json.loads((tmp_path / f"id_map_structure_shard_0000{n}.json").read_text())
        for n in (1, 2, 3)
    ]
    full = json.loads((tmp_path / "id_map_structure.json").read_text())
    assert full == [i for m in id_maps for i in m] == list(range(1, 2501))
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["kinds"]["structure"]["total_vectors"] == 2500
    assert progress["kinds"]["structure"]["shards"][0]["sealed"] is True


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"model": "other-model"}, "model 'hist-v1' (this run: 'other-model')"),
        ({"dims": {"color": 5, "combined": 6}}, "color dimension 4 (this run: 5)"),
        ({"embedder": "clip"}, "embedder 'histogram'"),
        ({"shard_max_vectors": 20}, "shard_max_vectors 10"),
    ],
)
def test_mismatching_resume_is_refused_and_writes_nothing(
    tmp_path: Path, change: dict, needle: str
) -> None:
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=20))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fields = {
        "embedder": SMALL.embedder,
        "model": SMALL.model,
        "dims": SMALL.dims,
        "shard_max_vectors": SMALL.shard_max_vectors,
    } | change
    counting = CountingStorage(store)
    with pytest.raises(ResumeRefused) as refused:
        IndexWriter.open(counting, BuildConfig(**fields), run_id="other")
    assert needle in str(refused.value)
    assert counting.writes == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failures_are_durable_and_listable_across_chunks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store)
    failures = list_failures(store)
    expected = [i for i in Catalog().ids() if i % Catalog().fail_every == 0]
    assert [f.id for f in failures] == expected
    assert all(f.reason == "fetch_error" and f.kinds == ["color", "combined"] for f in failures)
    progress = read_progress(store)
    assert progress is not None and progress.failures.total == len(expected)
    assert len(progress.failures.recent) < 3  # the rest rolled into failed_NNNNN.json


def test_a_run_of_one_kind_keeps_other_kinds_and_a_new_kind_can_join(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=30))
    before = read_progress(store)
    only_color = BuildConfig(SMALL.embedder, SMALL.model, {"color": 4}, shard_max_vectors=10)
    run_build(store, only_color, Catalog(n=40))
    with_structure = BuildConfig(
        SMALL.embedder, SMALL.model, {"color": 4, "structure": 3}, shard_max_vectors=10
    )
    run_build(store, with_structure, Catalog(n=40))
    after = read_progress(store)
    assert before is not None and after is not None
    assert after.kinds["combined"] == before.kinds["combined"]  # carried over untouched
    assert after.kinds["color"].cursor == 40 and after.kinds["structure"].cursor == 40
    assert after.kinds["structure"].total_vectors == len(Catalog(n=40).indexed())
    pairs = {(f.id, kind) for f in list_failures(store) for kind in f.kinds}
    assert pairs == {(i, k) for i in (9, 18, 27, 36) for k in ("color", "structure")} | {
        (i, "combined") for i in (9, 18, 27)
    }
    assert after.failures.total == 8  # one record per product per run, naming its kinds
    assert check_store(store).ok


def test_resume_after_is_the_smallest_cursor_and_ids_at_or_below_it_are_skipped(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    writer = IndexWriter.open(store, SMALL, run_id="r")
    assert writer.resume_after() is None
    batch = Catalog().batch([1, 2, 3], dict(SMALL.dims))
    writer.add_batch(batch)
    writer.add_batch(batch)  # a replayed batch adds nothing
    writer.commit()
    assert writer.cursor("color") == 3 and writer.resume_after() == 3
    assert writer.progress.kinds["color"].total_vectors == 3
    assert writer.commit().commit_seq == 1  # nothing changed: no second commit


def test_string_ids_keep_their_type(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    config = BuildConfig("h", "m", {"color": 4}, shard_max_vectors=3)
    writer = IndexWriter.open(store, config, run_id="r")
    ids = ["sku-a", "sku-b", "sku-c", "sku-d"]
    vectors = np.stack([unit_vector(i, 4) for i in ids])
    writer.add_batch(EmbeddedBatch(ids, [None] * 4, {"color": vectors}, [], last_id="sku-d"))
    writer.finish()
    assert json.loads((tmp_path / "id_map_color.json").read_text()) == ids
    assert read_progress(store).cursor("color") == "sku-d"  # type: ignore[union-attr]


def test_bad_batches_are_rejected_before_anything_changes(tmp_path: Path) -> None:
    writer = IndexWriter.open(LocalStore(tmp_path), SMALL, run_id="r")
    batch = Catalog().batch([1, 2], dict(SMALL.dims))
    batch.vectors["color"] = batch.vectors["color"][:, :3]
    with pytest.raises(ValueError, match="color vectors must be"):
        writer.add_batch(batch)
    assert writer.cursor("color") is None
