"""Object names of the store layout (docs/store-format.md) and their parsing; numbers from 00001.

Sharding holds no list of kinds: callers name them (the application's list lives with the
embedders). A kind is any name matching KIND_PATTERN whose object names parse back to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROGRESS = "progress.json"
LEASE = "lease.json"
LAST_COMMIT = "last_commit.json"
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

_KIND = r"(?P<kind>[a-z][a-z0-9_]*)"
# A compacted kind's layout objects carry its compaction number (KindProgress.compaction, 1+):
# `_c{CCC}` after the kind. The kind is matched lazily, so `color_c001` reads as kind `color` of
# compaction 1 (check_kind then refuses a kind named `color_c001`: its names would not parse back).
_KIND_C = r"(?P<kind>[a-z][a-z0-9_]*?)(?:_c(?P<c>\d{3,}))?"
_PATTERNS = {
    "index": re.compile(rf"^clip_{_KIND_C}_shard_(?P<n>\d{{5,}})\.index$"),
    "id_map": re.compile(rf"^id_map_{_KIND_C}_shard_(?P<n>\d{{5,}})\.json$"),
    "manifest": re.compile(rf"^manifest_{_KIND_C}_(?P<n>\d{{5,}})\.json$"),
    "tombstones": re.compile(rf"^tombstones_{_KIND_C}_(?P<n>\d{{5,}})\.json$"),
    "failed": re.compile(r"^failed_(?P<n>\d{5,})\.json$"),
    "full_id_map": re.compile(rf"^id_map_{_KIND}\.json$"),
}


def check_kind(kind: str) -> str:
    """The kind name, or ValueError: it must match KIND_PATTERN and its names must parse back
    to it (so 'color_shard_00001', whose full id map would read as a shard of 'color', is not)."""
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        raise ValueError(
            f"bad kind name {kind!r}: lowercase letters, digits and '_', a letter first, "
            "at most 32 characters"
        )
    made = [
        full_id_map(kind),
        shard_index(kind, 1),
        shard_id_map(kind, 1),
        manifest_segment(kind, 1),
        tombstone_chunk(kind, 1),
        shard_index(kind, 1, 1),
        manifest_segment(kind, 1, 1),
    ]
    if any((parsed := parse(name)) is None or parsed.kind != kind for name in made):
        raise ValueError(f"bad kind name {kind!r}: its object names would read as another kind's")
    return kind


def number(n: int) -> str:
    """The zero-padded number every numbered object uses."""
    return f"{n:05d}"


def _tag(kind: str, compaction: int) -> str:
    """The kind as its layout names spell it: `color`, or `color_c002` after two compactions."""
    return kind if not compaction else f"{kind}_c{compaction:03d}"


def shard_index(kind: str, n: int, compaction: int = 0) -> str:
    return f"clip_{_tag(kind, compaction)}_shard_{number(n)}.index"


def shard_id_map(kind: str, n: int, compaction: int = 0) -> str:
    return f"id_map_{_tag(kind, compaction)}_shard_{number(n)}.json"


def full_id_map(kind: str) -> str:
    return f"id_map_{kind}.json"


def manifest_segment(kind: str, n: int, compaction: int = 0) -> str:
    return f"manifest_{_tag(kind, compaction)}_{number(n)}.json"


def tombstone_chunk(kind: str, n: int, compaction: int = 0) -> str:
    return f"tombstones_{_tag(kind, compaction)}_{number(n)}.json"


def failure_chunk(n: int) -> str:
    return f"failed_{number(n)}.json"


@dataclass(frozen=True)
class ParsedName:
    """What a layout object name says: its role, kind (None for failure chunks), number, and
    the kind's compaction it belongs to (0: never compacted)."""

    role: str
    kind: str | None
    number: int | None
    compaction: int = 0


def parse(name: str) -> ParsedName | None:
    """Parse a layout name; None for names outside the layout."""
    for role, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            groups = match.groupdict()
            n, c = groups.get("n"), groups.get("c")
            return ParsedName(role, groups.get("kind"), int(n) if n else None, int(c) if c else 0)
    return None
