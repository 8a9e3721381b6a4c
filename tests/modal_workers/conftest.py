"""Fixtures for modal_workers tests: the local image server and loaded embedders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modal_workers.embedders import ImageEmbedder, load_embedder
from modal_workers.types import FetchLimits
from tests.support.image_server import ImageServer


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture
def local_limits() -> FetchLimits:
    """Limits for the loopback test server: private URLs allowed, short deadline, fast retries."""
    return FetchLimits(allow_private_urls=True, timeout_s=1.5, retries=1)


@pytest.fixture(scope="session")
def clip_embedder(tiny_clip_dir: Path) -> ImageEmbedder:
    return load_embedder("clip", str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="session")
def histogram_embedder() -> ImageEmbedder:
    return load_embedder("histogram")
