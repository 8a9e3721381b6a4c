"""Light value types shared by the fetcher, the embedders, the Modal app and the orchestrator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ProductId = int | str
KINDS: tuple[str, ...] = ("color", "structure", "combined")
VIEWS: tuple[str, ...] = ("color", "structure")


@dataclass(frozen=True)
class ImageRef:
    """One product image to embed: its catalog id and an http(s) URL or a local catalog path."""

    id: ProductId
    url: str


@dataclass(frozen=True)
class FailedProduct:
    """A product that could not be embedded; `reason` is a code from modal_workers.reasons."""

    id: ProductId
    reason: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchLimits:
    """Per-image limits on fetching and decoding untrusted images."""

    max_bytes: int = 20_000_000
    timeout_s: float = 20.0  # total wall-clock deadline per image, retries and redirects included
    max_pixels: int = 40_000_000
    max_redirects: int = 5
    retries: int = 2  # extra attempts, transient network errors / 5xx / 429 only
    allow_private_urls: bool = False
    local_root: str | None = None  # folder of a local catalog; enables local file paths
    # Folder that local paths must resolve inside (symlinks and `..` resolved); None = local_root.
    # Relative paths still start at local_root; this only widens (or moves) what they may reach.
    local_allowed_root: str | None = None
    threads: int = 16
    # Decoded pixels that one batch's threads may hold at once (~4-16 bytes each while decoding):
    # caps the memory of a batch's preparation; one image above it is decoded alone.
    max_pixels_in_flight: int = 64_000_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EmbedOutput:
    """Vectors of the successful refs (input order) and one FailedProduct per refused ref."""

    ids: list[ProductId]
    vectors: dict[str, np.ndarray]  # kind -> float32 (len(ids), dim), L2-normalised
    failures: list[FailedProduct] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        """Plain picklable data for crossing the Modal boundary."""
        return {
            "ids": list(self.ids),
            "vectors": {
                k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.vectors.items()
            },
            "failures": [f.to_dict() for f in self.failures],
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EmbedOutput:
        vectors = {k: np.asarray(v, dtype=np.float32) for k, v in data["vectors"].items()}
        failures = [FailedProduct(**f) for f in data["failures"]]
        return cls(ids=list(data["ids"]), vectors=vectors, failures=failures)


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Validate and de-duplicate requested kinds, keeping the canonical order."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown or empty kinds {unknown or list(kinds)}; choose from {KINDS}")
    return tuple(k for k in KINDS if k in kinds)


def views_for(kinds: Sequence[str]) -> tuple[str, ...]:
    """The views to compute for these kinds: combined needs both color and structure."""
    wanted = set(check_kinds(kinds))
    if "combined" in wanted:
        wanted |= {"color", "structure"}
    return tuple(v for v in VIEWS if v in wanted)
