"""ModalEmbedClient: refuses at once without credentials; wire format round-trips."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modal_workers.remote import ModalEmbedClient, wire_arguments
from modal_workers.types import EmbedOutput, FailedProduct, FetchLimits, ImageRef


def run_client_without_credentials(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    empty_config = tmp_path / "modal.toml"
    empty_config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env |= {"MODAL_CONFIG_PATH": str(empty_config), "HOME": str(tmp_path)}
    code = (
        "from modal_workers.remote import ModalEmbedClient, ModalNotConfigured\n"
        "try:\n    ModalEmbedClient('clip')\nexcept ModalNotConfigured as exc:\n    print(exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )


def test_no_credentials_fails_at_once_naming_the_fix(tmp_path: Path) -> None:
    started = time.monotonic()
    message = run_client_without_credentials(tmp_path).stdout
    assert "modal token new" in message
    assert "MODAL_TOKEN_ID" in message and "modal deploy modal_workers/app.py" in message
    assert time.monotonic() - started < 15


def test_credentials_from_env_construct_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    client = ModalEmbedClient("histogram", None)
    assert (client.app_name, client.cls_name, client.model) == (
        "modal-faiss-builder",
        "Embedder",
        "",
    )


def test_wire_round_trip() -> None:
    refs = [ImageRef(7, "https://example.com/a.jpg"), ImageRef("x", "https://example.com/b.jpg")]
    assert wire_arguments(refs, ("color",), FetchLimits())[0] == [
        (7, refs[0].url),
        ("x", refs[1].url),
    ]
    output = EmbedOutput(
        ids=[7],
        vectors={"color": np.ones((1, 4), np.float32)},
        failures=[FailedProduct("x", "too_large", "m")],
    )
    back = EmbedOutput.from_wire(output.to_wire())
    assert back.ids == [7] and back.failures == output.failures
    np.testing.assert_array_equal(back.vectors["color"], output.vectors["color"])
