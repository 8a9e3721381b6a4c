"""Byte formats of shard objects: FAISS IndexFlatIP files, JSON id maps, sha256, size prediction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from typing import Any

import faiss
import numpy as np

ProductId = int | str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_index(vectors: np.ndarray, dim: int) -> bytes:
    """Serialise vectors as an IndexFlatIP file, exactly as faiss.write_index would."""
    index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def decode_index(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def index_vectors(index: faiss.Index) -> np.ndarray:
    """All vectors of a flat index, in insertion order, as an (n, d) float32 array."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return np.asarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)


def encode_ids(ids: Sequence[ProductId]) -> bytes:
    """Compact, deterministic JSON so the sha256 of a re-serialised id map is reproducible."""
    return json.dumps(list(ids), separators=(",", ":")).encode()


def decode_ids(data: bytes) -> list[ProductId]:
    ids: Any = json.loads(data)
    if not isinstance(ids, list):
        raise ValueError("an id map must be a JSON array")
    return ids


@cache
def empty_index_bytes() -> int:
    """Header size of an empty IndexFlatIP file (45 bytes in faiss 1.15, measured, not assumed)."""
    return len(encode_index(np.zeros((0, 1), dtype=np.float32), 1))


def predicted_index_bytes(dim: int, n: int) -> int:
    """Exact file size of an IndexFlatIP of n vectors of dimension dim."""
    return empty_index_bytes() + 4 * dim * n


def shard_capacity(dim: int, max_vectors: int, max_bytes: int) -> int:
    """Most vectors one shard may hold without passing either limit."""
    by_bytes = (max_bytes - empty_index_bytes()) // (4 * dim)
    return min(max_vectors, by_bytes)
