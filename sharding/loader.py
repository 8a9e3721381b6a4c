"""Loading a kind's shards (parallel, checksum-verified, cached) into one searchable index."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from sharding.codec import ProductId, flat_ip_header, flat_ip_layout_holds
from sharding.digests import Digests, Match, match_committed, trusted
from sharding.errors import ObjectNotFound, StateError
from sharding.local_store import LocalStore, read_file_into
from sharding.progress import Progress, ShardRecord
from sharding.state import (
    committed_ids,
    committed_vectors,
    fetch_committed,
    require_progress,
    shard_records,
)
from sharding.storage import ReadsInto, Storage
from sharding.tombstones import dead_slots, live_mask

#: posix_fadvise exists on Linux (the re-rank's reads are hinted first); elsewhere plain preads.
_FADVISE = hasattr(os, "posix_fadvise")

# faiss-cpu skips BLAS below this many queries; BLAS is ~13x faster at 100 queries (measured).
_BLAS_THRESHOLD = 20


@dataclass(frozen=True)
class Hit:
    id: ProductId
    score: float


class FileBlock:
    """A sealed shard's (n, dim) float32 vectors left in a file, read on demand with pread.

    Not memory-mapped: a mapped page that is read stays in the process's resident set (with
    the kernel's fault-around, 64 kB per row touched), while pread copies only the rows asked
    for and leaves the file's pages to the page cache. The file is opened on the first read and
    kept open (one descriptor per shard read); when the process is out of descriptors, each
    read opens and closes it.
    """

    def __init__(self, path: Path, offset: int, n: int, dim: int) -> None:
        self.path, self.offset, self.n, self.dim = path, offset, n, dim
        self.row_bytes = 4 * dim
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __del__(self) -> None:  # a replaced commit's blocks give their descriptors back
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    @contextlib.contextmanager
    def fd(self) -> Iterator[int]:
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    try:
                        self._fd = os.open(self.path, os.O_RDONLY)
                    except OSError as exc:
                        if exc.errno != errno.EMFILE:
                            raise
        if self._fd is not None:
            yield self._fd
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self, out: np.ndarray) -> np.ndarray:
        """Every row, into `out` (at least n rows); returns out[:n]."""
        done = out[: self.n]
        view = done.data.cast("B")
        with self.fd() as fd:
            filled = 0
            while filled < len(view):
                got = os.preadv(fd, [view[filled:]], self.offset + filled)
                if got <= 0:
                    raise StateError(f"{self.path.name}: cut short while it was served")
                filled += got
        return done


class MappedVectors:
    """The live vectors of a kind as (n, dim) float32 rows, one block per shard, sealed shards'
    blocks left on disk (FileBlock: the local store's file, or the cache's exact copy of a
    remote one) and the open shard's in memory.

    Row r is the r-th live slot (dead slots are skipped, as in ShardedIndex). `take` reads the
    rows asked for (the re-rank of an approximate search: 4 x dim bytes per candidate), `scan`
    streams the blocks through one reused buffer (exact search): memory holds one shard.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(
        self, blocks: list[np.ndarray | FileBlock], dim: int, live: np.ndarray | None
    ) -> None:
        self.blocks = blocks
        self.dim = dim
        self.starts = np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64)
        self.live = live  # slot of each live row, ascending; None: every slot is live
        self.shape = (int(self.starts[-1]) if live is None else len(live), dim)
        self._on_disk = np.array([isinstance(b, FileBlock) for b in blocks], dtype=bool)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def disk_bytes(self) -> int:
        """Bytes of vectors left on disk, not held in memory."""
        return sum(b.nbytes for b in self.blocks if isinstance(b, FileBlock))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of these rows (a copy; a view for a run of rows in an in-memory block)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), self.dim), np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        slots = rows if self.live is None else self.live[rows]
        which = np.searchsorted(self.starts, slots, side="right") - 1
        first, last = int(which[0]), int(which[-1])
        head = self.blocks[first]
        if (
            first == last
            and int(slots[-1]) - int(slots[0]) == len(slots) - 1
            and isinstance(head, np.ndarray)
        ):
            lo = int(slots[0] - self.starts[first])
            return np.asarray(head[lo : lo + len(slots)])
        on_disk = self._on_disk[which]
        if on_disk.any():  # one pread per row straight into `out`, in file order
            view, size = out.data.cast("B"), 4 * self.dim
            local = slots - self.starts[which]
            wanted = np.flatnonzero(on_disk)
            wanted = wanted[np.lexsort((local[wanted], which[wanted]))]
            with contextlib.ExitStack() as stack:
                fds: dict[int, int] = {}
                reads: list[tuple[int, FileBlock, int, int]] = []
                for i in wanted.tolist():
                    number = int(which[i])
                    block = self.blocks[number]
                    assert isinstance(block, FileBlock)
                    fd = fds.get(number)
                    if fd is None:
                        fd = fds[number] = stack.enter_context(block.fd())
                    reads.append((i, block, fd, block.offset + int(local[i]) * size))
                if len(reads) > 1 and _FADVISE:
                    # Every row asked of the kernel first (WILLNEED starts its reads and does
                    # not wait): rows not in the page cache are then read from the disk in
                    # parallel, not one after the other (250 cold 2 kB rows: 3 ms, not 14).
                    for _, _, fd, at in reads:
                        os.posix_fadvise(fd, at, size, os.POSIX_FADV_WILLNEED)
                for i, block, fd, at in reads:
                    got = os.preadv(fd, [view[i * size : (i + 1) * size]], at)
                    if got != size:
                        raise StateError(f"{block.path.name}: cut short while it was served")
        if not on_disk.all():
            order = np.flatnonzero(~on_disk)
            order = order[np.argsort(which[order], kind="stable")]
            for group in np.split(order, np.flatnonzero(np.diff(which[order])) + 1):
                number = int(which[group[0]])
                memory = self.blocks[number]
                assert isinstance(memory, np.ndarray)
                out[group] = memory[slots[group] - self.starts[number]]
        return out

    def __getitem__(self, key: object) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self.take(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        return self.take(np.asarray(key))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.take(np.arange(len(self)))  # every vector in memory: small kinds only

    def scan(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, that block's live vectors) per block, in row order; a block on disk is
        read into one buffer reused for the next (valid until the next step)."""
        row = 0
        largest = max((len(b) for b in self.blocks if isinstance(b, FileBlock)), default=0)
        buffer = np.empty((largest, self.dim), np.float32)
        for number, block in enumerate(self.blocks):
            lo, hi = int(self.starts[number]), int(self.starts[number + 1])
            vectors = block.read(buffer) if isinstance(block, FileBlock) else block
            if self.live is not None:
                a, z = np.searchsorted(self.live, [lo, hi])
                if z - a < hi - lo:
                    vectors = vectors[self.live[a:z] - lo]
            yield row, vectors
            row += len(vectors)

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-k (scores, rows) over every row, one block at a time."""
        best_s = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.full((len(queries), k), -1, np.int64)
        for row, vectors in self.scan():
            if not len(vectors):
                continue
            scores, found = faiss.knn(
                queries,
                np.ascontiguousarray(vectors),
                min(k, len(vectors)),
                metric=faiss.METRIC_INNER_PRODUCT,
            )
            merged_s = np.concatenate([best_s, scores], axis=1)
            merged_i = np.concatenate([best_i, np.where(found >= 0, found + row, -1)], axis=1)
            order = np.argsort(-merged_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(merged_s, order, 1)
            best_i = np.take_along_axis(merged_i, order, 1)
        return best_s, best_i


Vectors = np.ndarray | MappedVectors


@dataclass
class ShardedIndex:
    """The live vectors of one kind in one (ntotal, dim) array, positions mapped to ids.

    Dead slots (replaced or deleted products, format 4) are dropped at load, so `search`,
    `vector` and `ids` only ever see live products; `dead_slots` says how many were dropped.

    Search is faiss's exact inner-product kernel (`faiss.knn`, the routine IndexFlatIP.search
    runs) over that array, so results equal one merged IndexFlatIP's. The array is not copied
    into a faiss-owned buffer: faiss zero-fills a new buffer on 4 KiB pages (~1 s for 2 GB
    here) while numpy's is filled in parallel on huge pages; `index` builds one on demand.
    From `map_index`, `vectors` is a MappedVectors (sealed shards left on disk, read on
    demand; exact search streams them block by block) with the same rows.
    """

    kind: str
    dim: int
    vectors: Vectors
    ids: list[ProductId]
    progress: Progress
    dead_slots: int = 0
    _positions: dict[ProductId, int] = field(default_factory=dict, repr=False)

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    @functools.cached_property
    def index(self) -> faiss.IndexFlatIP:
        """The same vectors as a faiss IndexFlatIP (one full copy, made on first use)."""
        index = faiss.IndexFlatIP(self.dim)
        if isinstance(self.vectors, MappedVectors):
            for _, block in self.vectors.scan():
                if len(block):
                    index.add(np.ascontiguousarray(block))
        elif self.ntotal:
            index.add(self.vectors)
        return index

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k product ids and inner-product scores per query row."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, index {self.dim}")
        if self.ntotal == 0 or k < 1:
            return [[] for _ in queries]
        with _blas_threshold(_BLAS_THRESHOLD):
            if isinstance(self.vectors, MappedVectors):
                scores, positions = self.vectors.knn(queries, min(k, self.ntotal))
            else:
                scores, positions = faiss.knn(
                    queries, self.vectors, min(k, self.ntotal), metric=faiss.METRIC_INNER_PRODUCT
                )
        return [
            [Hit(self.ids[p], float(s)) for s, p in zip(row_s, row_p, strict=True) if p >= 0]
            for row_s, row_p in zip(scores, positions, strict=True)
        ]

    def vector(self, product_id: ProductId) -> np.ndarray:
        """The stored vector of a product (KeyError if it is not in this kind)."""
        if not self._positions:
            self._positions = {pid: i for i, pid in enumerate(self.ids)}
        return np.array(self.vectors[self._positions[product_id]])


@contextlib.contextmanager
def _blas_threshold(value: int) -> Iterator[None]:
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = value
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


def load_index(
    storage: Storage,
    kind: str,
    *,
    cache_dir: Path | None = None,
    workers: int = 8,
    trust_cache: bool = False,
) -> ShardedIndex:
    """Read every committed shard of a kind in parallel, verify it, gather it for search.

    Every object is checked against the checksum progress.json commits (XXH3-128; sha256 for
    format 1 records). Shards of a local store, or of `cache_dir`, are read straight into the
    result array. With `trust_cache`, files already in `cache_dir` are not hashed again: they are
    named by their sha256 and were verified before they were written there, so only a local
    change to the cache folder could make them wrong. Objects read from the store are always
    verified.
    """
    progress = require_progress(storage)
    records = shard_records(storage, progress, kind)
    dim = progress.kinds[kind].dim
    # Written by the shard loads in parallel: the first touch of 2 GB is spread over the threads.
    vectors = np.empty((sum(r.vectors for r in records), dim), dtype=np.float32)
    starts = np.cumsum([0] + [r.vectors for r in records[:-1]]).tolist()
    source = _ShardSource(storage, cache_dir, trust_cache)

    def load(record: ShardRecord, start: int) -> list[ProductId]:
        return _load_shard_into(source, record, dim, vectors[start : start + record.vectors])

    # readv and hashing release the GIL: the threads share the copying, the bulk of the time.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ids = [pid for shard_ids in pool.map(load, records, starts) for pid in shard_ids]
    _check_total(kind, len(ids), progress)
    dead = dead_slots(storage, progress.kinds[kind])
    if dead:
        vectors, ids = _drop_dead(vectors, ids, dead)
    return ShardedIndex(kind, dim, vectors, ids, progress, dead_slots=len(dead))


def _check_total(kind: str, found: int, progress: Progress) -> None:
    """The vectors read from a kind's shards are as many as progress.json commits."""
    if found != progress.kinds[kind].total_vectors:
        raise StateError(
            f"{kind}: {found} vectors in shards, progress says {progress.kinds[kind].total_vectors}"
        )


def map_index(
    storage: Storage,
    kind: str,
    *,
    cache_dir: Path | None = None,
    workers: int = 8,
    trust_cache: bool = False,
) -> ShardedIndex:
    """Like load_index, but the vectors of sealed shards stay on disk: each is verified (read
    once through a reused buffer, hashed as load_index does) and then left in its file, read on
    demand (MappedVectors, FileBlock), so memory holds the ids and the open shard, not the
    kind's vectors.

    The file is the store's own for a LocalStore, else the exact copy in `cache_dir`
    (downloaded once, named by its sha256). A shard that cannot be left on disk (no local file and no
    cache, a faiss that writes another layout, bytes that are not the committed ones) is read
    into memory by load_index's path instead, which also names what is wrong.
    """
    progress = require_progress(storage)
    records = shard_records(storage, progress, kind)
    dim = progress.kinds[kind].dim
    source = _ShardSource(storage, cache_dir, trust_cache)
    root = storage.root if isinstance(storage, LocalStore) else None
    scratch = threading.local()

    def load(record: ShardRecord) -> tuple[np.ndarray | FileBlock, list[ProductId]]:
        block = _map_shard(source, root, record, dim, scratch) if record.sealed else None
        if block is None:
            out = np.empty((record.vectors, dim), dtype=np.float32)
            return out, _load_shard_into(source, record, dim, out)
        id_data, id_match = source.fetch(record.id_map, record.id_map_digests)
        ids, _ = committed_ids(id_data, record, id_match)
        if len(ids) != record.vectors:
            raise StateError(f"{record.id_map}: {len(ids)} ids for {record.vectors} vectors")
        return block, ids

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = list(pool.map(load, records))
    blocks: list[np.ndarray | FileBlock] = [block for block, _ in loaded]
    ids = [pid for _, shard_ids in loaded for pid in shard_ids]
    _check_total(kind, len(ids), progress)
    dead = dead_slots(storage, progress.kinds[kind])
    live = None
    if dead:
        if max(dead) >= len(ids) or min(dead) < 0:
            raise StateError(f"a tombstone names slot {max(dead)} of {len(ids)}")
        live = np.flatnonzero(live_mask(len(ids), dead)).astype(np.int64)
        ids = [ids[i] for i in live.tolist()]
    vectors = MappedVectors(blocks, dim, live)
    return ShardedIndex(kind, dim, vectors, ids, progress, dead_slots=len(dead))


def _map_shard(
    source: _ShardSource,
    root: Path | None,
    record: ShardRecord,
    dim: int,
    scratch: threading.local,
) -> FileBlock | None:
    """A sealed shard's vectors left in a verified file, or None (load it instead)."""
    if record.vectors == 0 or not flat_ip_layout_holds():
        return None
    header = flat_ip_header(dim, record.vectors)
    size = 4 * dim * record.vectors
    verified = False
    if root is not None:
        path = root.joinpath(*record.name.split("/"))
    else:
        cached = source._cached(record.sha256)
        if cached is None:
            return None
        path = cached
        if not path.is_file():
            data, match = source.fetch(record.name, record.index_digests)  # caches it
            verified = match.committed and path.is_file()
            del data
            if not verified:
                return None
        verified = verified or source.trust
    try:
        if path.stat().st_size != len(header) + size:
            return None
        if not verified:
            buffer = getattr(scratch, "buffer", None)
            if buffer is None or len(buffer) < size:
                buffer = scratch.buffer = bytearray(size)
            head = bytearray(len(header))
            parts = [memoryview(head), memoryview(buffer)[:size]]
            if not (
                read_file_into(path, parts)
                and head == header
                and match_committed(record.name, parts, record.index_digests).committed
            ):
                return None
        return FileBlock(path, len(header), record.vectors, dim)
    except FileNotFoundError:
        return None


def _drop_dead(
    vectors: np.ndarray, ids: list[ProductId], dead: list[int], chunk: int = 65536
) -> tuple[np.ndarray, list[ProductId]]:
    """The live rows, moved down in place (no second copy of the array): a live row only ever
    moves to a lower position, so chunks taken in order never overwrite a row still to move."""
    if max(dead) >= len(ids) or min(dead) < 0:
        raise StateError(f"a tombstone names slot {max(dead)} of {len(ids)}")
    live = np.flatnonzero(live_mask(len(ids), dead))
    for start in range(0, len(live), chunk):
        rows = live[start : start + chunk]
        vectors[start : start + len(rows)] = vectors[rows]
    return vectors[: len(live)], [ids[i] for i in live.tolist()]


def _load_shard_into(
    source: _ShardSource, record: ShardRecord, dim: int, out: np.ndarray
) -> list[ProductId]:
    if not source.read_vectors_into(record, dim, out):
        data, match = source.fetch(record.name, record.index_digests)
        vectors, _ = committed_vectors(data, record, dim, match)
        out[:] = vectors
    id_data, id_match = source.fetch(record.id_map, record.id_map_digests)
    ids, _ = committed_ids(id_data, record, id_match)
    if len(ids) != len(out):
        raise StateError(f"{record.id_map}: {len(ids)} ids for {len(out)} vectors")
    return ids


class _ShardSource:
    """Shard objects from the store or from `cache_dir`, each checked against its commit once.

    The cache keeps exact copies under their sha256 and reuses them while they still match
    (or without re-hashing, with `trust`).
    """

    def __init__(self, storage: Storage, cache_dir: Path | None, trust: bool) -> None:
        self.storage = storage
        self.cache_dir = cache_dir
        self.trust = trust
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def _cached(self, sha256: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{sha256}.bin"

    def read_vectors_into(self, record: ShardRecord, dim: int, out: np.ndarray) -> bool:
        """The fast path: an exactly committed IndexFlatIP file read straight into `out`.

        False (and `out` undefined) when the file is not local, not in the layout this faiss
        writes, or not exactly the committed bytes; the caller then takes the general path,
        which trims an uncommitted tail or names what is wrong.
        """
        if record.vectors == 0 or not flat_ip_layout_holds():
            return False  # nothing to read into (and a zero-size view cannot be cast to bytes)
        header = flat_ip_header(dim, record.vectors)
        head = bytearray(len(header))
        buffers = [memoryview(head), out.data.cast("B")]

        def exact() -> bool:
            return (
                head == header
                and match_committed(record.name, buffers, record.index_digests).committed
            )

        cached = self._cached(record.sha256)
        with contextlib.suppress(FileNotFoundError):
            if (
                cached is not None
                and read_file_into(cached, buffers)
                and head == header
                and (self.trust or exact())
            ):
                return True
        if not isinstance(self.storage, ReadsInto):
            return False
        try:
            if not (self.storage.read_exact_into(record.name, buffers) and exact()):
                return False
        except ObjectNotFound:
            return False  # the general path reports it
        if cached is not None:
            _write_atomic(cached, *buffers)
        return True

    def fetch(self, name: str, digests: Digests) -> tuple[bytes, Match]:
        """An object's bytes and match_committed's answer for them."""
        cached = self._cached(digests.sha256)
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if self.trust:
                return data, trusted(name)
            match = match_committed(name, data, digests)
            if match.committed:
                return data, match
        data = fetch_committed(self.storage.get, name)
        match = match_committed(name, data, digests)
        if match.committed and cached is not None:
            _write_atomic(cached, data)
        return data, match


def _write_atomic(path: Path, *parts: bytes | bytearray | memoryview) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        for part in parts:
            handle.write(part)
    os.replace(temp, path)
