"""Opening a store for a build: inconsistent or rolled-back commits are refused before any write,
the model is identified by its weights, a smaller shard limit applies from the open shard on, and
opening reads only what the run builds on (progress.json and the open shards), not the whole store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sharding import (
    BuildConfig,
    EmbeddedBatch,
    IndexWriter,
    LocalStore,
    ResumeRefused,
    RollupLimits,
    StateError,
    check_store,
    load_index,
    read_progress,
)
from sharding.codec import predicted_index_bytes
from sharding.storage import PassThroughStorage, Storage
from tests.sharding.builds import SMALL, Catalog, run_build, unit_vector


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _edit_progress(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "progress.json"
    progress = json.loads(path.read_text())
    edit(progress)
    path.write_text(json.dumps(progress))


def _set_cursor_back(progress: dict) -> None:
    progress["kinds"]["color"]["cursor"] = 20


def _bump_total(progress: dict) -> None:
    progress["kinds"]["color"]["total_vectors"] += 1


def _shrink_a_sealed_record(progress: dict) -> None:
    record = next(r for r in progress["kinds"]["color"]["shards"] if r["sealed"])
    record["vectors"] -= 1


def _shrink_a_sealed_record_and_the_totals(progress: dict) -> None:
    """A consistent-looking edit: only the sealed id map's length can tell."""
    kind = progress["kinds"]["color"]
    _shrink_a_sealed_record(progress)
    kind["total_vectors"] -= 1
    brand = next(iter(kind["vectors_per_brand"]))
    kind["vectors_per_brand"][brand] -= 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set_cursor_back, "cursor"),
        (_bump_total, "total_vectors"),
        (_shrink_a_sealed_record, "total_vectors"),
        (
            _shrink_a_sealed_record_and_the_totals,
            r"id_map_color_shard_\d+\.json: 10 ids, 9 committed",
        ),
    ],
)
def test_an_inconsistent_commit_is_refused_before_the_first_write(
    tmp_path: Path, edit: Callable[[dict], None], needle: str
) -> None:
    store = LocalStore(tmp_path)
    run_build(store, rollup=RollupLimits(segment_shards=100, failure_chunk=3))  # records inline
    _edit_progress(tmp_path, edit)
    before = _hashes(tmp_path)
    with pytest.raises(StateError, match=needle) as refused:
        IndexWriter.open(store, SMALL, run_id="second")
    assert "color" in str(refused.value)
    assert not isinstance(refused.value, ResumeRefused)  # damage, not a settings mismatch
    assert _hashes(tmp_path) == before, "a refused open wrote nothing"
    assert not check_store(store).ok, "check reports the same damage"


