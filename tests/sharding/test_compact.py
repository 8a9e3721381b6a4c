"""Compaction (sharding.compact) on real FAISS shards: threshold, same live results, crash safety."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from sharding import (
    EmbeddedBatch,
    IndexWriter,
    InjectedCrash,
    LocalStore,
    RollupLimits,
    check_store,
    load_index,
    names,
    read_progress,
)
from sharding.ann import AnnConfig, update_ann
from sharding.codec import ProductId
from sharding.compact import compact
from sharding.storage import CountingStorage, CrashingStorage, Storage
from sharding.supabase_store import SupabaseStore
from tests.sharding.builds import SMALL, Catalog, run_build, unit_vector

ROLLUP = RollupLimits(segment_shards=2, failure_chunk=3, tombstone_chunk=4)
DELETED = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
REPLACED = [4, 8, 16, 40]


def brand(product_id: object) -> str | None:
    """The catalog's brand of a product (the same rule tests/sharding/builds.py embeds with)."""
    assert isinstance(product_id, int)
    return f"brand-{product_id % 3}" if product_id % 4 else None


def brands_of(ids: object) -> list[str | None]:
    return [brand(i) for i in ids]  # type: ignore[attr-defined]


def make_dirty(path: Path) -> LocalStore:
    """42 products in 10-vector shards (segments, an open shard), then 12 deleted and 4 replaced
    (their old slots dead): 16 dead of 46 slots, 35 %."""
    store = LocalStore(path)
    dirty_into(store)
    return store


def dirty_into(store: Storage) -> None:
    run_build(store, rollup=ROLLUP)
    writer = IndexWriter.open(store, SMALL, run_id="sync", rollup=ROLLUP)
    writer.delete(DELETED)
    vectors = {
        k: np.stack([unit_vector(i, d, salt=1) for i in REPLACED]) for k, d in SMALL.dims.items()
    }
    writer.add_batch(
        EmbeddedBatch(
            list[ProductId](REPLACED), brands_of(REPLACED), vectors, last_id=40, changed=True
        )
    )
    writer.commit()
    writer.finish()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dirty")
    make_dirty(path)
    return path


def copy_of(template: Path, path: Path) -> LocalStore:
    shutil.copytree(template, path)
    return LocalStore(path)


def snapshot(store: Storage) -> dict[str, tuple[list[ProductId], np.ndarray]]:
    progress = read_progress(store)
    assert progress is not None
    out = {}
    for kind in progress.kinds:
        index = load_index(store, kind)
        out[kind] = (list(index.ids), np.array(index.vectors))
    return out


def live_ids() -> list[int]:
    survivors = [i for i in Catalog().indexed() if i not in DELETED and i not in REPLACED]
    return survivors + REPLACED  # the replacements were appended after everything else


def test_dirty_store_is_what_the_tests_assume(template: Path) -> None:
    progress = read_progress(LocalStore(template))
    assert progress is not None
    kp = progress.kinds["color"]
    assert (kp.total_vectors, kp.dead) == (46, 16)
    assert kp.segments and kp.tombstones and kp.open_shard() is not None
    assert snapshot(LocalStore(template))["color"][0] == live_ids()


def test_below_the_threshold_nothing_is_written(template: Path, tmp_path: Path) -> None:
    store = copy_of(template, tmp_path / "s")
    before = {name: store.get(name) for name in store.list()}
    counting = CountingStorage(store)
    report = compact(counting, run_id="c", brands_of=brands_of, rollup=ROLLUP, threshold=0.5)
    assert report.compacted == [] and report.commit_seq is None
    assert counting.writes == 0
    assert {name: store.get(name) for name in store.list()} == before
    assert report.kinds["color"].action == "below_threshold"


