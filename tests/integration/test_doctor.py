"""The doctor's read-only checks against the real stack: one result per check, no secrets."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from pydantic import SecretStr

from faiss_builder.doctor import CheckResult, SupabaseTarget, check_shard_size, jwt_role, run_checks
from tests.integration.storage_stub import StorageStub
from tests.support.postgrest_stack import SupabaseStack, free_port
from tests.support.supabase_storage_server import SupabaseStorageServer


@pytest.fixture
def target(supabase_stack: SupabaseStack, storage: StorageStub) -> SupabaseTarget:
    key = SecretStr(supabase_stack.service_key)
    return SupabaseTarget(supabase_stack.url, key, buckets=("images",))


@pytest.fixture
def prefect_api() -> Iterator[str]:
    """A stand-in Prefect server answering GET /api/health like the real one."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/api/health"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def no_secret_in(results: list[CheckResult], *secrets: str) -> bool:
    text = "\n".join(result.line() for result in results)
    return not any(secret in text for secret in secrets)


def test_a_healthy_setup_passes_every_check_without_writing(
    supabase_stack: SupabaseStack, target: SupabaseTarget, prefect_api: str
) -> None:
    supabase_stack.gateway.seen.clear()
    results = run_checks(target, prefect_api_url=prefect_api)
    assert [r.name for r in results] == [
        "supabase reachable",
        "key role",
        "catalog table",
        "bucket images",
        "prefect api",
    ]
    assert all(r.ok for r in results), [r.line() for r in results]
    assert by_name(results)["key role"].detail == "service_role"
    assert {method for method, _ in supabase_stack.gateway.seen} == {"GET"}
    assert no_secret_in(results, supabase_stack.service_key)


def test_anon_key_fails_role_and_table_without_showing_the_key(
    supabase_stack: SupabaseStack, target: SupabaseTarget
) -> None:
    results = by_name(run_checks(replace(target, key=SecretStr(supabase_stack.anon_key))))
    assert not results["key role"].ok
    assert "role anon" in results["key role"].detail
    assert not results["catalog table"].ok
    assert "permission denied" in results["catalog table"].detail
    assert no_secret_in(list(results.values()), supabase_stack.anon_key)


def test_missing_table_column_and_bucket_are_named(target: SupabaseTarget) -> None:
    assert (
        "no_table" in by_name(run_checks(replace(target, table="no_table")))["catalog table"].detail
    )
    results = by_name(run_checks(replace(target, brand_column="maker", buckets=("nope",))))
    assert not results["catalog table"].ok
    assert "maker" in results["catalog table"].detail
    assert not results["bucket nope"].ok
    assert results["bucket nope"].detail == "Bucket not found"


def test_unreachable_supabase_fails_fast_and_skips_dependent_checks() -> None:
    target = SupabaseTarget(f"http://127.0.0.1:{free_port()}", SecretStr("x.y.z"), buckets=("b",))
    results = run_checks(target, timeout_s=2)
    assert [(r.name, r.ok) for r in results] == [
        ("supabase reachable", False),
        ("key role", False),
        ("catalog table", False),
        ("bucket b", False),
    ]
    assert results[2].detail == "not checked: Supabase unreachable"


def test_missing_supabase_settings_are_named() -> None:
    results = run_checks(SupabaseTarget(None, None))
    assert [(r.ok, r.detail) for r in results] == [(False, "SUPABASE_URL and SUPABASE_KEY not set")]


def test_modal_credentials_only_checked_for_the_modal_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where doctor and build look for a token (MODAL_CONFIG_PATH, ~/.modal.toml) is proven
    # through the CLI in tests/faiss_builder/test_hostile_inputs.py: modal.config reads the
    # file once, when imported.
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-secret-id")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-secret")
    assert run_checks(None, backend="local") == []
    found = run_checks(None, backend="modal")
    assert [(r.name, r.ok, r.detail) for r in found] == [
        ("modal credentials", True, "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set")
    ]
    assert no_secret_in(found, "ak-secret-id", "as-secret")


def test_unreachable_prefect_fails(prefect_api: str) -> None:
    results = run_checks(None, prefect_api_url=f"http://127.0.0.1:{free_port()}/api", timeout_s=2)
    assert [(r.name, r.ok) for r in results] == [("prefect api", False)]
    assert not run_checks(None, prefect_api_url=prefect_api + "/wrong")[0].ok


def test_key_role_reads_jwt_payload_and_new_key_formats(supabase_stack: SupabaseStack) -> None:
    assert jwt_role(supabase_stack.service_key) == "service_role"
    assert jwt_role("not-a-jwt") is None
    from faiss_builder.doctor import check_key_role

    assert check_key_role("sb_secret_abc").ok
    assert not check_key_role("sb_publishable_abc").ok
    assert "abc" not in check_key_role("sb_publishable_abc").detail


@pytest.fixture
def limited_bucket(supabase_stack: SupabaseStack) -> Iterator[SupabaseStorageServer]:
    """The Storage API test server at /storage/v1: `faiss-indexes` with a 1,000,000-byte
    file_size_limit of its own, `images` without one."""
    server = SupabaseStorageServer(
        key=supabase_stack.service_key,
        anon_key=supabase_stack.anon_key,
        buckets=("faiss-indexes", "images"),
        bucket_limits={"faiss-indexes": 1_000_000},
    )
    with server:
        supabase_stack.gateway.mount("/storage/v1", server.url + "/storage/v1")
        yield server
        supabase_stack.gateway.routes.pop("/storage/v1", None)


def test_the_bucket_limit_is_shown_and_a_larger_shard_limit_fails(
    supabase_stack: SupabaseStack, limited_bucket: SupabaseStorageServer
) -> None:
    key = SecretStr(supabase_stack.service_key)
    target = SupabaseTarget(
        supabase_stack.url,
        key,
        buckets=("faiss-indexes", "images"),
        store_bucket="faiss-indexes",
        shard_max_bytes=45_000_000,
    )
    results = by_name(run_checks(target))
    assert results["bucket faiss-indexes"].ok
    assert results["bucket faiss-indexes"].detail == (
        "present (private; file_size_limit 1,000,000 bytes)"
    )
    assert "no file size limit of its own" in results["bucket images"].detail
    shard = results["shard size"]
    assert not shard.ok
    assert "shard_max_bytes 45,000,000 exceeds bucket faiss-indexes's file_size_limit" in (
        shard.detail
    )
    assert "FAISS_BUILDER_SHARD_MAX_BYTES to at most 1,000,000" in shard.detail
    fits = by_name(run_checks(replace(target, shard_max_bytes=900_000)))["shard size"]
    assert fits.ok and fits.detail == (
        "shard_max_bytes 900,000 <= bucket faiss-indexes's limit 1,000,000"
    )


def test_shard_size_without_a_bucket_limit_passes() -> None:
    assert check_shard_size("b", None, 45_000_000).ok


def test_a_url_or_key_no_request_can_carry_fails_before_any_request() -> None:
    bad_key = run_checks(SupabaseTarget("http://127.0.0.1:9", SecretStr("clé"), buckets=("b",)))
    assert [(r.name, r.ok) for r in bad_key] == [
        ("supabase reachable", False),
        ("catalog table", False),
        ("bucket b", False),
    ]
    assert "SUPABASE_KEY holds a non-ASCII" in bad_key[0].detail and "clé" not in bad_key[0].detail
    bad_url = run_checks(SupabaseTarget("supabase.co", SecretStr("k")))
    assert "SUPABASE_URL 'supabase.co' is not a valid URL" in bad_url[0].detail
