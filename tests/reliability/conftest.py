"""Shared fixtures of the reliability suite: one demo catalog and one clean reference build."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from faiss_builder.demo import make_demo_catalog
from sharding.local_store import LocalStore
from sharding.supabase_store import SupabaseStore, create_supabase_client
from tests.reliability.harness import Contents, cli_env, contents, run_cli
from tests.reliability.slow_server import SlowStorageServer

PRODUCTS = 240
SMALL = 120
BUCKET = "faiss"


@dataclass(frozen=True)
class Clean:
    """The reference: a store built once without faults, and what it holds."""

    store: Path
    contents: Contents
    seconds: float


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred real photo variants (CSV with relative paths), ids 1..PRODUCTS."""
    path, _ = make_demo_catalog(tmp_path_factory.mktemp("reliability-catalog"), PRODUCTS)
    return path


@pytest.fixture(scope="session")
def small_catalog(catalog: Path) -> Path:
    """The first SMALL products of `catalog` (same images), for the slower Supabase runs."""
    path = catalog.with_name("catalog-small.csv")
    lines = catalog.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: SMALL + 1]), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def clean(prefect_api: object, catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Clean:
    work = tmp_path_factory.mktemp("clean")
    store = work / "store"
    env = cli_env(prefect_api, work / "prefect")
    result = run_cli(["build", "--store", str(store), "--catalog", str(catalog)], env, work)
    assert result.code == 0, result.stderr
    return Clean(store, contents(LocalStore(store)), result.seconds)


@pytest.fixture
def env(prefect_api: object, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess for this test (histogram, small shards, short lease)."""
    return cli_env(prefect_api, tmp_path / "prefect")


@pytest.fixture
def slow_server() -> Iterator[SlowStorageServer]:
    with SlowStorageServer(buckets=(BUCKET,)) as server:
        yield server


def supabase_env(env: dict[str, str], server: SlowStorageServer, **extra: str) -> dict[str, str]:
    """`env` pointed at the local Supabase Storage server (store = supabase)."""
    return {
        **env,
        "FAISS_BUILDER_STORE": "supabase",
        "SUPABASE_URL": server.url,
        "SUPABASE_KEY": server.key,
        "SUPABASE_BUCKET": BUCKET,
        "SUPABASE_TIMEOUT_S": "0.5",
        **extra,
    }


def server_store(server: SlowStorageServer) -> SupabaseStore:
    """An in-process client on the same bucket and prefix the CLI uses."""
    client = create_supabase_client(server.url, SecretStr(server.key), timeout_s=5)
    return SupabaseStore(client, BUCKET, prefix="faiss/")
