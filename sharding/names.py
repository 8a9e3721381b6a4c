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
_PATTERNS = {
    "index": re.compile(rf"^clip_{_KIND}_shard_(?P<n>\d{{5,}})\.index$"),
    "id_map": re.compile(rf"^id_map_{_KIND}_shard_(?P<n>\d{{5,}})\.json$"),
    "manifest": re.compile(rf"^manifest_{_KIND}_(?P<n>\d{{5,}})\.json$"),
    "tombstones": re.compile(rf"^tombstones_{_KIND}_(?P<n>\d{{5,}})\.json$"),
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
    ]
    if any((parsed := parse(name)) is None or parsed.kind != kind for name in made):
        raise ValueError(f"bad kind name {kind!r}: its object names would read as another kind's")
    return kind


def number(n: int) -> str:
    """The zero-padded number every numbered object uses."""
    return f"{n:05d}"


def shard_index(kind: str, n: int) -> str:
    return f"clip_{kind}_shard_{number(n)}.index"


def shard_id_map(kind: str, n: int) -> str:
    return f"id_map_{kind}_shard_{number(n)}.json"


def full_id_map(kind: str) -> str:
    return f"id_map_{kind}.json"


def manifest_segment(kind: str, n: int) -> str:
    return f"manifest_{kind}_{number(n)}.json"


def tombstone_chunk(kind: str, n: int) -> str:
    return f"tombstones_{kind}_{number(n)}.json"


def failure_chunk(n: int) -> str:
    return f"failed_{number(n)}.json"


@dataclass(frozen=True)
class ParsedName:
    """What a layout object name says: its role, kind (None for failure chunks) and number."""

    role: str
    kind: str | None
    number: int | None


def parse(name: str) -> ParsedName | None:
    """Parse a layout name; None for names outside the layout."""
    for role, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            groups = match.groupdict()
            n = groups.get("n")
            return ParsedName(role, groups.get("kind"), int(n) if n else None)
    return None
