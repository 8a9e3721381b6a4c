"""SupabaseStore through the official client against a server that answers like Supabase."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from sharding import (
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageAuthError,
    StorageUnavailable,
    check_store,
    load_index,
    read_progress,
)
from sharding.supabase_store import RetryPolicy, SupabaseStore, create_supabase_client
from tests.sharding.builds import Catalog, run_build
from tests.support.supabase_storage_server import StoredObject, SupabaseStorageServer


def test_put_get_exists_and_content_types(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer
) -> None:
    supabase_store.put("clip_color_shard_00001.index", b"\x01\x02")
    supabase_store.put("progress.json", b"{}")
    assert supabase_store.get("clip_color_shard_00001.index") == b"\x01\x02"
    assert supabase_store.exists("progress.json") and not supabase_store.exists("nope.json")
    objects = storage_server.objects
    assert (
        objects["faiss/faiss/clip_color_shard_00001.index"].content_type
        == "application/octet-stream"
    )
    assert objects["faiss/faiss/progress.json"].content_type == "application/json"
    uploads = [
        r for r in storage_server.requests if r.method == "POST" and "/object/faiss/" in r.path
    ]
    assert {r.headers.get("x-upsert") for r in uploads} == {"true"}


def test_create_only_and_missing_map_to_typed_errors(supabase_store: SupabaseStore) -> None:
    supabase_store.put("lease.json", b"{}", overwrite=False)
    with pytest.raises(ObjectExists, match="409"):
        supabase_store.put("lease.json", b"{}", overwrite=False)
    with pytest.raises(ObjectNotFound, match="404"):
        supabase_store.get("missing.json")


def test_list_pages_past_the_default_and_delete_chunks(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer
) -> None:
    names = [f"id_map_color_shard_{i:05d}.json" for i in range(1, 2102)]
    for name in [*names, "../other/elsewhere.json"]:
        storage_server.objects[f"faiss/faiss/{name}"] = StoredObject(b"[]", "application/json")
    storage_server.objects["faiss/faiss/sub/nested.json"] = StoredObject(b"[]", "application/json")
    assert supabase_store.list() == names
    assert supabase_store.list("id_map_color_shard_02") == names[1999:]
    supabase_store.delete([*names[:1500], "never-there.json"])
    deletes = [r for r in storage_server.requests if r.method == "DELETE"]
    assert len(deletes) == 2  # 1,501 names in chunks of at most 1,000
    assert supabase_store.list() == names[1500:]


def test_transient_faults_are_retried_with_capped_backoff(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer, sleeps: list[float]
) -> None:
    storage_server.faults.fail_next(2, status=503)
    storage_server.faults.reset_next(1)
    storage_server.faults.stall_next(1, seconds=1.5)  # past the client's 0.5 s timeout
    supabase_store.put("a.index", b"abc")
    assert supabase_store.get("a.index") == b"abc"
    assert [a for a, _, _ in storage_server.faults.fired] == ["status", "status", "reset", "stall"]
    assert len(sleeps) == 4 and all(0 <= s <= 5.0 for s in sleeps)


def test_faults_that_outlast_the_retries_raise_unavailable(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer, sleeps: list[float]
) -> None:
    storage_server.faults.fail_next(5, status=500)
    with pytest.raises(StorageUnavailable, match="5 attempts"):
        supabase_store.get("a.index")
    assert len(sleeps) == 4


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_s=0.2, cap_s=5.0)
    assert max(policy.delay(0) for _ in range(200)) <= 0.2
    assert max(policy.delay(9) for _ in range(200)) <= 5.0
    assert max(policy.delay(9) for _ in range(200)) > 2.0


@pytest.mark.parametrize("gateway", [False, True])
def test_too_large_is_permanent_in_both_shapes(
    supabase_store: SupabaseStore,
    storage_server: SupabaseStorageServer,
    sleeps: list[float],
    gateway: bool,
) -> None:
    storage_server.max_object_bytes = 10
    storage_server.faults.gateway_413 = gateway
    with pytest.raises(ObjectTooLarge, match="413"):
        supabase_store.put("big.index", b"x" * 11)
    assert sleeps == []


def test_bad_key_is_an_auth_error_never_retried_and_never_printed(
    storage_server: SupabaseStorageServer, sleeps: list[float]
) -> None:
    secret = "sb-secret-do-not-print"
    client = create_supabase_client(storage_server.url, SecretStr(secret), timeout_s=0.5)
    store = SupabaseStore(client, "faiss", retry=RetryPolicy(sleep=sleeps.append))
    with pytest.raises(StorageAuthError, match="SUPABASE_KEY was not accepted") as refused:
        store.get("progress.json")
    # The download is answered as anonymous ("Bucket not found"); the bucket record says why.
    assert sleeps == [] and [r.path for r in storage_server.requests] == [
        "/storage/v1/object/faiss/faiss/progress.json",
        "/storage/v1/bucket/faiss",
    ]
    assert secret not in str(refused.value) and secret not in repr(store) + store.describe()


def test_a_whole_build_under_random_faults_is_exactly_once(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer
) -> None:
    storage_server.faults.set_rate(0.15, seed=7, actions=("status", "reset", "lose_response"))
    run_build(supabase_store, catalog=Catalog(n=40))
    storage_server.faults.clear()
    assert len(storage_server.faults.fired) > 5
    assert load_index(supabase_store, "color").ids == Catalog(n=40).indexed()
    assert check_store(supabase_store).ok


def test_ambiguous_commit_that_landed_is_recognised(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer
) -> None:
    run_build(supabase_store, catalog=Catalog(n=16))
    # progress.json lands every time but its answer is lost until the retries run out.
    storage_server.faults.lose_response_next(5, method="POST", path_contains="progress.json")
    with pytest.raises(StorageUnavailable):
        run_build(supabase_store, catalog=Catalog(n=24), run_id="ambiguous")
    landed = read_progress(supabase_store)
    assert landed is not None and landed.run_id == "ambiguous"
    run_build(supabase_store, catalog=Catalog(n=24), run_id="resume")
    index = load_index(supabase_store, "combined")
    assert index.ids == Catalog(n=24).indexed()
    assert np.unique(index.ids).size == len(index.ids)
    assert check_store(supabase_store).ok
