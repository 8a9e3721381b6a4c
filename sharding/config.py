"""What a build promises to keep constant across resumes, and how progress.json rolls records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sharding import names
from sharding.codec import shard_capacity
from sharding.errors import StoreConfigError


@dataclass(frozen=True)
class BuildConfig:
    """The embedder, model and dimensions a store holds, and the shard limits it seals at.

    `dims` names the kinds this run builds, in the caller's order (sharding keeps no list of
    kinds; names are checked by names.KIND_PATTERN). `model_digest` identifies the weights
    (e.g. a digest of the checkpoint files): when both the store and the run have one, it
    decides whether the model is the same, whatever `model` (a path or hub id) is spelled like.
    """

    embedder: str
    model: str
    dims: Mapping[str, int]
    shard_max_vectors: int = 1000
    shard_max_bytes: int = 45_000_000
    model_digest: str | None = None

    def __post_init__(self) -> None:
        if not self.dims:
            raise ValueError("BuildConfig.dims names no kind to build")
        for kind, dim in self.dims.items():
            names.check_kind(kind)
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"bad dimension for kind {kind!r}: {dim}")
            if self.shard_max_vectors < 1:
                raise ValueError(f"shard_max_vectors {self.shard_max_vectors} is below 1")
            if self.capacity(kind) < 1:
                raise StoreConfigError(  # a setting the user chose: exit 2 at the CLI
                    f"shard_max_bytes {self.shard_max_bytes} is below one {dim}-d vector"
                )

    def capacity(self, kind: str) -> int:
        return shard_capacity(self.dims[kind], self.shard_max_vectors, self.shard_max_bytes)


@dataclass(frozen=True)
class RollupLimits:
    """How many records progress.json keeps inline before rolling them into immutable objects."""

    segment_shards: int = 100
    failure_chunk: int = 200
    tombstone_chunk: int = 1000  # dead slot positions inline before they roll into a chunk
    message_chars: int = 500
