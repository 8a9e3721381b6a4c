"""load_index: parallel verified download, cache, search equal to one merged IndexFlatIP."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from sharding import LocalStore, StateError, load_index
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