def test_compaction_keeps_every_live_result_and_drops_the_dead(
    template: Path, tmp_path: Path
) -> None:
    store = copy_of(template, tmp_path / "s")
    before = snapshot(store)
    queries = np.stack([unit_vector(q, 4, salt=9) for q in range(20)])
    hits_before = [
        [(h.id, round(h.score, 5)) for h in row]
        for row in load_index(store, "color").search(queries, 7)
    ]

    report = compact(store, run_id="compact-1", brands_of=brands_of, rollup=ROLLUP, threshold=0.3)

    assert sorted(report.compacted) == ["color", "combined"]
    after = snapshot(store)
    for kind, (ids, vectors) in before.items():
        assert after[kind][0] == ids == live_ids()
        np.testing.assert_array_equal(after[kind][1], vectors)
    index = load_index(store, "color")
    hits = [[(h.id, round(h.score, 5)) for h in row] for row in index.search(queries, 7)]
    assert hits == hits_before
    dead = set(DELETED)
    assert all(h.id not in dead for row in index.search(queries, 40) for h in row)
    assert len(index.search(queries[:1], 40)[0]) == len(live_ids())

    progress = read_progress(store)
    assert progress is not None and progress.commit_seq == report.commit_seq
    for kind in SMALL.dims:
        kp = progress.kinds[kind]
        assert (kp.dead, kp.tombstones, kp.recent_dead) == (0, [], [])
        assert kp.total_vectors == len(live_ids()) and kp.compaction == 1
        assert kp.vectors_per_brand == dict(
            sorted(Counter(brand(i) or "(none)" for i in live_ids()).items())
        )
        assert kp.max_id == max(live_ids())
        assert kp.segments  # 30 rows in 10-vector shards, rolled 2 by 2
        names_now = [r.name for r in kp.shards] + [s.name for s in kp.segments]
        assert all(names.parse(n).compaction == 1 for n in names_now)  # type: ignore[union-attr]
        assert orjson.loads(store.get(names.full_id_map(kind))) == live_ids()
    # The retired objects are gone; only the new compaction's layout objects remain.
    layout = [p for n in store.list() if (p := names.parse(n)) and p.kind and p.number]
    assert layout and all(p.compaction == 1 for p in layout)
    report_check = check_store(store)
    assert report_check.ok, report_check.to_markdown()
    assert not report_check.problems, report_check.to_markdown()


def test_a_build_and_a_second_compaction_continue_from_a_compacted_store(
    template: Path, tmp_path: Path
) -> None:
    store = copy_of(template, tmp_path / "s")
    compact(store, run_id="compact-1", brands_of=brands_of, rollup=ROLLUP, threshold=0.3)
    run_build(store, catalog=Catalog(n=70), rollup=ROLLUP, run_id="build-2")  # appends 48..70
    writer = IndexWriter.open(store, SMALL, run_id="sync-2", rollup=ROLLUP)
    gone = [1, 6, 10, 12, 14, 15, 20, 21, 22, 24, 25, 26, 28, 30, 32, 33, 34, 50, 51, 52]
    writer.delete(gone)
    writer.commit()
    writer.finish()
    assert check_store(store).ok
    expected = [i for i in live_ids() if i not in gone]
    expected += [i for i in Catalog(n=70).indexed() if i > 47 and i not in gone]
    assert load_index(store, "combined").ids == expected

    report = compact(store, run_id="compact-2", brands_of=brands_of, rollup=ROLLUP, threshold=0.3)
    assert sorted(report.compacted) == ["color", "combined"]
    progress = read_progress(store)
    assert progress is not None and progress.kinds["color"].compaction == 2
    assert load_index(store, "combined").ids == expected
    checked = check_store(store)
    assert checked.ok and not checked.problems, checked.to_markdown()


def test_only_the_kinds_asked_for_are_compacted(template: Path, tmp_path: Path) -> None:
    store = copy_of(template, tmp_path / "s")
    untouched = {n: store.get(n) for n in store.list() if "combined" in n}
    report = compact(
        store, run_id="c", brands_of=brands_of, rollup=ROLLUP, kinds=["color"], threshold=0.3
    )
    assert report.compacted == ["color"]
    assert {n: store.get(n) for n in store.list() if "combined" in n} == untouched
    assert check_store(store).ok