class _ReadCounter(PassThroughStorage):
    """A pass-through store that counts the bytes each get() returns (what opening reads)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.read: dict[str, int] = {}

    def get(self, name: str) -> bytes:
        data = self.inner.get(name)
        self.read[name] = self.read.get(name, 0) + len(data)
        return data


def test_opening_reads_no_sealed_vector_file(tmp_path: Path) -> None:
    """Issue 13.22: what a build reads on open is bounded by the open shards + metadata (the
    manifest segments and the sealed id maps `finish` rebuilds the full id map from)."""
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=305, fail_every=50))  # 29 sealed shards per kind
    progress = read_progress(store)
    assert progress is not None
    open_objects = {
        name
        for kp in progress.kinds.values()
        for record in kp.shards
        if not record.sealed
        for name in (record.name, record.id_map)
    }
    assert len(open_objects) == 4  # one open shard (index + id map) per kind
    counter = _ReadCounter(store)
    IndexWriter.open(counter, SMALL, run_id="next")
    sealed_vectors = {p.name for p in tmp_path.glob("clip_*_shard_*.index")} - open_objects
    assert len(sealed_vectors) == 58
    assert not sealed_vectors & set(counter.read), "a sealed vector file was read"
    assert not {n for n in counter.read if n.startswith("failed_")}, "no failure chunk read"
    metadata = {"progress.json", "last_commit.json", *open_objects}
    metadata |= {p.name for p in tmp_path.glob("id_map_*_shard_*.json")}
    metadata |= {p.name for p in tmp_path.glob("manifest_*.json")}
    assert set(counter.read) <= metadata
    bound = sum((tmp_path / name).stat().st_size for name in metadata)
    assert sum(counter.read.values()) <= bound


def test_a_missing_sealed_shard_or_a_short_sealed_id_map_is_refused_on_open(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    run_build(store)
    (tmp_path / "clip_color_shard_00002.index").unlink()
    before = _hashes(tmp_path)
    with pytest.raises(StateError, match=r"clip_color_shard_00002\.index .*missing"):
        IndexWriter.open(store, SMALL, run_id="next")
    assert _hashes(tmp_path) == before
    path = tmp_path / "id_map_combined_shard_00001.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-1]))
    before = _hashes(tmp_path)
    with pytest.raises(StateError, match=r"id_map_combined_shard_00001\.json"):
        IndexWriter.open(
            store,
            BuildConfig(SMALL.embedder, SMALL.model, {"combined": 6}, shard_max_vectors=10),
            run_id="next",
        )
    assert _hashes(tmp_path) == before


def test_a_rolled_back_progress_json_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    run_build(store, catalog=Catalog(n=20))
    older = (tmp_path / "progress.json").read_bytes()
    run_build(store, catalog=Catalog(n=47), run_id="later")
    (tmp_path / "progress.json").write_bytes(older)  # an older copy put back
    before = _hashes(tmp_path)
    with pytest.raises(StateError, match="rolled back"):
        IndexWriter.open(store, SMALL, run_id="third")
    assert _hashes(tmp_path) == before
    assert "rolled_back" in {p.code for p in check_store(store).problems}


def _batch(ids: list[int], dims: dict[str, int]) -> EmbeddedBatch:
    vectors = {k: np.stack([unit_vector(i, d) for i in ids]) for k, d in dims.items()}
    return EmbeddedBatch(ids, ["b"] * len(ids), vectors, [], last_id=ids[-1])


def test_a_smaller_shard_max_bytes_applies_from_the_open_shard_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    dims = {"color": 4}
    wide = BuildConfig("h", "m", dims, shard_max_vectors=100, shard_max_bytes=10_000)
    writer = IndexWriter.open(store, wide, run_id="first")
    writer.add_batch(_batch(list(range(1, 8)), dims))  # 7 vectors in the open shard
    writer.finish()
    narrow_limit = predicted_index_bytes(4, 5)  # room for 5 vectors
    narrow = replace(wide, shard_max_bytes=narrow_limit)
    writer = IndexWriter.open(store, narrow, run_id="second")
    writer.add_batch(_batch(list(range(8, 20)), dims))
    progress = writer.finish()
    records = progress.kinds["color"].shards
    assert [(r.vectors, r.sealed) for r in records] == [(7, True), (5, True), (5, True), (2, False)]
    for record in records[1:]:
        assert (tmp_path / record.name).stat().st_size <= narrow_limit
    assert progress.shard_max_bytes == narrow_limit
    assert load_index(store, "color").ids == list(range(1, 20))
    assert check_store(store).ok
    with pytest.raises(ResumeRefused, match="shard_max_bytes"):
        IndexWriter.open(store, wide, run_id="third")  # growing back is still refused


def test_the_model_is_identified_by_its_weight_digest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    relative = BuildConfig(
        "clip", "models/clip", {"color": 4}, shard_max_vectors=10, model_digest="sha256:aaaa"
    )
    writer = IndexWriter.open(store, relative, run_id="first")
    writer.add_batch(_batch([1, 2, 3], {"color": 4}))
    assert writer.finish().model_digest == "sha256:aaaa"
    absolute = replace(relative, model="/srv/models/clip")
    IndexWriter.open(store, absolute, run_id="same-weights").finish()  # spelling alone is fine
    replaced = replace(relative, model_digest="sha256:bbbb")
    before = _hashes(tmp_path)
    with pytest.raises(ResumeRefused, match="sha256:aaaa") as refused:
        IndexWriter.open(store, replaced, run_id="other-weights")
    assert "sha256:bbbb" in str(refused.value)
    assert _hashes(tmp_path) == before


def test_a_store_without_a_digest_accepts_one_and_records_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    older = BuildConfig("clip", "models/clip", {"color": 4}, shard_max_vectors=10)
    writer = IndexWriter.open(store, older, run_id="first")
    writer.add_batch(_batch([1, 2, 3], {"color": 4}))
    assert writer.finish().model_digest is None
    newer = replace(older, model_digest="sha256:aaaa")
    writer = IndexWriter.open(store, newer, run_id="second")
    writer.add_batch(_batch([4], {"color": 4}))
    assert writer.finish().model_digest == "sha256:aaaa"
    with pytest.raises(ResumeRefused, match="model"):
        IndexWriter.open(store, replace(older, model="other"), run_id="third")


def test_brands_are_bounded_in_progress_json(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    writer = IndexWriter.open(store, BuildConfig("h", "m", {"color": 4}), run_id="r")
    batch = _batch([1, 2], {"color": 4})
    batch.brands = ["x" * 4_000_000, "x" * 4_000_000 + "y"]
    writer.add_batch(batch)
    progress = writer.finish()
    brands = progress.kinds["color"].vectors_per_brand
    assert all(len(brand) <= 200 for brand in brands) and sum(brands.values()) == 2
    assert (tmp_path / "progress.json").stat().st_size < 10_000
