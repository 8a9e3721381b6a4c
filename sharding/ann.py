"""The approximate (IVF) index of a kind: trained once per generation, one list object per shard.

Layout (docs/store-format.md, section 3 "ann"), per kind and generation G:

- ``ann_{kind}_g{GGG}_trained.index``: the trained, empty IVF index (coarse quantizer, and the
  PQ codebook for IVFPQ), as ``faiss.write_index`` writes it. Written once per generation.
- ``ann_{kind}_g{GGG}_shard_{NNNNN}.ivf``: one sealed shard's entries: for each slot of the shard
  that was live when it was added, its slot number (the position in the kind's shard order, the
  IVF id) and its ``sa_encode`` code (list number, then the flat or PQ code). Written once, when
  the shard is added, never rewritten. Own format, not a faiss file: a faiss file of an index
  would repeat the quantizer (nlist x d floats: 8 MB at 4096 x 512) in every object.

``update_ann`` trains a generation when a kind first has more than ``AnnConfig.min_vectors``
live vectors, then adds a list object for each newly sealed shard, and trains a new generation
(swapped in by one progress.json) when the data drifted. It measures recall@10 against exact
search on a sample of stored live vectors (each leaving itself out), tunes nprobe up (doubling, up to nlist) to reach
``min_recall``, and commits ``Progress.ann[kind]`` with ``serving`` telling whether it did.
Slots after the last added shard (the open shard) are not in the lists: ``search`` scans them
exactly and merges. Dead slots and brand filters are IDSelectors over slot numbers.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import faiss
import numpy as np

from sharding import names
from sharding.codec import sha256_hex
from sharding.errors import StateError
from sharding.loader import Vectors
from sharding.progress import (
    AnnList,
    AnnListSegment,
    AnnSegmentRef,
    AnnState,
    Progress,
    ShardRecord,
)
from sharding.resume import last_commit_marker
from sharding.state import get_verified, load_shard, require_progress, shard_records
from sharding.storage import Storage
from sharding.tombstones import dead_slots, live_mask

K = 10  # recall@K
#: List references progress.json keeps inline before they roll into an immutable segment object.
SEGMENT_LISTS = 100
_MAGIC = b"FBIVF1\n"
_HEADER = struct.Struct("<qqq")  # entries, code size, shard number
_OVERHEAD = len(_MAGIC) + _HEADER.size
_NAME = re.compile(
    r"^ann_(?P<kind>[a-z][a-z0-9_]*)_g(?P<g>\d{3,})_"
    r"(?:trained\.index|shard_\d{5,}(?:_p\d+)?\.ivf|lists_\d{5,}\.json)$"
)


def trained_name(kind: str, generation: int) -> str:
    return f"ann_{kind}_g{generation:03d}_trained.index"


def list_name(kind: str, generation: int, shard: int, part: int = 1) -> str:
    """A shard's list object; a shard whose entries pass the object limit has parts 2, 3, ..."""
    suffix = "" if part == 1 else f"_p{part}"
    return f"ann_{kind}_g{generation:03d}_shard_{names.number(shard)}{suffix}.ivf"


def segment_name(kind: str, generation: int, number: int) -> str:
    """The n-th immutable segment of list references of a generation (from 1)."""
    return f"ann_{kind}_g{generation:03d}_lists_{names.number(number)}.json"


def parse_ann_name(name: str) -> tuple[str, int] | None:
    """(kind, generation) of an ann object name; None for other names."""
    match = _NAME.match(name)
    return (match["kind"], int(match["g"])) if match else None


@dataclass(frozen=True)
class AnnConfig:
    """When and how a kind's approximate index is built (application.settings.StoreSettings)."""

    min_vectors: int = 100_000  # build one above this many live vectors
    min_recall: float = 0.95  # serve only at or above this recall@10
    #: IVFPQ (PQ codes, re-ranked exactly) from this many live vectors; IVFFlat below.
    pq_min_vectors: int = 500_000
    #: PQ sub-quantizers (bytes per code); None: chosen by choose_pq_m from pq_codes_budget.
    pq_m: int | None = None
    #: None above: the largest m of PQ_CHOICES dividing dim whose codes (live x m bytes) fit in
    #: this many bytes (128 bytes up to 11.7M vectors: finer codes, fewer re-rank reads)
    pq_codes_budget: int = 1_500_000_000
    max_nlist: int = 4096
    train_per_list: int = 40  # training sample: this many vectors per list (faiss asks >= 39)
    max_train: int = 200_000
    recall_queries: int = 200
    first_nprobe: int = 8
    #: IVFPQ: candidates scored exactly per result asked, tried in turn at each nprobe (the
    #: denser the data, the more PQ's order needs: 10 held at 1M, not at 10M)
    rerank_steps: tuple[int, ...] = (10, 25, 60)
    drift_growth: float = 2.0  # retrain once the live count reached this multiple of trained_on
    drift_distance: float = 1.5  # ... or new vectors sit this much farther from their centroid
    seed: int = 1234