def test_the_approximate_index_is_dropped_then_trained_anew(template: Path, tmp_path: Path) -> None:
    store = copy_of(template, tmp_path / "s")
    config = AnnConfig(min_vectors=5, min_recall=0.5)
    assert update_ann(store, "color", config, run_id="ann-1").action == "trained"
    old = set(store.list("ann_"))
    report = compact(
        store, run_id="c", brands_of=brands_of, rollup=ROLLUP, kinds=["color"], threshold=0.3
    )
    assert report.compacted == ["color"]
    progress = read_progress(store)
    assert progress is not None and "color" not in progress.ann
    assert not set(store.list("ann_")) & old  # no list pointing at old slots is left
    assert update_ann(store, "color", config, run_id="ann-2").action == "trained"
    checked = check_store(store)
    assert checked.ok, checked.to_markdown()


@pytest.fixture(scope="module")
def reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    path = tmp_path_factory.mktemp("ref") / "s"
    store = copy_of(template, path)
    counting = CountingStorage(store)
    compact(counting, run_id="ref", brands_of=brands_of, rollup=ROLLUP, threshold=0.3)
    return counting.writes, snapshot(store)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_every_write_resumes_to_the_same_store(
    template: Path, tmp_path: Path, reference: tuple[int, dict], when: str
) -> None:
    writes, expected = reference
    assert writes >= 10
    stale: set[str] = set()
    for n in range(1, writes + 1):
        store = copy_of(template, tmp_path / f"{when}-{n}")
        with pytest.raises(InjectedCrash):
            compact(
                CrashingStorage(store, n, when),  # type: ignore[arg-type]
                run_id="dies",
                brands_of=brands_of,
                rollup=ROLLUP,
                threshold=0.3,
            )
        # Whatever the crash left, a reader sees one commit: the same live rows, old or new.
        between = snapshot(store)
        for kind, (ids, vectors) in expected.items():
            assert between[kind][0] == ids, f"crash at {n} ({when}): {kind} read mid-compaction"
            np.testing.assert_array_equal(between[kind][1], vectors)
        # ... and check finds nothing wrong: at most the crash's leftovers and a full id map
        # that lags the commit, both warnings.
        problems = {(p.code, p.severity) for p in check_store(store).problems}
        allowed = {("uncommitted_object", "warning"), ("stale_full_id_map", "warning")}
        assert problems <= allowed, f"crash at {n} ({when}): {problems}"
        stale.update(code for code, _ in problems)
        compact(store, run_id="resumes", brands_of=brands_of, rollup=ROLLUP, threshold=0.3)
        got = snapshot(store)
        for kind, (ids, vectors) in expected.items():
            assert got[kind][0] == ids, f"crash at write {n} ({when}): {kind} ids differ"
            np.testing.assert_array_equal(got[kind][1], vectors)
        progress = read_progress(store)
        assert progress is not None and all(kp.dead == 0 for kp in progress.kinds.values())
        checked = check_store(store)
        assert checked.ok and not checked.problems, (
            f"crash at {n} ({when}):\n{checked.to_markdown()}"
        )
    assert "stale_full_id_map" in stale  # some crash fell between the commit and the map


def test_a_supabase_store_is_compacted_the_same_way(supabase_store: SupabaseStore) -> None:
    """Over the official client and the repository's Storage test server: the same live rows,
    check clean, nothing of the retired compaction left in the bucket."""
    dirty_into(supabase_store)
    before = snapshot(supabase_store)
    report = compact(supabase_store, run_id="c", brands_of=brands_of, rollup=ROLLUP)
    assert sorted(report.compacted) == ["color", "combined"]
    after = snapshot(supabase_store)
    for kind, (ids, vectors) in before.items():
        assert after[kind][0] == ids == live_ids()
        np.testing.assert_array_equal(after[kind][1], vectors)
    old = [
        n
        for n in supabase_store.list()
        if (p := names.parse(n)) and p.kind and p.number and not p.compaction
    ]
    assert not old
    checked = check_store(supabase_store)
    assert checked.ok and not checked.problems, checked.to_markdown()
