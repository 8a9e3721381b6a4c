"""A real uvicorn on 127.0.0.1 over stores built by the real build (`faiss-builder build`)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from application.settings import load_settings
from faiss_builder.cli import app as cli
from faiss_builder.demo import make_demo_catalog
from service.settings import ServiceSettings
from tests.support.tiny_clip import save_tiny_tokenizer

PRODUCTS = 24


@dataclass
class Running:
    url: str
    client: httpx.Client
    app: Any = None


def build(store: Path, catalog: Path, *args: str) -> dict:
    result = CliRunner().invoke(
        cli, ["build", "--store", str(store), "--catalog", str(catalog), "--json", *args]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    store: Path, catalog: Path | None, *, fast_lane: bool = True, **service: object
) -> Iterator[Running]:
    """uvicorn in a thread, serving `store`; waits until /health answers (any status)."""
    import uvicorn

    from service.app import create_app

    settings = load_settings(
        store=str(store), catalog=str(catalog) if catalog else "no-catalog.csv",
        allow_private_urls=True,
    )  # fmt: skip
    port = free_port()
    options = {"poll_s": 0.2, **service}
    app = create_app(
        settings,
        ServiceSettings(host="127.0.0.1", port=port, **options),  # type: ignore[arg-type]
        fast_lane=fast_lane,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/health")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            yield Running(url, client, app)
        finally:
            server.should_exit = True
            thread.join(10)


def wait_for_commit(client: httpx.Client, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health")
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "no commit loaded in time"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog, _ = make_demo_catalog(tmp_path_factory.mktemp("service-catalog"), PRODUCTS)
    return catalog


@pytest.fixture(scope="session")
def histogram_store(
    prefect_api: object, demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    store = tmp_path_factory.mktemp("service-histogram-store")
    build(store, demo_catalog, "--embedder", "histogram", "--batch-size", "8")
    return store


@pytest.fixture(scope="session")
def clip_text_model(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-clip-with-tokenizer")
    shutil.copytree(tiny_clip_dir, folder, dirs_exist_ok=True)
    return save_tiny_tokenizer(folder)


@pytest.fixture(scope="session")
def clip_store(
    prefect_api: object,
    demo_catalog: Path,
    clip_text_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    store = tmp_path_factory.mktemp("service-clip-store")
    build(store, demo_catalog, "--embedder", "clip", "--model", str(clip_text_model),
          "--batch-size", "8")  # fmt: skip
    return store


@pytest.fixture(scope="session")
def histogram_service(histogram_store: Path, demo_catalog: Path) -> Iterator[Running]:
    with serve(histogram_store, demo_catalog) as running:
        wait_for_commit(running.client)
        yield running


@pytest.fixture(scope="session")
def clip_service(clip_store: Path, demo_catalog: Path) -> Iterator[Running]:
    with serve(clip_store, demo_catalog) as running:
        wait_for_commit(running.client)
        yield running
