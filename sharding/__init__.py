"""Crash-safe sharded FAISS store: writer, commit protocol, storage backends, loader, checks.

Layout (flat, under the store prefix; names are a contract, see docs/store-format.md):

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
- ``last_commit.json``: written after each progress.json, so a progress.json put back from an
  older copy is refused (its commit_seq is below the marker's).

A reader trusts nothing progress.json does not name: an open shard that a crashed run
overwrote is truncated back to its committed count (and must then match the committed checksum:
XXH3-128, or sha256 in format 1 records; `check` audits both); higher-numbered leftovers are
ignored and later overwritten or removed.

Modules: writer (IndexWriter), config (BuildConfig, RollupLimits), failures (the failure log),
resume (what a build may build on), state (reading commits), digests (is this the committed
object?), loader, checks, codec, names, progress (the models), and the storage backends.
Sharding holds no list of kinds: callers name them (names.KIND_PATTERN).
"""

from sharding.checks import AlignmentReport, Problem, check_store
from sharding.codec import ProductId
from sharding.config import BuildConfig, RollupLimits
from sharding.digests import Digests, Match, match_committed
from sharding.errors import (
    InjectedCrash,
    LeaseHeld,
    LeaseLost,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    ProductIdRefused,
    ResumeRefused,
    StateError,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from sharding.failures import FailureLike, failed_ids
from sharding.lease import StoreLease
from sharding.loader import Hit, ShardedIndex, load_index
from sharding.local_store import LocalStore
from sharding.progress import FailureRecord, KindProgress, Progress, ShardRecord
from sharding.resume import check_resume
from sharding.state import list_failures, read_progress, require_progress
from sharding.storage import CountingStorage, MemoryStore, Storage
from sharding.writer import EmbeddedBatch, IndexWriter

__all__ = [
    "AlignmentReport",
    "BuildConfig",
    "CountingStorage",
    "Digests",
    "EmbeddedBatch",
    "FailureLike",
    "FailureRecord",
    "Hit",
    "IndexWriter",
    "InjectedCrash",
    "KindProgress",
    "LeaseHeld",
    "LeaseLost",
    "LocalStore",
    "Match",
    "MemoryStore",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectTooLarge",
    "Problem",
    "ProductId",
    "ProductIdRefused",
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
    "check_resume",
    "check_store",
    "failed_ids",
    "list_failures",
    "load_index",
    "match_committed",
    "read_progress",
    "require_progress",
]
