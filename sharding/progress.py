"""progress.json, the commit point, as typed models; manifest segments and failure chunks too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from sharding.codec import ProductId
from sharding.digests import Digests

# 2 adds the XXH3-128 checksums of shard objects; 3 adds the model's weight digest and each
# kind's largest indexed id (max_id); 4 adds per-kind tombstones (dead slots: a replaced or
# deleted product's old vector). Stores of formats 1 to 3 are read and resumed (format 1
# records are verified by sha256; a missing max_id is computed once from the id maps; no
# tombstones means every slot is live) and are written as format 4 from the next commit on.
# See docs/store-format.md.
FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)
UNKNOWN_BRAND = "(none)"
BRAND_CHARS = 200  # longer brands are cut to this many characters in vectors_per_brand


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardRecord(_Model):
    """One committed shard: its two objects, vector count and two digests of each object.

    sha256 is the contract for outside tools (docs/store-format.md); readers verify the XXH3-128
    checksum, 15 times faster, when the record has one (format 1 records have only sha256).
    """

    number: int
    name: str
    id_map: str
    vectors: int
    sha256: str
    id_map_sha256: str
    xxh3: str | None = None
    id_map_xxh3: str | None = None
    sealed: bool

    @property
    def index_digests(self) -> Digests:
        return Digests(self.sha256, self.xxh3)

    @property
    def id_map_digests(self) -> Digests:
        return Digests(self.id_map_sha256, self.id_map_xxh3)


class _ObjectRef(_Model):
    """A reference progress.json keeps to an immutable object: its name and sha256."""

    name: str
    sha256: str

    @property
    def digests(self) -> Digests:
        return Digests(self.sha256)


class SegmentRef(_ObjectRef):
    """An immutable manifest segment that holds a fixed run of sealed shard records."""

    shards: int
    vectors: int
    first_shard: int
    last_shard: int


class ManifestSegment(_Model):
    """Content of manifest_{kind}_{NNNNN}.json."""

    format_version: int = FORMAT_VERSION
    kind: str
    shards: list[ShardRecord]


class TombstoneRef(_ObjectRef):
    """An immutable tombstone chunk: a fixed run of dead slot positions of one kind (format 4)."""

    count: int


class TombstoneChunk(_Model):
    """Content of tombstones_{kind}_{NNNNN}.json: slot positions, in the order they died."""

    format_version: int = FORMAT_VERSION
    kind: str
    slots: list[int]


class FailureRecord(_Model):
    """A product that could not be indexed, for the kinds named, with the reason."""

    id: ProductId
    reason: str
    message: str
    kinds: list[str]
    run_id: str


class FailureChunkRef(_ObjectRef):
    """An immutable chunk of failure records."""

    count: int


class FailureChunk(_Model):
    """Content of failed_{NNNNN}.json."""

    format_version: int = FORMAT_VERSION
    failures: list[FailureRecord]


class FailureLog(_Model):
    """Durable failures: full chunks by reference, the most recent ones inline (bounded)."""

    total: int = 0
    chunks: list[FailureChunkRef] = Field(default_factory=list)
    recent: list[FailureRecord] = Field(default_factory=list)


class KindProgress(_Model):
    """Committed state of one kind; `shards` holds only records not yet rolled into segments."""

    dim: int
    cursor: ProductId | None = None
    # The largest id indexed (format 3; None with vectors: a format 1/2 kind, computed on resume).
    max_id: ProductId | None = None
    total_vectors: int = 0
    vectors_per_brand: dict[str, int] = Field(default_factory=dict)
    segments: list[SegmentRef] = Field(default_factory=list)
    shards: list[ShardRecord] = Field(default_factory=list)
    # Format 4: dead slots (positions in the kind's shard order, from 0) that readers skip.
    # `dead` = sum of the chunks' counts + len(recent_dead); absent (formats 1-3): none dead.
    dead: int = 0
    tombstones: list[TombstoneRef] = Field(default_factory=list)
    recent_dead: list[int] = Field(default_factory=list)
    # How many times the kind was compacted (sharding.compact); its layout objects are named
    # with it (names.shard_index(kind, n, compaction)). Left out of the file while 0, so stores
    # never compacted read as before.
    compaction: int = Field(default=0, ge=0)

    @model_serializer(mode="wrap")
    def _leave_out_no_compaction(self, handler: Any) -> Any:
        data = handler(self)
        if self.compaction == 0 and isinstance(data, dict):
            data.pop("compaction", None)
        return data

    @property
    def live_vectors(self) -> int:
        return self.total_vectors - self.dead

    def open_shard(self) -> ShardRecord | None:
        last = self.shards[-1] if self.shards else None
        return last if last is not None and not last.sealed else None

    def shard_count(self) -> int:
        """Committed shards of this kind, rolled into segments or not."""
        return sum(segment.shards for segment in self.segments) + len(self.shards)

    def last_shard_number(self) -> int:
        numbers = [s.number for s in self.shards] + [g.last_shard for g in self.segments]
        return max(numbers, default=0)


class AnnList(_Model):
    """One sealed shard's inverted-list entries in an approximate index (sharding.ann): the
    object `ann_{kind}_g{GGG}_shard_{NNNNN}.ivf`, written once, never rewritten."""

    shard: int
    name: str
    sha256: str
    vectors: int  # entries in the object: the shard's slots that were live when it was added


class AnnSegmentRef(_ObjectRef):
    """An immutable object `ann_{kind}_g{GGG}_lists_{NNNNN}.json` holding a fixed run of list
    references (AnnListSegment), so progress.json does not grow with the index."""

    lists: int
    vectors: int
    first_shard: int
    last_shard: int


class AnnListSegment(_Model):
    """Content of ann_{kind}_g{GGG}_lists_{NNNNN}.json."""

    format_version: int = FORMAT_VERSION
    kind: str
    generation: int
    lists: list[AnnList]


class AnnState(_Model):
    """A kind's approximate (IVF) index, absent: none. Sealed shards 1..`shards` are in the
    lists (their slots live at the time each was added); later slots are searched exactly.
    See docs/store-format.md, section 3 (ann)."""

    generation: int
    type: str  # "IVFFlat" or "IVFPQ"
    nlist: int
    nprobe: int
    pq_m: int = 0  # PQ sub-quantizers (IVFPQ), 0 for IVFFlat
    trained: str  # ann_{kind}_g{GGG}_trained.index: the empty trained index
    trained_sha256: str
    trained_on: int  # live vectors of the kind when this generation was trained
    train_mean_distance: float  # mean squared distance of the sample to its nearest centroid
    shards: int = 0  # sealed shards 1..shards are in the lists
    vectors: int = 0  # entries over all lists (segments' and inline)
    # Older list references rolled into immutable segments (oldest first), then the newest ones
    # inline (fewer than sharding.ann.SEGMENT_LISTS after a commit).
    segments: list[AnnSegmentRef] = Field(default_factory=list)
    lists: list[AnnList] = Field(default_factory=list)
    recall_at_10: float | None = None  # measured at the last commit that changed the lists
    recall_queries: int = 0
    serving: bool = False  # recall_at_10 >= the build's minimum: search uses it
    # IVFPQ: candidates re-ranked exactly per result asked, tuned with nprobe (left out at 10).
    rerank: int = 10

    @model_serializer(mode="wrap")
    def _leave_out_no_segments(self, handler: Any) -> Any:
        # Left out while empty: stores whose lists never rolled read as before segments existed.
        data = handler(self)
        if isinstance(data, dict):
            if not self.segments:
                data.pop("segments", None)
            if self.rerank == 10:
                data.pop("rerank", None)
        return data


class SyncPosition(_Model):
    """How far the catalog's changes have been applied (format 4): the keyset position
    (updated_at, id) of the last changed row a commit covers. A sync reads the rows changed
    after it; committed with the replacements and deletions it covers, so each change is
    applied exactly once."""

    updated_at: str
    id: ProductId | None = None
    #: The overlap window (late-committing transactions, application.sync): the next sync
    #: re-reads the rows with updated_at > window_from (None: none below the position) and
    #: applies those not in `seen`: per updated_at in the window, the digests of the rows read
    #: at it (id and image_url). Both left out of the file when empty.
    window_from: str | None = None
    seen: dict[str, list[str]] = Field(default_factory=dict)


class Progress(_Model):
    """The whole committed state; written last, so whatever it names is complete."""

    format_version: int = FORMAT_VERSION
    commit_seq: int = 0
    run_id: str
    written_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    embedder: str
    model: str
    model_digest: str | None = None  # a digest of the weights (format 3); None: not known
    shard_max_vectors: int
    shard_max_bytes: int
    kinds: dict[str, KindProgress] = Field(default_factory=dict)
    failures: FailureLog = Field(default_factory=FailureLog)
    sync: SyncPosition | None = None  # format 4; None: no catalog sync has run
    # Approximate indexes per kind (sharding.ann; optional in format 4, absent: none).
    ann: dict[str, AnnState] = Field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return {kind: kp.dim for kind, kp in self.kinds.items()}

    def cursor(self, kind: str) -> ProductId | None:
        kp = self.kinds.get(kind)
        return kp.cursor if kp else None

    def total_vectors(self, kind: str) -> int:
        kp = self.kinds.get(kind)
        return kp.total_vectors if kp else 0

    def to_bytes(self) -> bytes:
        # No ann: the field is left out, so readers from before it was added still read the store.
        exclude: dict[str, Any] = {} if self.ann else {"ann": True}
        if self.sync is not None and self.sync.window_from is None and not self.sync.seen:
            exclude["sync"] = {"window_from", "seen"}  # readers from before the window read it
        return self.model_dump_json(exclude=exclude or None).encode()


class LastCommit(_Model):
    """Content of last_commit.json, written after each progress.json: which commit that was.

    A progress.json whose commit_seq is below it was put back from an older copy.
    """

    commit_seq: int
    run_id: str
    progress_sha256: str
