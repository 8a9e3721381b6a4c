"""Dead slots (format 4): a replaced or deleted product's old vector stays in its shard, dead.

Sealed shards are never rewritten, so a vector that stops being live is not removed: its slot
(its position in the kind's shard order, counted from 0) is recorded as dead. progress.json keeps
the most recent dead slots inline (`recent_dead`) and rolls every `RollupLimits.tombstone_chunk`
of them into an immutable `tombstones_{kind}_{NNNNN}.json`, named with its sha256 like the
manifest segments, so a checkpoint's bytes do not grow with the number of dead slots. Readers
(sharding.loader, sharding.scan) skip dead slots; `check` verifies them. See
docs/store-format.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from sharding import names
from sharding.codec import sha256_hex
from sharding.progress import KindProgress, TombstoneChunk, TombstoneRef
from sharding.state import get_verified
from sharding.storage import Storage


def dead_slots(storage: Storage, kp: KindProgress) -> list[int]:
    """Every dead slot of a kind: its chunks' positions (each verified), then the recent ones."""
    slots: list[int] = []
    for ref in kp.tombstones:
        chunk = TombstoneChunk.model_validate_json(get_verified(storage, ref.name, ref.digests))
        slots.extend(chunk.slots)
    return slots + list(kp.recent_dead)


def live_mask(total: int, dead: Iterable[int]) -> np.ndarray:
    """A boolean mask over a kind's `total` slots, False at every dead one."""
    mask = np.ones(total, dtype=bool)
    positions = np.fromiter(dead, dtype=np.int64)
    if len(positions):
        mask[positions] = False
    return mask


@dataclass
class TombstoneJournal:
    """One kind's working copy of its dead slots (committed when progress.json is)."""

    kind: str
    chunks: list[TombstoneRef] = field(default_factory=list)
    recent: list[int] = field(default_factory=list)
    dead: int = 0
    compaction: int = 0  # the kind's compaction, which its chunk names carry

    @classmethod
    def from_committed(cls, kind: str, kp: KindProgress) -> TombstoneJournal:
        return cls(kind, list(kp.tombstones), list(kp.recent_dead), kp.dead, kp.compaction)

    def kill(self, slot: int) -> None:
        self.recent.append(slot)
        self.dead += 1

    def must_roll(self, size: int) -> bool:
        return len(self.recent) >= size

    def roll(self, storage: Storage, size: int) -> None:
        """Write full chunks of recent dead slots as immutable objects, oldest first."""
        while len(self.recent) >= size:
            slots = self.recent[:size]
            name = names.tombstone_chunk(self.kind, len(self.chunks) + 1, self.compaction)
            data = TombstoneChunk(kind=self.kind, slots=slots).model_dump_json().encode()
            storage.put(name, data, immutable=True)
            self.chunks.append(TombstoneRef(name=name, sha256=sha256_hex(data), count=size))
            self.recent = self.recent[size:]
