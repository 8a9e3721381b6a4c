"""Replacements, deletions and tombstones (format 4): a store that follows a changing catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sharding import (
    EmbeddedBatch,
    IndexWriter,
    InjectedCrash,
    LocalStore,
    RollupLimits,
    check_store,
    list_failures,
    load_index,
    read_progress,
)
from sharding.codec import ProductId
from sharding.scan import kind_ids, scan_search
from sharding.storage import CountingStorage
from tests.sharding.builds import SMALL, SMALL_ROLLUP, Catalog, Failed, run_build, unit_vector

REPLACED = [2, 5, 20, 33]  # new images (salt 1)
DELETED = [3, 7, 40]
BROKEN = [11]  # a changed product whose new image fails
INSERTED = [9]  # failed at first (9 % 9 == 0), its row fixed later: an id below the cursor
GROWN = Catalog(n=55)  # rows appended after the sync


def _changed_batch(ids: list[int], broken: list[int]) -> EmbeddedBatch:
    dims = dict(SMALL.dims)
    vectors = {k: np.stack([unit_vector(i, d, salt=1) for i in ids]) for k, d in dims.items()}
    failures = [Failed(i, "decode_error", f"new image of {i} is not an image") for i in broken]
    return EmbeddedBatch(
        list[ProductId](ids), [f"brand-{i % 3}" for i in ids], vectors, failures, changed=True
    )


def run_sync(
    store: object, *, rollup: RollupLimits = SMALL_ROLLUP, run_id: str = "sync", **crash: object
) -> IndexWriter:
    """One nightly sync as the build runs it: changes (resumable from the committed sync
    position), deletions, then the append pass above the cursor."""
    writer = IndexWriter.open(store, SMALL, run_id=run_id, rollup=rollup, **crash)  # type: ignore[arg-type]
    steps = [("changed-a", REPLACED[:2], []), ("changed-b", REPLACED[2:] + INSERTED, BROKEN)]
    done = writer.sync_position.updated_at if writer.sync_position else ""
    for mark, ids, broken in steps:
        if mark <= done:
            continue  # committed before a crash: applied exactly once
        writer.add_batch(_changed_batch(ids, broken))
        writer.set_sync_position(mark, ids[-1])
        writer.commit()
    if done < "deleted":
        writer.delete(DELETED)
        writer.set_sync_position("deleted", None)
        writer.commit()
    for batch in GROWN.batches(writer.resume_after(), 8, dict(SMALL.dims)):
        writer.add_batch(batch)
        writer.commit()
    writer.finish()
    return writer


def _expected_live() -> dict[int, np.ndarray]:
    live = {i: unit_vector(i, 4) for i in GROWN.indexed() if i <= 47}
    live |= {i: unit_vector(i, 4, salt=1) for i in [*REPLACED, *INSERTED]}
    live |= {i: unit_vector(i, 4) for i in GROWN.indexed() if i > 47}
    for gone in [*DELETED, *BROKEN]:
        live.pop(gone)
    return live


def _live_state(store: LocalStore) -> dict[object, np.ndarray]:
    index = load_index(store, "color")
    assert len(set(index.ids)) == len(index.ids), "an id is live twice"
    return {pid: index.vector(pid) for pid in index.ids}


@pytest.fixture
def synced(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    run_build(store)
    run_sync(store)
    return store


def test_replaced_deleted_and_failed_products_are_live_once_with_their_latest_vector(
    synced: LocalStore,
) -> None:
    got = _live_state(synced)
    expected = _expected_live()
    assert set(got) == set(expected)
    for pid, vector in expected.items():
        np.testing.assert_allclose(got[pid], vector, atol=1e-6)
    kp = read_progress(synced).kinds["color"]  # type: ignore[union-attr]
    # 4 replaced + 3 deleted + 1 broken slots died; 9 was not live, so it killed nothing.
    assert kp.dead == 8 and kp.live_vectors == len(expected)
    failures = list_failures(synced)
    assert any(f.id == 11 and f.reason == "decode_error" for f in failures)
    report = check_store(synced)
    assert report.ok, report.to_markdown()
    assert report.kinds["color"].dead == 8


def test_search_never_returns_a_dead_slot_and_gives_k_results_when_k_are_live(
    synced: LocalStore,
) -> None:
    index = load_index(synced, "color")
    assert index.dead_slots == 8
    for gone in [*DELETED, *BROKEN]:
        with pytest.raises(KeyError):
            index.vector(gone)
    progress = read_progress(synced)
    assert progress is not None
    for pid in REPLACED:
        new, old = unit_vector(pid, 4, salt=1), unit_vector(pid, 4)
        assert index.search(new, 1)[0][0].id == pid  # the replacement photo finds it first
        hits = index.search(old, index.ntotal)[0]
        assert len(hits) == index.ntotal == len(_expected_live())  # every live one, once each
        assert [h.id for h in hits].count(pid) == 1
        scanned = scan_search(synced, progress, "color", old, index.ntotal)[0]
        assert [h.id for h in scanned] == [h.id for h in hits]
    assert set(kind_ids(synced, progress, "color")) == set(index.ids)


def test_the_full_id_map_holds_null_at_dead_slots(synced: LocalStore) -> None:
    full = json.loads((synced.root / "id_map_color.json").read_text())
    assert full.count(None) == 8
    live = [pid for pid in full if pid is not None]
    assert sorted(live) == sorted(_expected_live())
    # The old slots of replaced products are null; their new slots hold them once.
    assert all(live.count(pid) == 1 for pid in REPLACED)


def test_tombstones_roll_into_immutable_chunks_and_progress_stays_small(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    rollup = RollupLimits(segment_shards=2, failure_chunk=3, tombstone_chunk=3)
    run_build(store, rollup=rollup)
    run_sync(store, rollup=rollup)
    kp = read_progress(store).kinds["color"]  # type: ignore[union-attr]
    assert [ref.name for ref in kp.tombstones] == [
        "tombstones_color_00001.json",
        "tombstones_color_00002.json",
    ]
    assert len(kp.recent_dead) == 2 and kp.dead == 8
    chunk = json.loads((store.root / "tombstones_color_00001.json").read_text())
    assert chunk["kind"] == "color" and len(chunk["slots"]) == 3
    assert check_store(store).ok
    # A tombstone chunk whose bytes changed is damage: check names it, load refuses.
    path = store.root / "tombstones_color_00001.json"
    path.write_text(json.dumps({**chunk, "slots": [0, 1, 2]}))
    report = check_store(store)
    assert not report.ok and "tombstone_chunk" in {p.code for p in report.problems}


def test_check_finds_an_id_live_twice_and_a_tombstone_past_the_slots(synced: LocalStore) -> None:
    path = synced.root / "progress.json"
    progress = json.loads(path.read_text())
    color = progress["kinds"]["color"]
    first_dead = color["recent_dead"][0]
    color["recent_dead"] = [*color["recent_dead"][1:], color["total_vectors"] + 5]
    path.write_text(json.dumps(progress))
    codes = {p.code for p in check_store(synced).problems}
    assert {"tombstone_slot", "duplicate_ids"} <= codes, codes
    assert first_dead >= 0


def test_a_sync_killed_at_every_write_resumes_to_the_same_live_state(tmp_path: Path) -> None:
    reference = CountingStorage(LocalStore(tmp_path / "reference"))
    run_build(reference.inner)
    before = reference.writes
    run_sync(reference)
    writes = reference.writes - before
    assert writes >= 15
    expected = _expected_live()
    for when in ("before", "after"):
        for n in range(1, writes + 1):
            store = LocalStore(tmp_path / f"{when}-{n}")
            run_build(store)
            with pytest.raises(InjectedCrash):
                run_sync(store, crash_after_writes=n, crash_when=when, run_id="dies")
            run_sync(store, run_id="resumes")
            got = _live_state(store)
            assert set(got) == set(expected), f"kill at write {n} ({when})"
            for pid, vector in expected.items():
                np.testing.assert_allclose(got[pid], vector, atol=1e-6)
            report = check_store(store)
            assert report.ok, f"kill at write {n} ({when}):\n{report.to_markdown()}"
            # Exactly once: no change was applied twice (no extra dead slot).
            assert report.kinds["color"].dead == 8, f"kill at write {n} ({when})"


def test_a_store_of_format_3_is_resumed_and_synced(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run_build(store)
    path = store.root / "progress.json"
    progress = json.loads(path.read_text())
    progress["format_version"] = 3
    del progress["sync"]
    for kind in progress["kinds"].values():
        del kind["dead"], kind["tombstones"], kind["recent_dead"]
    path.write_text(json.dumps(progress))
    assert read_progress(store).kinds["color"].dead == 0  # type: ignore[union-attr]
    run_sync(store)
    assert read_progress(store).format_version == 4  # type: ignore[union-attr]
    assert set(_live_state(store)) == set(_expected_live())


def test_a_deleted_product_is_no_longer_listed_as_failed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run_build(store)
    failed = [f.id for f in list_failures(store)]
    assert {18, 27, 36} <= set(failed)  # every ninth product failed to embed
    progress = read_progress(store)
    assert progress is not None and progress.failures.chunks  # some records sit in rolled chunks
    writer = IndexWriter.open(store, SMALL, run_id="deletes", rollup=SMALL_ROLLUP)
    writer.delete([18, 36, 3])
    writer.commit()
    writer.finish()
    assert [f.id for f in list_failures(store)] == [i for i in failed if i not in (18, 36)]
    report = check_store(store)
    assert report.ok, report.to_markdown()
