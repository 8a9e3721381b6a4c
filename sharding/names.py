"""Object names of the store layout (DESIGN.md §2) and their parsing; numbering starts at 00001."""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("color", "structure", "combined")
PROGRESS = "progress.json"
LEASE = "lease.json"

_PATTERNS = {
    "index": re.compile(r"^clip_(?P<kind>[a-z_]+)_shard_(?P<n>\d{5,})\.index$"),
    "id_map": re.compile(r"^id_map_(?P<kind>[a-z_]+)_shard_(?P<n>\d{5,})\.json$"),
    "manifest": re.compile(r"^manifest_(?P<kind>[a-z_]+)_(?P<n>\d{5,})\.json$"),
    "failed": re.compile(r"^failed_(?P<n>\d{5,})\.json$"),
    "full_id_map": re.compile(r"^id_map_(?P<kind>[a-z_]+)\.json$"),
}


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
