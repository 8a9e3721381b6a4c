"""Crash-safe sharded FAISS store: writer, commit protocol, storage backends, loader, checks.

Layout (flat, under the store prefix; names are a contract, see DESIGN.md §2):

- ``clip_{kind}_shard_{NNNNN}.index`` / ``id_map_{kind}_shard_{NNNNN}.json``: one shard and its
  ids. Sealed shards are never rewritten; only the open (last) shard of a kind changes.
- ``manifest_{kind}_{NNNNN}.json``: an immutable segment of ``RollupLimits.segment_shards``
  (default 100) sealed shard records, written once when full.
- ``failed_{NNNNN}.json``: an immutable chunk of ``RollupLimits.failure_chunk`` failure records.
- ``id_map_{kind}.json``: the seed-compatible full id map, refreshed by ``IndexWriter.finish``.
- ``progress.json``: the only commit point, written last. It names segments and failure chunks
  by name + sha256 + counts and holds inline only the sealed records not yet rolled, the open
  shard and the recent failures, so a checkpoint writes O(shard size), not O(vectors indexed).
- ``lease.json``: which run may commit, until when.

A reader trusts nothing progress.json does not name: an open shard that a crashed run
overwrote is truncated back to its committed count (and must then match the committed checksum:
XXH3-128, or sha256 in format 1 records); higher-numbered leftovers are ignored and later
overwritten or removed.
"""

from sharding.checks import AlignmentReport, Problem, check_store
from sharding.codec import ProductId
from sharding.errors import (
    InjectedCrash,
    LeaseHeld,
    LeaseLost,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    ResumeRefused,
    StateError,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from sharding.lease import StoreLease
from sharding.loader import Hit, ShardedIndex, load_index
from sharding.local_store import LocalStore
from sharding.progress import FailureRecord, KindProgress, Progress, ShardRecord
from sharding.state import list_failures, read_progress
from sharding.storage import CountingStorage, MemoryStore, Storage
from sharding.writer import BuildConfig, EmbeddedBatch, FailedProduct, IndexWriter, RollupLimits

__all__ = [
    "AlignmentReport",
    "BuildConfig",
    "CountingStorage",
    "EmbeddedBatch",
    "FailedProduct",
    "FailureRecord",
    "Hit",
    "IndexWriter",
    "InjectedCrash",
    "KindProgress",
    "LeaseHeld",
    "LeaseLost",
    "LocalStore",
    "MemoryStore",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectTooLarge",
    "Problem",
    "ProductId",
    "Progress",
    "ResumeRefused",
    "RollupLimits",
    "ShardRecord",
    "ShardedIndex",
    "StateError",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "StoreLease",
    "check_store",
    "list_failures",
    "load_index",
    "read_progress",
]
