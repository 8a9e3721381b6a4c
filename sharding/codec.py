"""Byte formats of shard objects: FAISS IndexFlatIP files, JSON id maps, digests, size prediction."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

import faiss
import numpy as np
import orjson
import xxhash

from sharding.errors import ProductIdRefused

ProductId = int | str
Buffer = bytes | bytearray | memoryview
# Integer ids must survive every JSON reader exactly: orjson (and most tools) read integers
# outside int64/uint64 as floats.
INT_ID_MIN, INT_ID_MAX = -(2**63), 2**64 - 1


def sha256_hex(*parts: Buffer) -> str:
    """sha256 of the parts concatenated (the digest committed for outside tools, docs/store-format.md)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def xxh3_hex(*parts: Buffer) -> str:
    """XXH3-128 of the parts concatenated: the checksum readers verify shards with.

    It catches the same accidents as sha256 (torn or stale objects, bit rot) at about 15 times
    the speed (28 GB/s vs 1.8 GB/s on one core here), so verifying a load costs a fraction of
    reading it. It is no defence against a deliberate edit, and neither is sha256 here: whoever
    can rewrite a shard can rewrite progress.json too.
    """
    digest = xxhash.xxh3_128()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def encode_index(vectors: np.ndarray, dim: int) -> bytes:
    """Serialise vectors as an IndexFlatIP file, exactly as faiss.write_index would."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    if flat_ip_layout_holds():
        # One copy of the vectors instead of three (add, serialize, tobytes).
        return b"".join(
            (flat_ip_header(dim, len(vectors)), vectors.reshape(-1).view(np.uint8).data)
        )
    return _faiss_encode(vectors, dim)


def _faiss_encode(vectors: np.ndarray, dim: int) -> bytes:
    index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def decode_index(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


# faiss.write_index of an IndexFlatIP: fourcc, d, ntotal, two unused idx_t fields (1 << 20),
# is_trained, metric, then the codes vector as its float count + the raw float32 vectors.
_FLAT_IP_HEADER = struct.Struct("<4siqqqBiQ")


def flat_ip_header(dim: int, n: int) -> bytes:
    """The bytes faiss.write_index puts before the vectors of an n-vector IndexFlatIP."""
    unused = 1 << 20
    metric = faiss.METRIC_INNER_PRODUCT
    return _FLAT_IP_HEADER.pack(b"IxFI", dim, n, unused, unused, 1, metric, n * dim)


@cache
def flat_ip_layout_holds() -> bool:
    """Whether this faiss writes IndexFlatIP files as flat_ip_header + raw vectors.

    Checked against faiss itself once per process, so a faiss that changes its format turns the
    fast paths off (they fall back to faiss) instead of misreading files.
    """
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    with_vectors = _faiss_encode(vectors, 3) == flat_ip_header(3, 2) + vectors.tobytes()
    return with_vectors and _faiss_encode(vectors[:0], 3) == flat_ip_header(3, 0)


def flat_ip_vectors(data: bytes, dim: int, n: int) -> np.ndarray | None:
    """A zero-copy (n, dim) view of the vectors of an IndexFlatIP file, or None when `data` is not
    exactly an n-vector, dim-d IndexFlatIP file in the layout this faiss writes."""
    header = flat_ip_header(dim, n)
    if len(data) != len(header) + 4 * dim * n or not data.startswith(header):
        return None
    if not flat_ip_layout_holds():
        return None
    return np.frombuffer(data, np.float32, count=n * dim, offset=len(header)).reshape(n, dim)


def index_vectors(index: faiss.Index) -> np.ndarray:
    """All vectors of a flat index, in insertion order, as an (n, d) float32 array."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


def encode_ids(ids: Sequence[ProductId]) -> bytes:
    """Compact, deterministic JSON so the sha256 of a re-serialised id map is reproducible."""
    return json.dumps(list(ids), separators=(",", ":")).encode()


def decode_ids(data: bytes) -> list[ProductId]:
    """The ids of an id map, exactly. orjson, not json: twice as fast, a sixth of loading an index.

    orjson reads integers beyond uint64 as floats; an id map holding one (written before such
    ids were refused) is read again with json, which keeps them exact. A real float is refused.
    """
    ids: Any = orjson.loads(data)  # its JSONDecodeError is a ValueError, as json's
    if not isinstance(ids, list):
        raise ValueError("an id map must be a JSON array")
    if not set(map(type, ids)) <= {int, str}:
        ids = json.loads(data)
        odd = next((i for i in ids if type(i) not in (int, str)), None)
        if odd is not None:
            raise ValueError(f"an id map holds {type(odd).__name__} ids; ids are ints or strings")
    return ids


def refuse_inexact_id(product_id: object) -> None:
    """Raise ProductIdRefused for an id the store cannot keep exactly: ids are str, or int in
    int64/uint64 range (bool is not an id)."""
    if type(product_id) is str:
        return
    if type(product_id) is int:
        if INT_ID_MIN <= product_id <= INT_ID_MAX:
            return
        digits = int(product_id.bit_length() * 0.30103) + 1  # str() refuses > 4300 digits
        raise ProductIdRefused(
            f"product id of about {digits} digits is outside int64/uint64: integer ids must lie in "
            f"[{INT_ID_MIN}, {INT_ID_MAX}] (use a string id for larger numbers)"
        )
    raise ProductIdRefused(
        f"product id of type {type(product_id).__name__} refused: ids are int or str"
    )


@cache
def empty_index_bytes() -> int:
    """Header size of an empty IndexFlatIP file (45 bytes in faiss 1.15, measured, not assumed)."""
    return len(_faiss_encode(np.zeros((0, 1), dtype=np.float32), 1))


def predicted_index_bytes(dim: int, n: int) -> int:
    """Exact file size of an IndexFlatIP of n vectors of dimension dim."""
    return empty_index_bytes() + 4 * dim * n


def shard_capacity(dim: int, max_vectors: int, max_bytes: int) -> int:
    """Most vectors one shard may hold without passing either limit."""
    by_bytes = (max_bytes - empty_index_bytes()) // (4 * dim)
    return min(max_vectors, by_bytes)
