"""Retrying recorded failures: fixed products join the index once, the rest keep a fresh reason."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from sharding import (
    BuildConfig,
    EmbeddedBatch,
    IndexWriter,
    LocalStore,
    check_store,
    load_index,
)
from sharding.errors import InjectedCrash
from sharding.state import list_failures, read_progress
from tests.sharding.builds import SMALL, SMALL_ROLLUP, Catalog, Failed, run_build, unit_vector

CATALOG = Catalog()  # 47 products, every 9th fails: 9, 18, 27, 36, 45
FAILED = [9, 18, 27, 36, 45]


def _retry_batch(fixed: list[int], still: list[int]) -> EmbeddedBatch:
    vectors = {k: np.stack([unit_vector(i, d) for i in fixed]) for k, d in SMALL.dims.items()}
    failures = [Failed(i, "fetch_http_404", f"still gone: {i}") for i in still]
    return EmbeddedBatch(fixed, ["Late"] * len(fixed), vectors, failures)


def _retry(store: LocalStore, fixed: list[int], still: list[int], **crash: object) -> None:
    writer = IndexWriter.open(store, SMALL, run_id="retry", rollup=SMALL_ROLLUP, **crash)  # type: ignore[arg-type]
    assert writer.retry_failed(_retry_batch(fixed, still)) == fixed
    writer.finish()


def test_fixed_failures_are_indexed_once_and_the_rest_keep_a_new_reason(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store)
    chunk_names = {ref.name for ref in read_progress(store).failures.chunks}  # type: ignore[union-attr]
    assert chunk_names, "the build rolled failures into chunks (3 per chunk)"
    _retry(store, fixed=[18, 36, 45], still=[9, 27])
    for kind in SMALL.dims:
        index = load_index(store, kind)
        assert sorted(index.ids) == sorted([*CATALOG.indexed(), 18, 36, 45])
        assert len(set(index.ids)) == len(index.ids)
        np.testing.assert_allclose(index.vector(36), unit_vector(36, SMALL.dims[kind]), atol=1e-6)
    failures = list_failures(store)
    assert [(f.id, f.reason, f.run_id) for f in failures] == [
        (9, "fetch_http_404", "retry"),
        (27, "fetch_http_404", "retry"),
    ]
    report = check_store(store)
    assert report.ok, report.to_markdown()
    assert not chunk_names & {p.name for p in tmp_path.iterdir()}, "old chunks removed at finish"
    progress = read_progress(store)
    assert progress is not None and progress.failures.total == 2
    assert progress.kinds["color"].vectors_per_brand["Late"] == 3


def test_a_crash_anywhere_in_a_retry_leaves_a_consistent_store(tmp_path: Path) -> None:
    for writes in range(1, 12):
        store = LocalStore(tmp_path / f"crash-{writes}")
        run_build(store)
        with contextlib.suppress(InjectedCrash):
            _retry(store, fixed=[9, 18, 27, 36, 45], still=[], crash_after_writes=writes)
        assert check_store(store).ok, f"crash at write {writes}"
        _retry_remaining(store)
        assert sorted(load_index(store, "color").ids) == list(range(1, 48))
        assert list_failures(store) == [] and check_store(store).ok


def _retry_remaining(store: LocalStore) -> None:
    left = [f.id for f in list_failures(store)]
    if left:
        _retry(store, fixed=left, still=[])  # type: ignore[arg-type]


def test_only_recorded_failures_can_be_retried(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store)
    writer = IndexWriter.open(store, SMALL, run_id="retry", rollup=SMALL_ROLLUP)
    with pytest.raises(ValueError, match=r"\[10\] are not recorded failures"):
        writer.retry_failed(_retry_batch([9, 10], []))


def test_a_retry_that_keeps_many_failures_leaves_every_new_chunk_in_place(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=47, fail_every=3))  # 15 failures: 5 chunks of 3
    failed = [f.id for f in list_failures(store)]
    _retry(store, fixed=failed[:2], still=failed[2:])  # 13 kept: new chunks, new names
    progress = read_progress(store)
    assert progress is not None and len(progress.failures.chunks) == 4
    assert all((tmp_path / ref.name).exists() for ref in progress.failures.chunks)
    assert [f.id for f in list_failures(store)] == failed[2:]
    assert check_store(store).ok
    IndexWriter.open(store, SMALL, run_id="next", rollup=SMALL_ROLLUP).finish()  # resumable


def test_a_retry_for_one_kind_keeps_the_other_kinds_failure(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    color_only = BuildConfig("histogram", "hist-v1", {"color": 4}, shard_max_vectors=10)
    combined_only = BuildConfig("histogram", "hist-v1", {"combined": 6}, shard_max_vectors=10)
    run_build(store, color_only)
    run_build(store, combined_only, run_id="run-2")
    assert [f.id for f in list_failures(store)] == FAILED * 2  # one record per kind run
    writer = IndexWriter.open(store, combined_only, run_id="retry", rollup=SMALL_ROLLUP)
    vectors = {"combined": np.stack([unit_vector(9, 6)])}
    assert writer.retry_failed(EmbeddedBatch([9], ["Late"], vectors, [])) == [9]
    writer.finish()
    left = {(f.id, tuple(f.kinds)) for f in list_failures(store)}
    assert (9, ("color",)) in left and (9, ("combined",)) not in left
    assert 9 in load_index(store, "combined").ids and 9 not in load_index(store, "color").ids
    assert check_store(store).ok


def test_a_retry_after_per_kind_runs_sends_each_product_once(tmp_path: Path) -> None:
    """Issue 13.5: 40 failed products, color then structure runs, batches of 8, then a retry."""
    store = LocalStore(tmp_path)
    failing = Catalog(n=40, fail_every=1)  # every image is missing
    color = BuildConfig("histogram", "hist-v1", {"color": 4}, shard_max_vectors=10)
    structure = BuildConfig("histogram", "hist-v1", {"structure": 3}, shard_max_vectors=10)
    run_build(store, color, failing)
    run_build(store, structure, failing, run_id="run-2")
    assert len(list_failures(store)) == 80  # one record per product per kind run
    both = BuildConfig("histogram", "hist-v1", {"color": 4, "structure": 3}, shard_max_vectors=10)
    writer = IndexWriter.open(store, both, run_id="retry", rollup=SMALL_ROLLUP)
    todo = writer.failed_ids()
    assert todo == list(range(1, 41))  # unique, oldest first
    for start in range(0, len(todo), 8):  # the images came back
        ids = todo[start : start + 8]
        vectors = {k: np.stack([unit_vector(i, d) for i in ids]) for k, d in both.dims.items()}
        assert writer.retry_failed(EmbeddedBatch(ids, [None] * len(ids), vectors, [])) == ids
        writer.commit()
    writer.finish()
    assert list_failures(store) == []
    for kind in both.dims:
        assert sorted(load_index(store, kind).ids) == list(range(1, 41))
    assert check_store(store).ok


def test_failed_ids_are_grouped_per_product_and_filtered_by_kind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    color_only = BuildConfig("histogram", "hist-v1", {"color": 4}, shard_max_vectors=10)
    combined_only = BuildConfig("histogram", "hist-v1", {"combined": 6}, shard_max_vectors=10)
    run_build(store, color_only)
    run_build(store, combined_only, run_id="run-2", catalog=Catalog(n=30))
    writer = IndexWriter.open(store, SMALL, run_id="retry", rollup=SMALL_ROLLUP)
    assert writer.failed_ids() == FAILED
    assert writer.failed_ids(["combined"]) == [9, 18, 27]
    assert writer.failed_ids(["structure"]) == []
