"""A full Supabase index read with a wrong key, an anon key or a missing bucket never looks empty:
`status`, `check` and `search` exit 3 with one line naming the bucket (issue 13, item 8)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from faiss_builder.errors import EXIT_STORAGE
from sharding.supabase_store import SupabaseStore, create_supabase_client
from tests.reliability.harness import run_cli
from tests.sharding.builds import Catalog, run_build
from tests.support.supabase_storage_server import SupabaseStorageServer

BUCKET = "faiss"
WRONG_KEY = "sb-wrong-key-canary-4711"


@pytest.fixture(scope="module")
def full_server() -> Iterator[SupabaseStorageServer]:
    with SupabaseStorageServer(buckets=(BUCKET,)) as server:
        client = create_supabase_client(server.url, SecretStr(server.key), timeout_s=5)
        run_build(SupabaseStore(client, BUCKET, prefix="faiss/"), catalog=Catalog(n=24))
        yield server


def _env(server: SupabaseStorageServer, key: str, bucket: str) -> dict[str, str]:
    dropped = ("FAISS_BUILDER_", "SUPABASE_", "MODAL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return env | {
        "FAISS_BUILDER_STORE": "supabase",
        "SUPABASE_URL": server.url,
        "SUPABASE_KEY": key,
        "SUPABASE_BUCKET": bucket,
        "SUPABASE_TIMEOUT_S": "5",
    }


@pytest.mark.parametrize(
    ("who", "bucket", "commands"),
    [
        pytest.param("wrong", BUCKET, [["status"]], id="wrong-key"),
        pytest.param("anon", BUCKET, [["status"], ["check"], ["search", "--id", "3"]], id="anon"),
        pytest.param("service", "no-such-bucket", [["status"]], id="missing-bucket"),
    ],
)
def test_an_unreadable_store_is_exit_3_never_empty(
    full_server: SupabaseStorageServer,
    tmp_path: Path,
    who: str,
    bucket: str,
    commands: list[list[str]],
) -> None:
    key = {"wrong": WRONG_KEY, "anon": full_server.anon_key, "service": full_server.key}[who]
    for command in commands:
        result = run_cli(
            [*command, "--store", "supabase"], _env(full_server, key, bucket), tmp_path
        )
        lines = result.stderr.strip().splitlines()
        assert result.code == EXIT_STORAGE, (command, result.code, result.stdout, result.stderr)
        assert len(lines) == 1 and f"bucket {bucket}" in lines[0], result.stderr
        assert "empty" not in (result.stdout + result.stderr).lower()
        assert key not in result.stdout + result.stderr
    ok = run_cli(
        ["status", "--store", "supabase"], _env(full_server, full_server.key, BUCKET), tmp_path
    )
    assert ok.code == 0 and "24" in ok.stdout, ok.stdout + ok.stderr  # the index is there
