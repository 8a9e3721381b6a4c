"""Test-wide isolation: no hub downloads, no analytics, a private Prefect home; shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports prefect or transformers.
_PREFECT_HOME = tempfile.mkdtemp(prefix="mfb-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_API_URL"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("MODAL_TOKEN_ID", None)
os.environ.pop("MODAL_TOKEN_SECRET", None)

import pytest  # noqa: E402

from tests.support.photos import write_photos  # noqa: E402
from tests.support.tiny_clip import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random CLIP (16-d projections); load it with from_pretrained(path)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real photographs as JPEG files: astronaut.jpg, coffee.jpg, ..."""
    directory = tmp_path_factory.mktemp("photos")
    write_photos(directory)
    return directory


@pytest.fixture(scope="session")
def prefect_api() -> object:
    """One Prefect test server for the session (flows, the CLI in-process, and subprocesses)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
