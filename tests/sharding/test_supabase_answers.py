"""The test server answers as the real Supabase Storage does, and the store reads those answers
right: a store it cannot read (wrong key, anon key, missing bucket) never looks empty."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sharding.errors import (
    BucketNotFound,
    ObjectNotFound,
    ObjectTooLarge,
    StorageAuthError,
    StorageError,
)
from sharding.state import read_progress
from sharding.storage import IMMUTABLE_MAX_AGE_S
from sharding.supabase_store import RetryPolicy, SupabaseStore, create_supabase_client
from tests.sharding.builds import Catalog, run_build
from tests.support.supabase_storage_server import SupabaseStorageServer

SERVICE = "service-role-test-key"
ANON = "anon-test-key"


def _call(
    server: SupabaseStorageServer, method: str, path: str, token: str | None, **kwargs: Any
) -> httpx.Response:
    headers = {"apikey": token or ""}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(
        method, f"{server.url}/storage/v1/{path}", headers=headers, timeout=5, **kwargs
    )


def _upload(server: SupabaseStorageServer, method: str, token: str, path: str) -> httpx.Response:
    files = {"file": ("x", b"data", "application/octet-stream")}
    return _call(server, method, f"object/{path}", token, files=files, data={"cacheControl": "0"})


def _store(server: SupabaseStorageServer, key: str, bucket: str = "faiss") -> SupabaseStore:
    client = create_supabase_client(server.url, SecretStr(key), timeout_s=2)
    return SupabaseStore(client, bucket, retry=RetryPolicy(sleep=lambda _s: None))


def test_the_server_answers_bad_tokens_anon_keys_and_missing_buckets_as_supabase_does(
    storage_server: SupabaseStorageServer,
) -> None:
    assert _upload(storage_server, "POST", SERVICE, "faiss/a.bin").status_code == 200
    # A bad, expired or missing token on a download or info route is anonymous: a private
    # bucket is then "Bucket not found", its own error beside "Object not found".
    for token in ("not-a-jwt", None):
        for route in ("object/faiss/a.bin", "object/info/faiss/a.bin"):
            answer = _call(storage_server, "GET", route, token)
            assert (answer.status_code, answer.json()) == (
                400,
                {
                    "statusCode": "404",
                    "error": "Bucket not found",
                    "message": "Bucket not found",
                    "code": "NoSuchBucket",
                },
            )
    missing = _call(storage_server, "GET", "object/faiss/missing.bin", SERVICE)
    assert missing.status_code == 400
    assert missing.json() | {"message": "-"} == {
        "statusCode": "404",
        "error": "not_found",
        "message": "-",
        "code": "NoSuchKey",
    }
    # Writes, list, sign and delete verify the token: 403 AccessDenied.
    bad_write = _upload(storage_server, "POST", "not-a-jwt", "faiss/b.bin")
    assert bad_write.status_code == 400 and bad_write.json()["statusCode"] == "403"
    assert bad_write.json()["code"] == "AccessDenied"
    # A valid anon key sees no object, writes nothing (row-level security), lists nothing.
    assert _call(storage_server, "GET", "object/faiss/a.bin", ANON).json()["code"] == "NoSuchKey"
    anon_write = _upload(storage_server, "POST", ANON, "faiss/b.bin").json()
    assert anon_write["statusCode"] == "403" and "row-level security" in anon_write["message"]
    listed = _call(storage_server, "POST", "object/list/faiss", ANON, json={"prefix": ""})
    assert (listed.status_code, listed.json()) == (200, [])
    # A missing bucket lists as empty and signs with per-path errors, both HTTP 200.
    listed = _call(storage_server, "POST", "object/list/nope", SERVICE, json={"prefix": ""})
    assert (listed.status_code, listed.json()) == (200, [])
    signed = _call(
        storage_server, "POST", "object/sign/nope", SERVICE, json={"paths": ["a"], "expiresIn": 60}
    )
    assert signed.status_code == 200 and signed.json()[0]["signedURL"] is None
    assert "does not exist" in signed.json()[0]["error"]
    # PUT of a missing object creates it; every upload keeps the client's cache-control.
    assert _upload(storage_server, "PUT", SERVICE, "faiss/new.bin").status_code == 200
    assert storage_server.objects["faiss/new.bin"].cache_control == "max-age=0"
    served = _call(storage_server, "GET", "object/faiss/new.bin", SERVICE)
    assert served.headers["cache-control"] == "max-age=0"
    # Unknown routes: HTTP 404 with a numeric statusCode. Every error body carries `code`.
    assert _call(storage_server, "GET", "nowhere", SERVICE).json()["statusCode"] == 404
    for answer in (bad_write.json(), anon_write, missing.json()):
        assert answer["code"]


@pytest.mark.parametrize(
    ("key", "bucket", "expected", "says"),
    [
        pytest.param("sb-wrong-key", "faiss", StorageAuthError, "not accepted", id="wrong-key"),
        pytest.param(ANON, "faiss", BucketNotFound, "not the service-role key", id="anon-key"),
        pytest.param(SERVICE, "nope", BucketNotFound, "bucket 'nope' not found", id="no-bucket"),
    ],
)
def test_a_store_it_cannot_read_is_a_storage_error_never_an_empty_store(
    storage_server: SupabaseStorageServer,
    key: str,
    bucket: str,
    expected: type[StorageError],
    says: str,
) -> None:
    run_build(_store(storage_server, SERVICE), catalog=Catalog(n=16))  # a full index
    store = _store(storage_server, key, bucket)
    for read in (lambda: read_progress(store), store.list, lambda: store.exists("progress.json")):
        with pytest.raises(expected, match=says) as refused:
            read()
        message = str(refused.value)
        assert not isinstance(refused.value, ObjectNotFound)
        assert "\n" not in message and f"bucket {bucket}" in message and key not in message


def test_a_service_key_on_an_empty_bucket_is_an_empty_store_after_one_bucket_check(
    storage_server: SupabaseStorageServer,
) -> None:
    store = _store(storage_server, SERVICE)
    assert read_progress(store) is None and store.list() == []
    with pytest.raises(ObjectNotFound):
        store.get("missing.json")
    assert [r.path for r in storage_server.requests].count("/storage/v1/bucket/faiss") == 1


def test_mutable_objects_are_never_cached_and_immutable_ones_are(
    supabase_store: SupabaseStore, storage_server: SupabaseStorageServer
) -> None:
    supabase_store.put("progress.json", b"{}")
    supabase_store.put("clip_color_shard_00001.index", b"sealed", immutable=True)
    served = {
        name: _call(storage_server, "GET", f"object/faiss/faiss/{name}", SERVICE)
        for name in ("progress.json", "clip_color_shard_00001.index")
    }
    assert served["progress.json"].headers["cache-control"] == "no-cache"
    assert served["clip_color_shard_00001.index"].headers["cache-control"] == (
        f"max-age={IMMUTABLE_MAX_AGE_S}"
    )
    info = supabase_store._files.info("faiss/progress.json")
    assert info["cache_control"] == "no-cache"


def test_too_large_names_the_size_and_the_bucket_limit(
    storage_server: SupabaseStorageServer,
) -> None:
    storage_server.bucket_limits["faiss"] = 1000
    store = _store(storage_server, SERVICE)
    assert store.bucket_file_size_limit() == 1000
    assert "file size limit 1,000 bytes" in store.check_access()
    with pytest.raises(ObjectTooLarge) as refused:
        store.put("clip_color_shard_00001.index", b"x" * 1500)
    message = str(refused.value)
    assert "1,500 bytes" in message and "limit (1,000 bytes)" in message and "lower" in message
    assert "\n" not in message
    del storage_server.bucket_limits["faiss"]
    assert _store(storage_server, SERVICE).bucket_file_size_limit() is None
