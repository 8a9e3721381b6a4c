"""Is this the committed object? One answer for both digests a commit records.

A commit names every object by sha256 (the contract for outside tools, docs/store-format.md)
and, for shard objects since format 2, by XXH3-128 too. Readers verify the XXH3-128 checksum
when there is one (15 times faster); `check` audits both (`audit=True`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sharding.codec import Buffer, sha256_hex, xxh3_hex


@dataclass(frozen=True)
class Digests:
    """What a commit says an object's bytes hash to (xxh3 None: committed by sha256 only)."""

    sha256: str
    xxh3: str | None = None


@dataclass(frozen=True)
class Match:
    """The answer of `match_committed`: which committed digests the bytes matched.

    Each of `xxh3` / `sha256` is True (matches), False (differs) or None (not compared: not
    committed, or not needed for a reader's check). `assumed` marks bytes taken on trust without
    hashing (a trusted cache).
    """

    name: str
    xxh3: bool | None
    sha256: bool | None
    audit: bool = False
    assumed: bool = False

    @property
    def committed(self) -> bool:
        """Whether these are the committed bytes: every compared digest matches."""
        if self.assumed:
            return True
        compared = [v for v in (self.xxh3, self.sha256) if v is not None]
        return bool(compared) and all(compared)

    def describe(self) -> str:
        """What matched or what is off, in words for an error message."""
        if self.assumed:
            return f"{self.name}: taken from a trusted cache without hashing"
        if self.committed:
            return f"{self.name}: matches the committed checksums"
        if self.xxh3 and self.sha256 is False:
            return (
                f"{self.name}: XXH3-128 matches but sha256 differs from the one committed in "
                "progress.json (the record or the digest was edited)"
            )
        if self.sha256 and self.xxh3 is False:
            return (
                f"{self.name}: sha256 matches but XXH3-128 differs from the one committed in "
                "progress.json (the record was edited)"
            )
        which = "XXH3-128" if self.xxh3 is False else "sha256"
        return f"{self.name}: bytes differ from the ones committed in progress.json ({which})"


def match_committed(
    name: str, data: Buffer | Sequence[Buffer], digests: Digests, *, audit: bool = False
) -> Match:
    """Whether `data` (bytes, or parts to concatenate) is the committed object `name`.

    Readers (audit False) compare XXH3-128 when it was committed, else sha256; `check`
    (audit True) compares both, so a record whose sha256 alone was changed is caught.
    """
    parts: Sequence[Buffer] = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    xxh3 = None if digests.xxh3 is None else xxh3_hex(*parts) == digests.xxh3
    sha256 = None
    if audit or xxh3 is None:
        sha256 = sha256_hex(*parts) == digests.sha256
    return Match(name, xxh3=xxh3, sha256=sha256, audit=audit)


def trusted(name: str) -> Match:
    """A Match for bytes taken on trust (files of a trusted cache)."""
    return Match(name, xxh3=None, sha256=None, assumed=True)