@dataclass
class AnnReport:
    """What update_ann did for one kind."""

    kind: str
    action: str  # "none", "trained", "retrained", "added", "unchanged"
    reason: str = ""
    state: AnnState | None = None
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """The index changed and could not reach the minimum recall: not served."""
        return self.state is not None and self.action != "none" and not self.state.serving

    def as_dict(self) -> dict[str, object]:
        state = self.state
        return {
            "action": self.action,
            "reason": self.reason,
            "objects_written": len(self.written),
            "seconds": round(self.seconds, 3),
            **(status(state) if state is not None else {}),
        }


def status(state: AnnState) -> dict[str, object]:
    """The `status --json` view of a kind's approximate index."""
    return {
        "type": state.type,
        "generation": state.generation,
        "nlist": state.nlist,
        "nprobe": state.nprobe,
        "recall_at_10": state.recall_at_10,
        "vectors": state.vectors,
        "shards": state.shards,
        "serving": state.serving,
    }


def choose_nlist(n: int, max_nlist: int, per_list: int) -> int:
    """~4 sqrt(n) lists, capped, and never more than the sample can train (per_list each)."""
    return max(1, min(max_nlist, int(4 * math.sqrt(n)), n // per_list))


#: The PQ code sizes choose_pq_m picks from, finest first.
PQ_CHOICES = (128, 64, 32, 16, 8, 4, 2, 1)


def choose_pq_m(dim: int, live: int, config: AnnConfig) -> int:
    """config.pq_m when it divides dim (0 when it does not: IVFFlat), else the largest of
    PQ_CHOICES dividing dim whose codes for `live` vectors fit in config.pq_codes_budget (the
    smallest dividing one when none fits)."""
    if config.pq_m is not None:
        return config.pq_m if config.pq_m > 0 and dim % config.pq_m == 0 else 0
    dividing = [m for m in PQ_CHOICES if dim % m == 0 and m <= dim]
    fitting = [m for m in dividing if live * m <= config.pq_codes_budget]
    return fitting[0] if fitting else dividing[-1]


def new_index(dim: int, nlist: int, pq_m: int) -> faiss.IndexIVF:
    quantizer = faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if pq_m:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.niter = 10  # pq_m k-means of 256 centroids: 25 rounds (the default) take 2.5x
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]
    return index


def encode_list(shard: int, slots: np.ndarray, codes: np.ndarray) -> bytes:
    """The bytes of a list object: magic, header, int64 slots, then the codes row by row."""
    code_size = codes.shape[1] if codes.ndim == 2 else 0
    header = _HEADER.pack(len(slots), code_size, shard)
    return _MAGIC + header + slots.astype("<i8").tobytes() + np.ascontiguousarray(codes).tobytes()


def decode_list(data: bytes, name: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(shard, slots, codes) of a list object; StateError if it is not one."""
    start = len(_MAGIC) + _HEADER.size
    if not data.startswith(_MAGIC) or len(data) < start:
        raise StateError(f"{name}: not an ann list object")
    n, code_size, shard = _HEADER.unpack_from(data, len(_MAGIC))
    if n < 0 or code_size < 0 or len(data) != start + n * (8 + code_size):
        raise StateError(f"{name}: {len(data)} bytes do not hold {n} entries of {code_size}")
    slots = np.frombuffer(data, dtype="<i8", count=n, offset=start).astype(np.int64)
    codes = np.frombuffer(data, dtype=np.uint8, offset=start + 8 * n).reshape(n, code_size)
    return shard, slots, codes


@dataclass
class _Shard:
    record: ShardRecord
    start: int  # its first slot


def _sealed(storage: Storage, progress: Progress, kind: str) -> list[_Shard]:
    shards, start = [], 0
    for record in shard_records(storage, progress, kind):
        if record.sealed:
            shards.append(_Shard(record, start))
        start += record.vectors
    return shards


def _live_rows(
    storage: Storage, kind: str, dim: int, shard: _Shard, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(slots, vectors) of a sealed shard's live slots."""
    vectors = load_shard(storage, shard.record, dim).vectors
    keep = np.flatnonzero(mask[shard.start : shard.start + shard.record.vectors])
    return (shard.start + keep).astype(np.int64), np.ascontiguousarray(vectors[keep])


def _read_trained(storage: Storage, state: AnnState) -> faiss.IndexIVF:
    data = get_verified(storage, state.trained, _digests(state.trained_sha256))
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if not isinstance(index, faiss.IndexIVF):  # deserialize_index downcasts; keep that owner
        raise StateError(f"{state.trained}: not an IVF index")
    return index


def _digests(sha256: str):  # type: ignore[no-untyped-def]
    from sharding.digests import Digests

    return Digests(sha256)


def list_refs(storage: Storage, state: AnnState) -> list[AnnList]:
    """Every list reference of a state: its segments' (each verified), then the inline ones."""
    refs: list[AnnList] = []
    for seg in state.segments:
        try:
            segment = AnnListSegment.model_validate_json(
                get_verified(storage, seg.name, seg.digests)
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise StateError(f"{seg.name}: not an ann list segment ({exc})") from exc
        if len(segment.lists) != seg.lists or segment.generation != state.generation:
            raise StateError(f"{seg.name}: {len(segment.lists)} lists, {seg} committed")
        refs.extend(segment.lists)
    return refs + list(state.lists)


def roll_segments(
    kind: str,
    state_generation: int,
    segments: list[AnnSegmentRef],
    lists: list[AnnList],
    max_bytes: int,
) -> tuple[list[AnnSegmentRef], list[AnnList], list[tuple[str, bytes]]]:
    """(segments, inline lists, objects to write): every full run of SEGMENT_LISTS inline
    references (fewer when that many would not fit in `max_bytes`) rolled into a segment object.
    Deterministic: the same references give the same bytes under the same names."""
    segments, written = list(segments), list[tuple[str, bytes]]()

    def encode(run: list[AnnList]) -> bytes:
        segment = AnnListSegment(kind=kind, generation=state_generation, lists=run)
        return segment.model_dump_json().encode()

    if not lists:
        return segments, lists, written
    per_ref = max(len(ref.model_dump_json()) for ref in lists) + 1
    size = max(1, min(SEGMENT_LISTS, (max_bytes - len(encode([]))) // per_ref))
    while len(lists) >= size:
        run, lists = lists[:size], lists[size:]
        name = segment_name(kind, state_generation, len(segments) + 1)
        encoded = encode(run)
        segments.append(
            AnnSegmentRef(
                name=name,
                sha256=sha256_hex(encoded),
                lists=len(run),
                vectors=sum(ref.vectors for ref in run),
                first_shard=run[0].shard,
                last_shard=run[-1].shard,
            )
        )
        written.append((name, encoded))
    return segments, lists, written


def read_lists(storage: Storage, state: AnnState) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Every committed list object of a state, each checked against its sha256."""
    return list(iter_lists(storage, state))


def iter_lists(storage: Storage, state: AnnState) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """read_lists one object at a time (loading holds one object's bytes beside the index)."""
    for ref in list_refs(storage, state):
        shard, slots, codes = decode_list(
            get_verified(storage, ref.name, _digests(ref.sha256)), ref.name
        )
        if shard != ref.shard or len(slots) != ref.vectors:
            raise StateError(f"{ref.name}: holds shard {shard}, {len(slots)} entries; {ref}")
        yield shard, slots, codes


def assemble(
    trained: faiss.IndexIVF, lists: Iterable[tuple[int, np.ndarray, np.ndarray]]
) -> faiss.IndexIVF:
    """The trained index with every list object's entries added (in memory)."""
    for _, slots, codes in lists:
        if len(slots):
            trained.add_sa_codes(np.ascontiguousarray(codes), np.ascontiguousarray(slots))
    return trained


def update_ann(
    storage: Storage,
    kind: str,
    config: AnnConfig,
    *,
    run_id: str,
    guard: Callable[[], None] | None = None,
) -> AnnReport:
    """Bring a kind's approximate index up to date with its sealed shards and commit it.

    Reads the last commit; writes (1) a trained index when there is none or the data drifted
    (a new generation), (2) one list object per sealed shard not in the lists yet, then (3)
    progress.json naming them, (4) last_commit.json, and only then deletes the ann objects of
    this kind that the new commit does not name (the previous generation, leftovers of a crash).
    A crash before (3) leaves the previous state serving; a rerun redoes the same work.
    `guard` (the lease check) runs before the writes and before the commit.
    """
    import time

    started = time.monotonic()
    progress = require_progress(storage)
    if kind not in progress.kinds:
        return AnnReport(kind, "none", f"the store has no {kind} index")
    kp = progress.kinds[kind]
    state = progress.ann.get(kind)
    if state is None and kp.live_vectors <= config.min_vectors:
        return AnnReport(kind, "none", f"{kp.live_vectors} live vectors <= {config.min_vectors}")
    dim = kp.dim
    shards = _sealed(storage, progress, kind)
    mask = live_mask(kp.total_vectors, dead_slots(storage, kp))
    reason = "" if state is None else _drift(state, kp.live_vectors, config)
    written: list[str] = []

    fresh_generation = False

    def put(name: str, data: bytes) -> None:
        # A generation not committed yet may be trained again after a crash, with other bytes
        # under the same names (k-means over threads): cached as immutable only once committed
        # trained bytes decide them (list objects added to a committed generation).
        storage.put(name, data, immutable=not fresh_generation)
        written.append(name)

    if guard is not None:
        guard()
    new = [s for s in shards if state is None or reason or s.record.number > state.shards]
    if state is not None and not reason and new:
        index = _read_trained(storage, state)
        distance = _streamed_mean_distance(storage, kind, dim, new, mask, index)
        if distance > config.drift_distance * state.train_mean_distance:
            reason = (
                f"new vectors' mean distance to their list centroid {distance:.4f} > "
                f"{config.drift_distance} x {state.train_mean_distance:.4f} at training"
            )
            new = shards
    if state is None or reason:
        live_rows = _live_slots(new, mask)
        if sum(len(slots) for slots in live_rows) == 0:
            return AnnReport(kind, "none", "no sealed shard holds a live vector yet")
        generation = 1 if state is None else state.generation + 1
        fresh_generation = True

        def gather(rows: np.ndarray) -> np.ndarray:
            return _gather(storage, kind, dim, new, live_rows, rows)

        index, state = _train(
            kind,
            generation,
            (sum(len(slots) for slots in live_rows), dim, gather),
            kp.live_vectors,
            config,
            progress.shard_max_bytes,
        )
        if len(faiss.serialize_index(index)) > progress.shard_max_bytes:
            raise StateError(
                f"{kind}: a trained index of {state.nlist} lists passes shard_max_bytes "
                f"{progress.shard_max_bytes}; raise it to build an approximate index"
            )
        data = faiss.serialize_index(index).tobytes()
        put(state.trained, data)
        state.trained_sha256 = sha256_hex(data)
        action = "trained" if generation == 1 else "retrained"
        lists: list[AnnList] = []
        segments: list[AnnSegmentRef] = []
        committed_lists: list[tuple[int, np.ndarray, np.ndarray]] = []
    else:
        if not new:  # a crash after the last commit may have left objects it no longer names
            _delete_unnamed(storage, kind, progress)
            return AnnReport(kind, "unchanged", "no newly sealed shard", state)
        index = _read_trained(storage, state)
        action = "added"
        lists = list(state.lists)
        segments = list(state.segments)
        committed_lists = read_lists(storage, state)
    fresh = []
    # Entries per object: a list object stays under the store's object limit (shard_max_bytes).
    per_object = max(1, (progress.shard_max_bytes - _OVERHEAD) // (8 + index.sa_code_size()))
    for shard in new:  # one shard's vectors in memory at a time
        slots, vectors = _live_rows(storage, kind, dim, shard, mask)
        codes = (
            index.sa_encode(vectors)
            if len(vectors)
            else np.zeros((0, index.sa_code_size()), np.uint8)
        )
        number = shard.record.number
        for part, start in enumerate(range(0, max(1, len(slots)), per_object), start=1):
            part_slots, part_codes = (
                slots[start : start + per_object],
                codes[start : start + per_object],
            )
            data = encode_list(number, part_slots, part_codes)
            name = list_name(kind, state.generation, number, part)
            put(name, data)
            ref = AnnList(shard=number, name=name, sha256=sha256_hex(data), vectors=len(part_slots))
            lists.append(ref)
            fresh.append((number, part_slots, part_codes))
    segments, lists, rolled = roll_segments(
        kind, state.generation, segments, lists, progress.shard_max_bytes
    )
    for name, data in rolled:
        put(name, data)
    full = assemble(index, [*committed_lists, *fresh])
    state = state.model_copy(
        update={
            "segments": segments,
            "lists": lists,
            "shards": max((s.record.number for s in shards), default=0),
            "vectors": int(full.ntotal),
        }
    )
    state = _measure(storage, kind, dim, shards, mask, full, state, config)
    if guard is not None:
        guard()
    committed = _commit(storage, progress, kind, state, run_id)
    _delete_unnamed(storage, kind, committed)
    return AnnReport(kind, action, reason, state, written, time.monotonic() - started)


def _drift(state: AnnState, live: int, config: AnnConfig) -> str:
    if live >= config.drift_growth * max(1, state.trained_on):
        return f"{live} live vectors >= {config.drift_growth} x {state.trained_on} at training"
    return ""


def _mean_distance(index: faiss.IndexIVF, vectors: np.ndarray) -> float:
    """Mean squared L2 distance of unit vectors to their nearest centroid (2 - 2 cos)."""
    if len(vectors) == 0:
        return 0.0
    scores, _ = index.quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return float(np.mean(2.0 - 2.0 * scores[:, 0]))


def _train(
    kind: str,
    generation: int,
    rows: tuple[int, int, Callable[[np.ndarray], np.ndarray]],
    live: int,
    config: AnnConfig,
    max_bytes: int,
) -> tuple[faiss.IndexIVF, AnnState]:
    """Train on a seeded sample of `rows` = (n live rows, dim, gather(row numbers) -> vectors):
    only the sample is held in memory."""
    n, dim, gather = rows
    pq_m = choose_pq_m(dim, live, config) if live >= config.pq_min_vectors else 0
    nlist = choose_nlist(n, config.max_nlist, config.train_per_list)
    # The trained object (nlist x dim floats, the PQ codebook: 256 x dim floats) must stay
    # under the object limit too: fewer lists when it would not.
    fixed = len(faiss.serialize_index(new_index(dim, 1, pq_m))) + 256
    nlist = max(1, min(nlist, (max_bytes - fixed) // (4 * dim + 16)))
    # PQ codebooks need 256 points each to train on (8 bits).
    sample_size = min(n, max(nlist * config.train_per_list, 256 * 40 if pq_m else 0))
    sample_size = min(sample_size, config.max_train)
    rng = np.random.default_rng(config.seed + generation)
    sample = gather(np.sort(rng.choice(n, sample_size, replace=False)))
    index = new_index(dim, nlist, pq_m)
    index.cp.seed = config.seed
    index.train(np.ascontiguousarray(sample))
    state = AnnState(
        generation=generation,
        type="IVFPQ" if pq_m else "IVFFlat",
        nlist=nlist,
        nprobe=min(nlist, config.first_nprobe),
        pq_m=pq_m,
        trained=trained_name(kind, generation),
        trained_sha256="",
        trained_on=live,
        train_mean_distance=_mean_distance(index, sample),
    )
    return index, state


def _measure(
    storage: Storage,
    kind: str,
    dim: int,
    shards: list[_Shard],
    mask: np.ndarray,
    index: faiss.IndexIVF,
    state: AnnState,
    config: AnnConfig,
    fixed_nprobe: int | None = None,
) -> AnnState:
    """recall@10 of the lists against exact search over the same live vectors, on a sample of
    them as queries; nprobe doubles (up to nlist) until it reaches config.min_recall (or, with
    `fixed_nprobe`, is measured at that nprobe alone).

    The first two steps of the ladder are measured in one pass over the shards, the rest (when
    neither reached the minimum) in a second: searching 200 queries at nprobe = nlist over 10M
    codes costs minutes, and the first steps usually suffice."""
    args = (storage, kind, dim, shards, mask, index, state, config)
    if fixed_nprobe:
        return _measure_at(*args, [fixed_nprobe], (state.rerank,))
    ladder = [min(state.nlist, config.first_nprobe)]
    while ladder[-1] < state.nlist:
        ladder.append(min(state.nlist, ladder[-1] * 2))
    reranks = config.rerank_steps if state.pq_m else (1,)
    first = _measure_at(*args, ladder[:2], reranks)
    if first.serving or len(ladder) <= 2:
        return first
    return _measure_at(*args, ladder[2:], reranks)


def _measure_at(
    storage: Storage,
    kind: str,
    dim: int,
    shards: list[_Shard],
    mask: np.ndarray,
    index: faiss.IndexIVF,
    state: AnnState,
    config: AnnConfig,
    nprobes: list[int],
    reranks: tuple[int, ...],
) -> AnnState:
    """recall@10 at each of `nprobes` in turn, and at each there each re-rank depth of
    `reranks` (the top rerank x k of one search by PQ score), up to the first pair that reaches
    the minimum.

    One shard in memory at a time: the queries are gathered first, the lists searched at every
    nprobe that may be tried, then one pass over the shards computes the exact top-10 and the
    exact scores of the candidates (the re-rank)."""
    live_rows = _live_slots(shards, mask)
    n = sum(len(slots) for slots in live_rows)
    if n == 0:
        return state.model_copy(update={"recall_at_10": None, "recall_queries": 0})
    rng = np.random.default_rng(config.seed)
    picked = np.sort(rng.choice(n, min(config.recall_queries, n), replace=False))
    queries = np.ascontiguousarray(_gather(storage, kind, dim, shards, live_rows, picked))
    # Each query is a stored vector: its own slot is its nearest neighbour, found trivially by
    # both searches. It is dropped from both (leave-one-out: k + 1 searched, self removed), so
    # the figure predicts queries that are not in the index (docs/store-format.md, "ann").
    own = np.concatenate(live_rows)[picked]
    k = min(K, n - 1)
    if k <= 0:
        return state.model_copy(update={"recall_at_10": None, "recall_queries": 0})
    end = sum(s.record.vectors for s in shards)
    dead = np.flatnonzero(~mask[:end]).astype(np.int64)
    batch = faiss.IDSelectorBatch(dead) if len(dead) else None
    selector = faiss.IDSelectorNot(batch) if batch is not None else None
    want = k * max(reranks) + 1
    candidates = {}
    for nprobe in nprobes:
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        if selector is not None:
            params.sel = selector
        candidates[nprobe] = index.search(queries, want, params=params)[1]
    exact = {
        nprobe: np.full(found.shape, -np.inf, np.float32) for nprobe, found in candidates.items()
    }
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for shard, slots in zip(shards, live_rows, strict=True):
        if not len(slots):
            continue
        vectors = load_shard(storage, shard.record, dim).vectors[slots - shard.start]
        scores, found = faiss.knn(
            queries, vectors, min(k + 1, len(slots)), metric=faiss.METRIC_INNER_PRODUCT
        )
        found = np.where(found >= 0, slots[np.maximum(found, 0)], -1)
        scores = np.where((found >= 0) & (found != own[:, None]), scores, -np.inf)
        merged_s = np.concatenate([best_s, scores], axis=1)
        merged_i = np.concatenate([best_i, np.where(scores > -np.inf, found, -1)], axis=1)
        order = np.argsort(-merged_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(merged_s, order, 1)
        best_i = np.take_along_axis(merged_i, order, 1)
        for nprobe, found in candidates.items():
            rows = np.searchsorted(slots, found)
            hit = (found >= 0) & (rows < len(slots))
            hit[hit] &= slots[rows[hit]] == found[hit]
            q, c = np.nonzero(hit)
            exact[nprobe][q, c] = np.einsum("ij,ij->i", queries[q], vectors[rows[q, c]])
    recall, chosen = 0.0, (nprobes[0], reranks[0])
    for nprobe in nprobes:
        others = candidates[nprobe] != own[:, None]  # self dropped: k x rerank others re-ranked
        rank = np.cumsum(others, axis=1)
        for rerank in reranks:
            keep = others & (rank <= k * rerank)
            scored = np.where(keep, exact[nprobe], -np.inf)
            order = np.argsort(-scored, axis=1, kind="stable")[:, :k]
            found = np.take_along_axis(candidates[nprobe], order, 1)
            found = np.where(np.take_along_axis(scored, order, 1) > -np.inf, found, -1)
            recall, chosen = recall_at(best_i, found), (nprobe, rerank)
            if recall >= config.min_recall:
                break
        if recall >= config.min_recall:
            break
    nprobe = chosen[0]
    return state.model_copy(
        update={
            "rerank": chosen[1] if state.pq_m else state.rerank,
            "nprobe": nprobe,
            "recall_at_10": round(recall, 4),
            "recall_queries": len(queries),
            "serving": recall >= config.min_recall,
        }
    )


def _live_slots(shards: list[_Shard], mask: np.ndarray) -> list[np.ndarray]:
    """Per shard, its live slots (ascending): no vector read."""
    return [
        (s.start + np.flatnonzero(mask[s.start : s.start + s.record.vectors])).astype(np.int64)
        for s in shards
    ]


def _gather(
    storage: Storage,
    kind: str,
    dim: int,
    shards: list[_Shard],
    live_rows: list[np.ndarray],
    rows: np.ndarray,
) -> np.ndarray:
    """The vectors of these live-row numbers (ascending; counted over the shards' live slots
    in order), reading only the shards that hold one."""
    out = np.empty((len(rows), dim), np.float32)
    start = 0
    for shard, slots in zip(shards, live_rows, strict=True):
        lo, hi = np.searchsorted(rows, [start, start + len(slots)])
        if hi > lo:
            vectors = load_shard(storage, shard.record, dim).vectors
            out[lo:hi] = vectors[slots[rows[lo:hi] - start] - shard.start]
        start += len(slots)
    return out


def _streamed_mean_distance(
    storage: Storage,
    kind: str,
    dim: int,
    shards: list[_Shard],
    mask: np.ndarray,
    index: faiss.IndexIVF,
) -> float:
    total, count = 0.0, 0
    for shard in shards:
        _, vectors = _live_rows(storage, kind, dim, shard, mask)
        if len(vectors):
            total += _mean_distance(index, vectors) * len(vectors)
            count += len(vectors)
    return total / count if count else 0.0


def recall_at(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row's true neighbours found (ids; -1 never counts)."""
    hits = sum(
        len(set(t.tolist()) & set(f[f >= 0].tolist())) for t, f in zip(truth, found, strict=True)
    )
    return hits / truth.size if truth.size else 1.0


def search_lists(
    index: faiss.IndexIVF,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int,
    rerank: int = 1,
    vectors_of: Callable[[np.ndarray], np.ndarray] | None = None,
    selector: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, slots), k per query, from the IVF lists: `rerank` x k candidates when
    vectors_of (slot -> stored vector) is given, re-scored exactly; -1 where fewer exist."""
    params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
    if selector is not None:
        params.sel = selector
    want = k * max(1, rerank)
    scores, found = index.search(queries, want, params=params)
    if vectors_of is None:
        return scores[:, :k], found[:, :k]
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, candidates) in enumerate(zip(queries, found, strict=True)):
        candidates = candidates[candidates >= 0]
        if not len(candidates):
            continue
        exact = vectors_of(candidates) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        out_s[row, : len(order)] = exact[order]
        out_i[row, : len(order)] = candidates[order]
    return out_s, out_i


def _commit(
    storage: Storage, progress: Progress, kind: str, state: AnnState, run_id: str
) -> Progress:
    """progress.json with this kind's ann replaced (commit_seq + 1), then last_commit.json."""
    ann = dict(progress.ann)
    ann[kind] = state
    candidate = progress.model_copy(
        update={
            "commit_seq": progress.commit_seq + 1,
            "run_id": run_id,
            "written_at": datetime.now(UTC),
            "ann": dict(sorted(ann.items())),
        }
    )
    candidate = Progress.model_validate_json(candidate.to_bytes())
    data = candidate.to_bytes()
    storage.put(names.PROGRESS, data)
    storage.put(names.LAST_COMMIT, last_commit_marker(candidate, data))
    return candidate


def _delete_unnamed(storage: Storage, kind: str, progress: Progress) -> None:
    """Ann objects of this kind that the commit does not name: an older generation, leftovers."""
    state = progress.ann.get(kind)
    named = set() if state is None else _named(storage, state)
    stale = [
        name
        for name in storage.list("ann_")
        if (parsed := parse_ann_name(name)) is not None and parsed[0] == kind and name not in named
    ]
    if stale:
        storage.delete(stale)


def committed_ann_objects(storage: Storage, progress: Progress) -> set[str]:
    """Every ann object the commit names (for check and cleanup); a segment that cannot be
    read names nothing here (check_ann reports it)."""
    named: set[str] = set()
    for state in progress.ann.values():
        try:
            named |= _named(storage, state)
        except StateError:
            named |= {state.trained, *(ref.name for ref in state.segments)}
    return named


def _named(storage: Storage, state: AnnState) -> set[str]:
    """The objects a state names: the trained index, its segments, every list (segments read)."""
    refs = list_refs(storage, state)
    return {state.trained, *(ref.name for ref in state.segments), *(ref.name for ref in refs)}


@dataclass
class LoadedAnn:
    """A kind's serving approximate index in memory, over the slot numbers of its live rows."""

    state: AnnState
    index: faiss.IndexIVF
    live_slots: np.ndarray  # slot of each live row, ascending (the loader's row order)
    dead_covered: np.ndarray  # dead slots the lists may still hold
    covered: int  # slots of shards 1..state.shards: later ones are scanned exactly

    def search(
        self,
        vectors: Vectors,
        queries: np.ndarray,
        k: int,
        *,
        rows: np.ndarray | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) k per query over the live `vectors` (the loader's array, or
        map_index's MappedVectors: only the candidates' rows are read): the lists (dead slots
        and, with `rows`, everything outside them excluded by an IDSelector), re-scored
        exactly, merged with an exact scan of the rows after the lists. -1: none."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        tail_start = int(np.searchsorted(self.live_slots, self.covered))
        keep: list[object] = []  # selectors must outlive the search
        if rows is None:
            tail = np.arange(tail_start, len(vectors))
            selector: faiss.IDSelector | None = None
            if len(self.dead_covered):
                batch = faiss.IDSelectorBatch(self.dead_covered)
                selector = faiss.IDSelectorNot(batch)
                keep.append(batch)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            tail = rows[rows >= tail_start]
            selector = faiss.IDSelectorBatch(
                np.ascontiguousarray(self.live_slots[rows[rows < tail_start]])
            )
        slots = self.live_slots

        def vectors_of(wanted: np.ndarray) -> np.ndarray:
            return vectors[np.searchsorted(slots, wanted)]

        rerank = self.state.rerank if self.state.pq_m else 1
        scores, found = search_lists(
            self.index,
            queries,
            k,
            nprobe=nprobe or self.state.nprobe,
            rerank=rerank,
            vectors_of=vectors_of,
            selector=selector,
        )
        found_rows = np.where(found >= 0, np.searchsorted(slots, np.maximum(found, 0)), -1)
        if len(tail):
            t_scores, t_pos = faiss.knn(
                queries,
                np.ascontiguousarray(vectors[tail]),
                min(k, len(tail)),
                metric=faiss.METRIC_INNER_PRODUCT,
            )
            scores = np.concatenate([scores, t_scores], axis=1)
            found_rows = np.concatenate(
                [found_rows, np.where(t_pos >= 0, tail[np.maximum(t_pos, 0)], -1)], axis=1
            )
        scores = np.where(found_rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        del keep
        return np.take_along_axis(scores, order, 1), np.take_along_axis(found_rows, order, 1)


def load_ann(storage: Storage, progress: Progress, kind: str) -> LoadedAnn | None:
    """The serving approximate index of a kind (lists verified, merged in memory), or None."""
    state = progress.ann.get(kind)
    if state is None or not state.serving:
        return None
    kp = progress.kinds[kind]
    index = assemble(_read_trained(storage, state), iter_lists(storage, state))
    covered = sum(
        r.vectors for r in shard_records(storage, progress, kind) if r.number <= state.shards
    )
    dead = np.asarray(sorted(dead_slots(storage, kp)), dtype=np.int64)
    live = np.flatnonzero(live_mask(kp.total_vectors, dead.tolist())).astype(np.int64)
    return LoadedAnn(state, index, live, dead[dead < covered], covered)


def check_ann(storage: Storage, progress: Progress, kind: str) -> list[tuple[str, str]]:
    """(code, message) for each way a kind's committed approximate index is wrong: a trained or
    list object that does not match its sha256 or cannot be read, a live slot of the listed
    shards in no list or in two, an entry outside them, counts that disagree, and the recall
    sample re-measured at the committed nprobe more than 0.02 below the committed figure."""
    state = progress.ann.get(kind)
    if state is None:
        return []
    kp = progress.kinds[kind]
    problems: list[tuple[str, str]] = []
    try:
        index = _read_trained(storage, state)
        lists = read_lists(storage, state)
    except (StateError, RuntimeError) as exc:
        return [("ann_object", str(exc))]
    if index.nlist != state.nlist or index.d != kp.dim:
        problems.append(("ann_object", f"{state.trained}: nlist {index.nlist}, d {index.d}"))
    shards = [s for s in _sealed(storage, progress, kind) if s.record.number <= state.shards]
    if len(shards) != state.shards:
        problems.append(("ann_lists", f"{state.shards} shards listed, {len(shards)} sealed"))
    mask = live_mask(kp.total_vectors, dead_slots(storage, kp))
    covered = np.zeros(kp.total_vectors, dtype=np.int64)
    for shard, slots, _ in lists:
        record = next((s for s in shards if s.record.number == shard), None)
        if record is None or (
            len(slots)
            and (slots.min() < record.start or slots.max() >= record.start + record.record.vectors)
        ):
            problems.append(("ann_lists", f"shard {shard}'s list holds slots outside the shard"))
            continue
        np.add.at(covered, slots, 1)
    end = sum(s.record.vectors for s in shards)
    missing = np.flatnonzero(mask[:end] & (covered[:end] == 0))
    twice = np.flatnonzero(covered > 1)
    if len(missing):
        problems.append(("ann_lists", f"live slots {missing[:5].tolist()} are in no list"))
    if len(twice):
        problems.append(("ann_lists", f"slots {twice[:5].tolist()} are in more than one list"))
    if sum(len(slots) for _, slots, _ in lists) != state.vectors:
        problems.append(
            ("ann_lists", f"the lists hold {int(covered.sum())}, vectors says {state.vectors}")
        )
    if not problems and state.recall_at_10 is not None:
        full = assemble(index, lists)
        measured = _measure(
            storage,
            kind,
            kp.dim,
            shards,
            mask,
            full,
            state,
            AnnConfig(recall_queries=state.recall_queries),
            fixed_nprobe=state.nprobe,
        ).recall_at_10
        if measured is not None and measured < state.recall_at_10 - 0.02:
            problems.append(
                (
                    "ann_recall",
                    f"recall@10 at nprobe {state.nprobe} is {measured}, committed {state.recall_at_10}",
                )
            )
    return problems
