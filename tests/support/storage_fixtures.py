"""Pytest fixtures for a local Supabase Storage server and an official client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from sharding.supabase_store import RetryPolicy, SupabaseStore, create_supabase_client
from tests.support.supabase_storage_server import SupabaseStorageServer


@pytest.fixture
def storage_server() -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(buckets=("faiss",)) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def supabase_store(storage_server: SupabaseStorageServer, sleeps: list[float]) -> SupabaseStore:
    client = create_supabase_client(
        storage_server.url, SecretStr(storage_server.key), timeout_s=0.5
    )
    return SupabaseStore(client, "faiss", retry=RetryPolicy(sleep=sleeps.append))
