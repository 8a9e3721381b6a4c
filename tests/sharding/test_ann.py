"""The approximate (IVF) index: trained once per generation, one list object per sealed shard,
recall measured against exact search, committed by progress.json (sharding.ann)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, InjectedCrash, MemoryStore, load_index
from sharding.ann import (
    AnnConfig,
    choose_pq_m,
    list_refs,
    load_ann,
    parse_ann_name,
    read_lists,
    recall_at,
    update_ann,
)
from sharding.codec import ProductId
from sharding.errors import StateError
from sharding.loader import MappedVectors, map_index
from sharding.local_store import LocalStore
from sharding.state import read_progress, shard_records
from sharding.storage import CrashingStorage

DIM = 32
KIND = "color"
CONFIG = BuildConfig(embedder="test", model="m", dims={KIND: DIM}, shard_max_vectors=500)
ANN = AnnConfig(min_vectors=1000, recall_queries=100, first_nprobe=2, max_nlist=32)


def clustered(n: int, start: int = 0, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """CLIP-like vectors: unit vectors scattered around a few dozen random unit centres
    (the same centres for every call with the same seed), not uniform noise."""
    centres = np.random.default_rng(seed).standard_normal((clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed * 7919 + start + 1)
    which = rng.integers(0, clusters, n)
    x = centres[which] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(store: MemoryStore, first: int, n: int, seed: int = 0, run_id: str = "run") -> None:
    writer = IndexWriter.open(store, CONFIG, run_id=run_id)
    ids = list(range(first, first + n))
    vectors = clustered(n, first, seed=seed)
    for s in range(0, n, 250):
        batch_ids = list[ProductId](ids[s : s + 250])
        writer.add_batch(
            EmbeddedBatch(batch_ids, [f"b{i % 3}" for i in batch_ids], {KIND: vectors[s : s + 250]})
        )
        writer.commit()
    writer.finish()


def exact(store: MemoryStore, queries: np.ndarray, k: int) -> list[list[ProductId]]:
    return [[h.id for h in row] for row in load_index(store, KIND).search(queries, k)]


def ann_ids(
    store: MemoryStore, queries: np.ndarray, k: int, nprobe: int | None = None
) -> list[list[ProductId]]:
    index = load_index(store, KIND)
    ann = load_ann(store, index.progress, KIND)
    assert ann is not None
    _, rows = ann.search(index.vectors, queries, k, nprobe=nprobe)
    return [[index.ids[r] for r in row if r >= 0] for row in rows]


def test_no_ann_below_the_minimum() -> None:
    store = MemoryStore()
    build(store, 1, 1000)
    report = update_ann(store, KIND, ANN, run_id="ann")
    assert report.action == "none" and "1000 live vectors" in report.reason
    progress = read_progress(store)
    assert progress is not None and progress.ann == {}
    assert b'"ann"' not in store.get("progress.json")  # older readers still read the store


def test_train_then_add_only_new_shards_and_search_equals_exact_at_full_nprobe() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    report = update_ann(store, KIND, ANN, run_id="ann")
    state = report.state
    assert report.action == "trained" and state is not None
    assert state.type == "IVFFlat" and state.nlist == 32 and state.shards == 6
    assert [ref.shard for ref in state.lists] == [1, 2, 3, 4, 5, 6]
    assert state.vectors == 3000 and state.serving and state.recall_at_10 is not None
    assert state.recall_at_10 >= ANN.min_recall
    committed = {name: store.get(name) for name in store.list("ann_")}

    build(store, 3001, 1200)  # seals shards 7 and 8 (9 is open)
    report = update_ann(store, KIND, ANN, run_id="ann2")
    assert report.action == "added" and report.state is not None
    assert [parse_ann_name(n) for n in report.written] == [(KIND, 1), (KIND, 1)]
    assert report.state.shards == 8 and report.state.vectors == 4000
    for name, data in committed.items():  # nothing committed is rewritten
        assert store.get(name) == data

    queries = clustered(20, 99_000)
    full = ann_ids(store, queries, 10, nprobe=report.state.nlist)
    assert full == exact(store, queries, 10)  # the open shard's 200 slots are scanned exactly


def test_recall_is_measured_against_exact_search() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    state = update_ann(store, KIND, ANN, run_id="ann").state
    assert state is not None
    index = load_index(store, KIND)
    ann = load_ann(store, index.progress, KIND)
    assert ann is not None
    queries = index.vectors[::30][:100]
    _, truth = __import__("faiss").knn(queries, index.vectors, 10, metric=0)
    for nprobe in (1, 4, 32):
        _, rows = ann.search(index.vectors, queries, 10, nprobe=nprobe)
        measured = recall_at(truth, rows)
        assert 0.0 <= measured <= 1.0
    assert recall_at(truth, ann.search(index.vectors, queries, 10, nprobe=32)[1]) == 1.0
    assert recall_at(truth, ann.search(index.vectors, queries, 10, nprobe=1)[1]) < 1.0
    # The committed figure is the recall at the committed nprobe on the stored sample.
    assert state.recall_at_10 is not None and state.recall_queries == 100


def test_unreachable_recall_is_not_served() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    report = update_ann(
        store, KIND, AnnConfig(min_vectors=1000, min_recall=1.01, max_nlist=32), run_id="a"
    )
    assert report.failed and report.state is not None and not report.state.serving
    assert report.state.nprobe == report.state.nlist  # tuned all the way up first
    progress = read_progress(store)
    assert progress is not None and load_ann(store, progress, KIND) is None


def test_dead_slots_and_brand_rows_are_respected() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    update_ann(store, KIND, ANN, run_id="ann")
    writer = IndexWriter.open(store, CONFIG, run_id="del")
    writer.delete(list(range(1, 3001, 3)))
    writer.finish()
    queries = clustered(10, 77_000)
    index = load_index(store, KIND)
    ann = load_ann(store, index.progress, KIND)
    assert ann is not None and len(ann.dead_covered) == 1000
    _, rows = ann.search(index.vectors, queries, 10, nprobe=32)
    got = [[index.ids[r] for r in row] for row in rows]
    assert got == exact(store, queries, 10)
    assert all(pid % 3 != 1 for row in got for pid in row)
    brand_rows = np.flatnonzero(np.array([pid % 3 == 2 for pid in index.ids]))
    _, rows = ann.search(index.vectors, queries, 10, rows=brand_rows, nprobe=32)
    assert all(index.ids[r] % 3 == 2 for row in rows for r in row)
    sub = index.vectors[brand_rows]
    _, want = __import__("faiss").knn(queries, sub, 10, metric=0)
    assert rows.tolist() == brand_rows[want].tolist()


def test_drift_retrains_a_new_generation_swapped_by_one_commit() -> None:
    store = MemoryStore()
    build(store, 1, 2000)
    first = update_ann(store, KIND, ANN, run_id="g1").state
    assert first is not None and first.generation == 1 and first.trained_on == 2000
    build(store, 2001, 2000, seed=5)  # other clusters, and the live count doubled
    before = read_progress(store)
    report = update_ann(store, KIND, ANN, run_id="g2")
    after = read_progress(store)
    assert report.action == "retrained" and "2.0 x 2000" in report.reason
    assert before is not None and after is not None and after.commit_seq == before.commit_seq + 1
    assert after.ann[KIND].generation == 2 and after.ann[KIND].shards == 8
    assert {parse_ann_name(n)[1] for n in store.list("ann_")} == {2}  # type: ignore[index]


def test_drift_by_distance() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    update_ann(store, KIND, ANN, run_id="g1")
    build(store, 3001, 1000, seed=9)  # far from the trained centroids, count not doubled
    report = update_ann(store, KIND, ANN, run_id="g2")
    assert report.action == "retrained" and "mean distance" in report.reason


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(("grow", "seed", "writes"), [(1000, 0, 4), (2500, 5, 13)])
def test_a_crash_at_every_write_of_an_update_resumes_to_the_same_state(
    when: str, grow: int, seed: int, writes: int
) -> None:
    """An update that adds two shards (4 writes), and a retrain to generation 2 (the trained
    index, 10 list objects, progress.json, last_commit.json): killed at every write, the
    previous generation serves until the commit and the next build reaches the same state."""

    start = MemoryStore()
    build(start, 1, 2500)
    update_ann(start, KIND, ANN, run_id="g1")
    build(start, 2501, grow, seed=seed)

    def base() -> MemoryStore:
        store = MemoryStore()
        store.objects = dict(start.objects)  # bytes are immutable: a shallow copy is a copy
        return store

    reference = base()
    update_ann(reference, KIND, ANN, run_id="g2")
    want = read_progress(reference)
    assert want is not None
    n = 1
    while True:
        store = base()
        before = read_progress(store)
        crashing = CrashingStorage(store, n, when)  # type: ignore[arg-type]
        try:
            update_ann(crashing, KIND, ANN, run_id="g2")
        except InjectedCrash:
            now = read_progress(store)
            assert now is not None and before is not None
            if now.commit_seq == before.commit_seq:  # not committed: the old state serves
                assert now.ann == before.ann and load_ann(store, now, KIND) is not None
            else:  # committed: the new generation serves, whole
                assert now.ann == want.ann
            update_ann(store, KIND, ANN, run_id="g2")  # the next build
            got = read_progress(store)
            assert got is not None and got.ann == want.ann
            assert sorted(store.list("ann_")) == sorted(reference.list("ann_"))
            assert read_lists(store, got.ann[KIND])
            n += 1
            continue
        break
    assert crashing.writes == writes and n == writes + 1
    assert want.ann[KIND].generation == (2 if seed else 1)


def test_objects_stay_under_a_small_shard_limit() -> None:
    limit = 45 + 4 * DIM * 40  # 40 vectors per shard
    config = BuildConfig(embedder="test", model="m", dims={KIND: DIM}, shard_max_bytes=limit)
    store = MemoryStore()
    writer = IndexWriter.open(store, config, run_id="r")
    vectors = clustered(2000)
    writer.add_batch(EmbeddedBatch(list[ProductId](range(1, 2001)), [None] * 2000, {KIND: vectors}))
    writer.finish()
    wide = AnnConfig(min_vectors=1000, max_nlist=4096, first_nprobe=2)  # would take 50 lists
    state = update_ann(store, KIND, wide, run_id="a").state
    assert state is not None and state.shards == 50 and state.vectors == 2000
    # IVFFlat entries (slot + list number + vector) are 9 bytes larger than a shard's rows:
    # a full shard's entries take two objects.
    refs = list_refs(store, state)
    assert len(refs) == 100 and {ref.shard for ref in refs} == set(range(1, 51))
    # References roll into segments of as many as fit under the limit (not 100), the rest inline.
    assert [seg.lists for seg in state.segments] == [35, 35] and len(state.lists) == 30
    for name in [*(ref.name for ref in refs), *(seg.name for seg in state.segments)]:
        assert len(store.get(name)) <= limit
    # The trained index (nlist x 32 floats) holds fewer lists so that it fits too.
    assert state.nlist < 50 and len(store.get(state.trained)) <= limit


def test_ivfpq_is_chosen_from_its_size_and_re_ranked_exactly() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    config = AnnConfig(min_vectors=1000, pq_min_vectors=2000, pq_m=8, max_nlist=16, first_nprobe=2)
    state = update_ann(store, KIND, config, run_id="pq").state
    assert state is not None and state.type == "IVFPQ" and state.pq_m == 8
    ref = state.lists[0]
    assert len(store.get(ref.name)) == 7 + 24 + ref.vectors * (8 + 1 + 8)  # 8-byte PQ codes
    index = load_index(store, KIND)
    ann = load_ann(store, index.progress, KIND)
    assert ann is not None
    queries = clustered(5, 55_000)
    scores, rows = ann.search(index.vectors, queries, 5, nprobe=16)
    # Scores are exact inner products of the stored vectors (re-ranked), not PQ estimates.
    for q, row_s, row_r in zip(queries, scores, rows, strict=True):
        np.testing.assert_allclose(row_s, index.vectors[row_r] @ q, rtol=1e-5)


def _problems(store: MemoryStore) -> list[tuple[str, str]]:
    from sharding import check_store

    return [(p.code, p.severity) for p in check_store(store).problems]


def test_check_verifies_the_approximate_index() -> None:
    store = MemoryStore()
    build(store, 1, 3000)
    state = update_ann(store, KIND, ANN, run_id="ann").state
    assert state is not None
    assert _problems(store) == []
    good = store.get(state.lists[2].name)

    store.put(state.lists[2].name, good[:-1] + bytes([good[-1] ^ 1]))  # one code byte flipped
    assert ("ann_object", "error") in _problems(store)
    store.put(state.lists[2].name, good)

    progress = read_progress(store)
    assert progress is not None
    dropped = progress.ann[KIND].model_copy(update={"lists": progress.ann[KIND].lists[1:]})
    store.put("progress.json", progress.model_copy(update={"ann": {KIND: dropped}}).to_bytes())
    found = _problems(store)
    assert ("ann_lists", "error") in found  # shard 1's live slots are in no list
    assert ("uncommitted_object", "warning") in found  # its list object is named by no commit


def test_list_references_roll_into_segments_and_progress_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """progress.json keeps fewer than SEGMENT_LISTS list references inline; the rest are in
    immutable segment objects it names with their sha256 (check verifies them)."""
    monkeypatch.setattr("sharding.ann.SEGMENT_LISTS", 4)
    store = MemoryStore()
    build(store, 1, 3000)  # 6 sealed shards: one segment of 4, 2 inline
    state = update_ann(store, KIND, ANN, run_id="ann").state
    assert state is not None and len(state.segments) == 1 and len(state.lists) == 2
    segment = state.segments[0]
    assert (segment.first_shard, segment.last_shard, segment.lists) == (1, 4, 4)
    assert segment.name == "ann_color_g001_lists_00001.json"
    committed = {name: store.get(name) for name in store.list("ann_")}
    steady = AnnConfig(**{**ANN.__dict__, "drift_growth": 100.0, "drift_distance": 100.0})
    for first in range(3001, 6001, 500):  # one more sealed shard per update
        build(store, first, 500, run_id=f"r{first}")
        report = update_ann(store, KIND, steady, run_id=f"a{first}")
        state = report.state
        assert report.action == "added" and state is not None and len(state.lists) < 4
        # One list object, and a segment object every fourth update: never the older ones.
        assert len(report.written) == (2 if len(state.lists) == 0 else 1)
    assert [ref.shard for ref in list_refs(store, state)] == list(range(1, 13))
    assert len(state.segments) == 3 and state.lists == []
    for name, data in committed.items():  # nothing committed is rewritten
        assert store.get(name) == data
    assert _problems(store) == []
    queries = clustered(10, 88_000)
    assert ann_ids(store, queries, 10, nprobe=32) == exact(store, queries, 10)
    bad = state.segments[1]
    store.put(bad.name, store.get(bad.name).replace(b'"vectors":500', b'"vectors":499', 1))
    assert ("ann_object", "error") in _problems(store)


def _local_store(tmp_path: Path) -> LocalStore:
    """3,000 vectors (6 sealed shards) + 200 in the open shard, an approximate index, a third of
    the first 3,000 products deleted: on disk, so map_index can map the shard files."""
    store = LocalStore(tmp_path / "store")
    build(store, 1, 3000)  # type: ignore[arg-type]
    update_ann(store, KIND, ANN, run_id="ann")
    build(store, 3001, 200)  # type: ignore[arg-type]
    writer = IndexWriter.open(store, CONFIG, run_id="del")
    writer.delete(list(range(1, 3001, 3)))
    writer.finish()
    return store


def test_mapped_index_serves_the_same_results_without_the_vectors_in_memory(
    tmp_path: Path,
) -> None:
    store = _local_store(tmp_path)
    loaded, mapped = load_index(store, KIND), map_index(store, KIND)
    assert isinstance(mapped.vectors, MappedVectors) and not isinstance(
        loaded.vectors, MappedVectors
    )
    assert mapped.vectors.disk_bytes == 6 * 500 * DIM * 4  # every sealed shard left on disk
    assert mapped.ids == loaded.ids and mapped.ntotal == loaded.ntotal == 2200
    rows = np.array([0, 5, 1999, 2000, 2199, 7, 6])  # across shards, the open one, unordered
    np.testing.assert_array_equal(mapped.vectors[rows], loaded.vectors[rows])
    np.testing.assert_array_equal(mapped.vector(3001), loaded.vector(3001))
    queries = clustered(12, 66_000)
    assert [[h.id for h in r] for r in mapped.search(queries, 10)] == [
        [h.id for h in r] for r in loaded.search(queries, 10)
    ]  # exact search streams the mapped shards: same hits
    ann = load_ann(store, mapped.progress, KIND)
    assert ann is not None
    for nprobe in (2, 32):
        got = ann.search(mapped.vectors, queries, 10, nprobe=nprobe)
        want = ann.search(loaded.vectors, queries, 10, nprobe=nprobe)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    brand = np.flatnonzero(np.array([pid % 3 == 2 for pid in mapped.ids]))
    got = ann.search(mapped.vectors, queries, 10, rows=brand, nprobe=32)[1]
    assert all(mapped.ids[r] % 3 == 2 for row in got for r in row)
    assert (
        got.tolist() == ann.search(loaded.vectors, queries, 10, rows=brand, nprobe=32)[1].tolist()
    )


def test_a_mapped_shard_is_verified_first(tmp_path: Path) -> None:
    store = _local_store(tmp_path)
    progress = read_progress(store)
    assert progress is not None
    name = shard_records(store, progress, KIND)[2].name
    path = tmp_path / "store" / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one byte of a sealed shard's last vector
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="sealed shard"):
        map_index(store, KIND)  # not mapped: load_index's path names what is wrong


def test_a_remote_store_is_served_from_the_cache_folder(tmp_path: Path) -> None:
    """A store without local files (MemoryStore stands for Supabase): each sealed shard is
    downloaded once into the cache folder (its sha256 as the name) and read from there."""
    store = MemoryStore()
    build(store, 1, 3000)
    build(store, 3001, 200)
    cache = tmp_path / "cache"
    mapped = map_index(store, KIND, cache_dir=cache)
    assert isinstance(mapped.vectors, MappedVectors)
    assert mapped.vectors.disk_bytes == 6 * 500 * DIM * 4
    progress = read_progress(store)
    assert progress is not None
    sealed = [r for r in shard_records(store, progress, KIND) if r.sealed]
    assert {f"{r.sha256}.bin" for r in sealed} <= {p.name for p in cache.iterdir()}
    loaded = load_index(store, KIND)
    rows = np.arange(0, 3200, 37)
    np.testing.assert_array_equal(mapped.vectors[rows], loaded.vectors[rows])
    without = map_index(store, KIND)  # no cache folder: read into memory, as load_index does
    assert isinstance(without.vectors, MappedVectors) and without.vectors.disk_bytes == 0
    np.testing.assert_array_equal(without.vectors[rows], loaded.vectors[rows])


def test_descriptors_are_given_back_with_the_index(tmp_path: Path) -> None:
    import gc
    import os

    def open_in_store() -> int:
        """Descriptors of this process on files under the store (others come and go)."""
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            count += target.startswith(str(tmp_path))
        return count

    store = _local_store(tmp_path)
    assert open_in_store() == 0
    mapped = map_index(store, KIND)
    mapped.vectors[np.arange(0, 2000, 7)]  # live rows of every sealed shard: 6 files open
    assert open_in_store() == 6
    del mapped
    gc.collect()
    assert open_in_store() == 0


def test_the_re_rank_depth_is_tuned_with_nprobe() -> None:
    """Coarse PQ codes (2 bytes at 32-d): the PQ order alone misses neighbours at every nprobe;
    re-ranking 10 x k candidates exactly reaches the minimum, and that depth is committed."""
    base = {"min_vectors": 1000, "pq_min_vectors": 2000, "pq_m": 2, "max_nlist": 16}
    base |= {"first_nprobe": 16, "min_recall": 0.99}
    shallow_store, deep_store = MemoryStore(), MemoryStore()
    for store in (shallow_store, deep_store):
        build(store, 1, 3000)
    shallow = update_ann(shallow_store, KIND, AnnConfig(**base, rerank_steps=(1,)), run_id="a")
    assert shallow.failed and shallow.state is not None and shallow.state.rerank == 1
    deep = update_ann(deep_store, KIND, AnnConfig(**base, rerank_steps=(1, 2, 10)), run_id="a")
    state = deep.state
    assert state is not None and state.serving and (state.nprobe, state.rerank) == (16, 10)
    assert _problems(deep_store) == []  # check re-measures at the committed nprobe and depth


def test_the_committed_recall_predicts_held_out_queries() -> None:
    """Each sample query leaves its own slot out of the truth and of the results: a stored
    vector finds itself trivially, which would overstate recall against held-out queries."""
    import faiss

    store = MemoryStore()
    build(store, 1, 30_000)
    config = AnnConfig(
        min_vectors=1000, recall_queries=500, first_nprobe=1, max_nlist=128, min_recall=0.0
    )
    state = update_ann(store, KIND, config, run_id="ann").state
    assert state is not None and state.nprobe == 1 and state.recall_at_10 is not None
    index = load_index(store, KIND)
    ann = load_ann(store, index.progress, KIND)
    assert ann is not None
    stored = np.asarray(index.vectors)

    def recall(queries: np.ndarray) -> float:
        _, truth = faiss.knn(queries, stored, 10, metric=faiss.METRIC_INNER_PRODUCT)
        return recall_at(truth, ann.search(index.vectors, queries, 10)[1])

    held_out = recall(clustered(1000, 500_000))  # the same distribution, not in the index
    with_self = recall(stored[np.random.default_rng(5).choice(len(stored), 1000, replace=False)])
    assert abs(state.recall_at_10 - held_out) <= 0.03, (state.recall_at_10, held_out)
    assert with_self - held_out > 0.03  # what counting self gave: this test tells them apart


def test_the_pq_code_size_is_chosen_from_the_codes_budget() -> None:
    """The finest code whose bytes fit the budget (10M x 128 B = 1.28 GB fits 1.5 GB, 20M does
    not), dividing dim; an explicit pq_m that does not divide dim means IVFFlat."""
    config = AnnConfig()
    assert choose_pq_m(512, 10_000_000, config) == 128
    assert choose_pq_m(512, 20_000_000, config) == 64
    assert choose_pq_m(96, 1_000_000, config) == 32  # 128 and 64 do not divide 96
    assert choose_pq_m(512, 10**12, config) == 1
    assert choose_pq_m(512, 10, AnnConfig(pq_m=64)) == 64
    assert choose_pq_m(100, 10, AnnConfig(pq_m=64)) == 0
