"""LiveSlots: the id -> live slot map a replacement or deletion looks up, for every id type."""

from __future__ import annotations

import numpy as np
import pytest

from sharding import BuildConfig, EmbeddedBatch, IndexWriter, MemoryStore, load_index
from sharding.codec import ProductId
from sharding.live import LiveSlots


@pytest.mark.parametrize(
    "ids",
    [
        [5, 3, 9, 3, 1],  # integers, 3 replaced once (slot 1 dead)
        ["b", "a", "c", "a", "z"],
        [2**64 - 1, 7, 2**63, 7, -(2**63)],  # past int64: the dict path
    ],
)
def test_each_live_id_maps_to_its_one_live_slot(ids: list[ProductId]) -> None:
    live = LiveSlots(ids, dead=[1])
    assert live.ids() == set(ids)
    assert ids[1] in live and live.pop(ids[1]) == 3  # the later slot is the live one
    assert ids[1] not in live and live.pop(ids[1]) is None
    live.add(ids[1], 5)
    assert live.pop(ids[1]) == 5
    assert live.pop(ids[0]) == 0 and live.ids() == {ids[2], ids[4]}
    assert "nope" not in live and 12345 not in live and live.pop(3.5) is None  # type: ignore[arg-type]


def test_string_ids_are_replaced_and_deleted_like_integers() -> None:
    store = MemoryStore()
    config = BuildConfig("t", "t", {"color": 2}, shard_max_vectors=3)
    ids: list[ProductId] = [f"p{i:03d}" for i in range(10)]
    rows = np.tile(np.array([1, 0], np.float32), (10, 1))
    writer = IndexWriter.open(store, config, run_id="a")
    writer.add_batch(EmbeddedBatch(ids, [None] * 10, {"color": rows}))
    writer.commit()
    new = np.array([[0, 1]], np.float32)
    writer.add_batch(EmbeddedBatch(["p004"], [None], {"color": new}, changed=True))
    writer.delete(["p001", "p999"])
    writer.finish()
    index = load_index(store, "color")
    assert sorted(index.ids) == sorted(set(ids) - {"p001"})  # type: ignore[type-var]
    np.testing.assert_array_equal(index.vector("p004"), new[0])
    assert index.dead_slots == 2
