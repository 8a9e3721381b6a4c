"""Product ids stay exact (or are refused) and kind names are the caller's, checked by pattern."""

from __future__ import annotations

from dataclasses import dataclass
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
    names,
)
from sharding.codec import decode_ids, encode_ids
from sharding.errors import ProductIdRefused, StateError
from tests.sharding.builds import unit_vector

CONFIG = BuildConfig("h", "m", {"color": 4}, shard_max_vectors=10)


def _batch(ids: list, last_id: object = None, kind: str = "color") -> EmbeddedBatch:
    vectors = {kind: np.stack([unit_vector(i, 4) for i in ids])}
    return EmbeddedBatch(ids, [None] * len(ids), vectors, [], last_id=last_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [2**70, 2**64, -(2**63) - 1, True, 10**5000],
    ids=["2**70", "2**64", "-2**63-1", "True", "10**5000"],
)
def test_ids_outside_int64_uint64_are_refused_at_the_writer(tmp_path: Path, bad: int) -> None:
    writer = IndexWriter.open(LocalStore(tmp_path), CONFIG, run_id="r")
    with pytest.raises(ProductIdRefused, match="product id") as refused:
        writer.add_batch(_batch([1, bad]))
    assert isinstance(refused.value, ValueError) and len(str(refused.value)) < 200
    assert writer.cursor("color") is None and list(tmp_path.glob("*")) == []


def test_a_refused_id_in_failures_or_last_id_is_refused_too(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Failure:
        id: object
        reason: str
        message: str

    writer = IndexWriter.open(LocalStore(tmp_path), CONFIG, run_id="r")
    batch = _batch([1])
    batch.failures = [Failure(2**70, "fetch_error", "gone")]  # type: ignore[list-item]
    with pytest.raises(ProductIdRefused):
        writer.add_batch(batch)
    with pytest.raises(ProductIdRefused):
        writer.add_batch(_batch([1], last_id=2**65))


def test_edge_ids_round_trip_exactly(tmp_path: Path) -> None:
    edges = [-(2**63), 2**63 - 1, 2**64 - 1]
    store = LocalStore(tmp_path)
    writer = IndexWriter.open(store, CONFIG, run_id="r")
    writer.add_batch(_batch(edges, last_id=2**64 - 1))
    writer.finish()
    ids = load_index(store, "color").ids
    assert ids == edges and all(type(i) is int for i in ids)
    assert check_store(store).ok


def test_an_id_map_holding_a_huge_int_decodes_exactly() -> None:
    ids = decode_ids(encode_ids([1, 2**70, "a"]))
    assert ids == [1, 2**70, "a"] and type(ids[1]) is int


@pytest.mark.parametrize("kind", ["texture", "v2", "clip_b32", "a"])
def test_any_kind_matching_the_name_pattern_builds(tmp_path: Path, kind: str) -> None:
    store = LocalStore(tmp_path)
    config = BuildConfig("h", "m", {kind: 4}, shard_max_vectors=2)
    writer = IndexWriter.open(store, config, run_id="r")
    writer.add_batch(_batch([1, 2, 3], kind=kind))
    writer.finish()
    assert load_index(store, kind).ids == [1, 2, 3]
    assert check_store(store).ok and check_store(store).problems == []


@pytest.mark.parametrize("kind", ["", "Color", "2d", "a-b", "x" * 33, "color_shard_00001", "é"])
def test_kind_names_outside_the_pattern_are_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        BuildConfig("h", "m", {kind: 4})


def test_sharding_holds_no_kinds_list() -> None:
    assert not hasattr(names, "KINDS")
    for kind in ("color", "v2", "clip_b32"):
        assert names.parse(names.full_id_map(kind)) == names.ParsedName("full_id_map", kind, None)
        assert names.parse(names.shard_index(kind, 3)) == names.ParsedName("index", kind, 3)


def test_a_catalog_whose_id_type_changed_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    writer = IndexWriter.open(store, CONFIG, run_id="r")
    writer.add_batch(_batch([1, 2]))
    writer.finish()
    writer = IndexWriter.open(store, CONFIG, run_id="r2")
    with pytest.raises(StateError, match="the store's ids are ints, this batch's are strs"):
        writer.add_batch(_batch(["a", "b"]))
    with pytest.raises(ValueError, match="mix int and string"):
        writer.add_batch(_batch([3, "b"]))
    assert writer.cursor("color") == 2
