"""load_index: parallel verified download, cache, search equal to one merged IndexFlatIP."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from sharding import LocalStore, RollupLimits, StateError, load_index
from sharding.storage import CountingStorage
from tests.sharding.builds import Catalog, run_build, unit_vector


@pytest.fixture
def built(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    run_build(store)
    return store


def test_search_equals_one_flat_index_over_all_vectors(built: LocalStore) -> None:
    index = load_index(built, "color", workers=4)
    ids = Catalog().indexed()
    assert index.ids == ids and index.ntotal == len(ids) and index.dim == 4
    flat = faiss.IndexFlatIP(4)
    flat.add(np.stack([unit_vector(i, 4) for i in ids]))
    queries = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
    scores, positions = flat.search(queries, 5)
    hits = index.search(queries, 5)
    assert [[h.id for h in row] for row in hits] == [[ids[p] for p in row] for row in positions]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], scores, rtol=1e-6)
    assert index.search(unit_vector(11, 4), 1)[0][0].id == 11
    np.testing.assert_allclose(index.vector(11), unit_vector(11, 4), atol=1e-7)


def test_cache_is_reused_when_sha_matches(built: LocalStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_index(built, "combined", cache_dir=cache)
    counting = CountingStorage(built)
    reads: list[str] = []
    counting.get = lambda name: reads.append(name) or built.get(name)  # type: ignore[method-assign]
    again = load_index(counting, "combined", cache_dir=cache)
    assert again.ids == Catalog().indexed()
    assert all(not n.startswith(("clip_", "id_map_combined_shard")) for n in reads)


def test_tampered_shard_is_refused_naming_the_object(built: LocalStore) -> None:
    path = built.root / "clip_color_shard_00002.index"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match=r"clip_color_shard_00002\.index"):
        load_index(built, "color")


def test_a_changed_cache_file_is_caught_unless_the_cache_is_trusted(
    built: LocalStore, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    clean = load_index(built, "color", cache_dir=cache)
    cached = sorted(p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 100)
    assert cached, "the first load fills the cache"
    for path in cached:  # flip one byte inside every cached object's payload
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    trusted = load_index(built, "color", cache_dir=cache, trust_cache=True)
    assert not np.array_equal(trusted.vectors, clean.vectors)  # documented: trusted means unhashed
    verified = load_index(built, "color", cache_dir=cache)  # hashed: refetched from the store
    np.testing.assert_array_equal(verified.vectors, clean.vectors)
    assert verified.ids == clean.ids


def test_loaded_vectors_equal_faiss_own_decoding_of_every_shard(built: LocalStore) -> None:
    index = load_index(built, "color")
    decoded = [
        faiss.read_index(str(path)) for path in sorted(built.root.glob("clip_color_shard_*.index"))
    ]
    expected = np.vstack([d.reconstruct_n(0, d.ntotal) for d in decoded if d.ntotal])
    np.testing.assert_array_equal(index.vectors, expected)


class _NoBytesForIndexes(LocalStore):
    """A local store that fails the test if an index object is read into a bytes copy."""

    def get(self, name: str) -> bytes:
        assert not name.startswith("clip_"), f"{name} was copied through get()"
        return super().get(name)


def test_a_local_store_is_read_straight_into_the_result_array(built: LocalStore) -> None:
    direct = load_index(_NoBytesForIndexes(built.root), "color")
    np.testing.assert_array_equal(
        direct.vectors, load_index(CountingStorage(built), "color").vectors
    )


def test_an_uncommitted_tail_on_the_open_shard_is_left_out(built: LocalStore) -> None:
    committed = load_index(built, "color")
    open_shard = next(r for r in committed.progress.kinds["color"].shards if not r.sealed)
    # What a run that died between writing the open shard and progress.json leaves behind:
    path = built.root / open_shard.name
    index = faiss.read_index(str(path))
    index.add(unit_vector(999, 4)[None, :])
    faiss.write_index(index, str(path))
    (built.root / open_shard.id_map).write_text(
        json.dumps([*committed.ids[-index.ntotal + 1 :], 999])
    )
    again = load_index(built, "color")
    assert again.ids == committed.ids
    np.testing.assert_array_equal(again.vectors, committed.vectors)


def _as_format_1(store: LocalStore) -> None:
    """Rewrite progress.json as the first release wrote it: sha256 only, format 1."""
    progress = json.loads((store.root / "progress.json").read_text())
    assert not any(kind["segments"] for kind in progress["kinds"].values()), "records all inline"
    progress["format_version"] = 1
    del progress["model_digest"]
    for kind in progress["kinds"].values():
        del kind["max_id"], kind["dead"], kind["tombstones"], kind["recent_dead"]
        for record in kind["shards"]:
            del record["xxh3"], record["id_map_xxh3"]
    (store.root / "progress.json").write_text(json.dumps(progress))


def test_a_format_1_store_is_verified_by_sha256_and_resumed_as_format_4(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    inline = RollupLimits(segment_shards=100, failure_chunk=100)
    run_build(store, catalog=Catalog(n=30), rollup=inline)
    expected = load_index(store, "color")
    _as_format_1(store)
    old = load_index(store, "color")
    assert old.progress.format_version == 1 and old.ids == expected.ids
    np.testing.assert_array_equal(old.vectors, expected.vectors)

    shard = store.root / "clip_color_shard_00001.index"
    pristine = shard.read_bytes()
    shard.write_bytes(pristine[:-1] + bytes([pristine[-1] ^ 1]))
    with pytest.raises(StateError, match=r"clip_color_shard_00001\.index"):
        load_index(store, "color")
    shard.write_bytes(pristine)

    run_build(store, catalog=Catalog(n=47), rollup=inline, run_id="resumed")
    resumed = load_index(store, "color")
    assert resumed.progress.format_version == 4 and resumed.ids == Catalog(n=47).indexed()
    records = resumed.progress.kinds["color"].shards
    assert records[0].xxh3 is None and records[-1].xxh3 is not None
    assert resumed.progress.kinds["color"].max_id == 47  # computed once from the id maps


def test_a_format_2_store_with_its_cursor_set_back_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    run_build(store, catalog=Catalog(n=30))
    progress = json.loads((store.root / "progress.json").read_text())
    progress["format_version"] = 2  # as format 2 wrote it: no max_id, no model digest
    del progress["model_digest"]
    for kind in progress["kinds"].values():
        del kind["max_id"], kind["dead"], kind["tombstones"], kind["recent_dead"]
    progress["kinds"]["color"]["cursor"] = 12
    (store.root / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(StateError, match=r"color: ids up to 30 are indexed but the cursor is 12"):
        run_build(store, catalog=Catalog(n=47), run_id="resumed")


def test_a_store_of_a_newer_format_is_refused_by_name(built: LocalStore) -> None:
    progress = json.loads((built.root / "progress.json").read_text())
    progress["format_version"] = 99
    (built.root / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(StateError, match="format 99; this faiss-builder reads formats 1, 2"):
        load_index(built, "color")


def test_a_newer_format_with_fields_this_reader_lacks_is_refused_by_its_version(
    built: LocalStore,
) -> None:
    progress = json.loads((built.root / "progress.json").read_text())
    progress.update(format_version=99, a_field_of_format_99={"shards": []})
    (built.root / "progress.json").write_text(json.dumps(progress))
    with pytest.raises(StateError, match="has format 99; this faiss-builder reads formats"):
        load_index(built, "color")


def test_a_committed_empty_shard_loads_as_no_vectors(tmp_path: Path) -> None:
    from sharding.codec import encode_ids, encode_index, sha256_hex, xxh3_hex
    from sharding.loader import _load_shard_into, _ShardSource
    from sharding.progress import ShardRecord

    store = LocalStore(tmp_path)
    index, ids = encode_index(np.zeros((0, 4), np.float32), 4), encode_ids([])
    store.put("clip_color_shard_00001.index", index)
    store.put("id_map_color_shard_00001.json", ids)
    record = ShardRecord(
        number=1,
        name="clip_color_shard_00001.index",
        id_map="id_map_color_shard_00001.json",
        vectors=0,
        sha256=sha256_hex(index),
        id_map_sha256=sha256_hex(ids),
        xxh3=xxh3_hex(index),
        id_map_xxh3=xxh3_hex(ids),
        sealed=False,
    )
    out = np.empty((3, 4), np.float32)[3:]
    assert _load_shard_into(_ShardSource(store, None, False), record, 4, out) == []
