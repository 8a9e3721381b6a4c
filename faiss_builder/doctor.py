"""Read-only checks: Supabase, buckets, key role, table, Modal, Prefect; no secrets shown."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from application.connect import (
    check_supabase_key,
    check_supabase_url,
    open_catalog,
    open_storage,
)
from application.errors import ConfigError
from application.settings import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass(frozen=True)
class SupabaseTarget:
    """What the doctor checks on the Supabase side; buckets that are None are not checked."""

    url: str | None
    key: SecretStr | None
    table: str = "product_images"
    id_column: str = "id"
    url_column: str = "image_url"
    brand_column: str = "brand"
    buckets: Sequence[str] = ()
    #: The bucket the index is stored in, and the largest shard file the build writes: shown
    #: against the bucket's own file_size_limit. None: the store is not in Supabase.
    store_bucket: str | None = None
    shard_max_bytes: int | None = None


def run_checks(
    supabase: SupabaseTarget | None,
    *,
    backend: str = "local",
    prefect_api_url: str | None = None,
    prefect_api_key: SecretStr | None = None,
    timeout_s: float = 10.0,
) -> list[CheckResult]:
    """Every check in order, one result each; nothing is written anywhere.

    `supabase` is None when neither the catalog nor the store uses Supabase.
    """
    results = check_supabase(supabase, timeout_s) if supabase is not None else []
    if backend == "modal":
        results.append(check_modal_credentials())
    if prefect_api_url:
        results.append(check_prefect(prefect_api_url, prefect_api_key, timeout_s))
    return results


# --- Supabase ---------------------------------------------------------------------------------


def check_supabase(target: SupabaseTarget, timeout_s: float) -> list[CheckResult]:
    if not target.url or not target.key:
        named = (("SUPABASE_URL", target.url), ("SUPABASE_KEY", target.key))
        missing = " and ".join(name for name, value in named if not value)
        return [CheckResult("supabase reachable", False, f"{missing} not set")]
    key = target.key.get_secret_value()
    buckets = list(dict.fromkeys(target.buckets))
    names = ["catalog table", *(f"bucket {bucket}" for bucket in buckets)]
    try:  # the same refusals as a build: a URL or key no HTTP request can carry
        check_supabase_url(target.url)
        check_supabase_key(key)
    except ConfigError as exc:
        results = [CheckResult("supabase reachable", False, str(exc))]
        return results + [CheckResult(n, False, "not checked: bad configuration") for n in names]
    results = [check_reachable(target.url, key, timeout_s), check_key_role(key)]
    if not results[0].ok:
        return results + [CheckResult(n, False, "not checked: Supabase unreachable") for n in names]
    from sharding.supabase_store import create_supabase_client

    client = create_supabase_client(target.url, target.key, timeout_s, retry_reads=False)
    results.append(_guarded("catalog table", key, lambda: _table_detail(client, target)))
    for bucket in buckets:
        limit: list[int | None] = []
        results.append(_guarded(f"bucket {bucket}", key, _bucket_check(client, bucket, limit)))
        if bucket == target.store_bucket and target.shard_max_bytes is not None and limit:
            results.append(check_shard_size(bucket, limit[0], target.shard_max_bytes))
    return results


def _bucket_check(client: Any, bucket: str, limit: list[int | None]) -> Callable[[], str]:
    def detail() -> str:
        found = client.storage.get_bucket(bucket)
        size_limit = getattr(found, "file_size_limit", None)
        limit.append(size_limit)
        access = "public" if found.public else "private"
        if size_limit is None:
            return f"present ({access}; no file size limit of its own: the project's applies)"
        return f"present ({access}; file_size_limit {size_limit:,} bytes)"

    return detail


def check_shard_size(bucket: str, file_size_limit: int | None, shard_max_bytes: int) -> CheckResult:
    """FAIL when a shard could be larger than the bucket accepts: that upload would be refused
    (413) once a shard grows that big, and the build would stop there."""
    name = "shard size"
    if file_size_limit is None or shard_max_bytes <= file_size_limit:
        bound = (
            "" if file_size_limit is None else f" <= bucket {bucket}'s limit {file_size_limit:,}"
        )
        return CheckResult(name, True, f"shard_max_bytes {shard_max_bytes:,}{bound}")
    return CheckResult(
        name,
        False,
        f"shard_max_bytes {shard_max_bytes:,} exceeds bucket {bucket}'s file_size_limit "
        f"{file_size_limit:,}: shards that large would be refused (413); set "
        f"FAISS_BUILDER_SHARD_MAX_BYTES to at most {file_size_limit:,}, or raise the bucket's limit",
    )


def check_reachable(url: str, key: str, timeout_s: float) -> CheckResult:
    """GET {url}/rest/v1/ (PostgREST's schema description): a read, answered by any project."""
    endpoint = f"{url.rstrip('/')}/rest/v1/"
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    try:
        response = httpx.get(endpoint, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as error:
        return CheckResult("supabase reachable", False, f"{endpoint}: {type(error).__name__}")
    detail = f"{endpoint} answered HTTP {response.status_code}"
    if response.status_code in (401, 403):
        detail += " (the key was refused)"
    return CheckResult("supabase reachable", response.status_code < 500, detail)


def check_key_role(key: str) -> CheckResult:
    """The key's role, read from the JWT payload without verifying it (the server verifies)."""
    if key.startswith("sb_secret_"):
        return CheckResult("key role", True, "secret API key (server-side, bypasses RLS)")
    if key.startswith("sb_publishable_"):
        return CheckResult("key role", False, "publishable key: use a secret/service_role key")
    role = jwt_role(key)
    if role == "service_role":
        return CheckResult("key role", True, "service_role")
    detail = f"role {role}" if role else "not a Supabase JWT or secret key"
    return CheckResult("key role", False, f"{detail}: the builder needs the service_role key")


def jwt_role(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    role = payload.get("role") if isinstance(payload, dict) else None
    return role if isinstance(role, str) else None


def _table_detail(client: Any, target: SupabaseTarget) -> str:
    from application.catalog.supabase import SupabaseCatalog

    columns = (target.id_column, target.url_column, target.brand_column)
    SupabaseCatalog(client, target.table, *columns).page(None, 1)  # proves table, columns, grants
    return f"{target.table} readable with columns {', '.join(columns)}"


def _guarded(name: str, key: str, detail: Callable[[], str]) -> CheckResult:
    """Run one check; any failure becomes a FAIL line whose text never holds the key."""
    try:
        return CheckResult(name, True, detail())
    except Exception as error:
        text = " ".join(str(getattr(error, "message", None) or error).split())
        return CheckResult(name, False, text.replace(key, "***") or type(error).__name__)


# --- Modal and Prefect ------------------------------------------------------------------------


def check_modal_credentials() -> CheckResult:
    """The very check a `--backend modal` build makes (modal_workers.remote): a token in
    MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or in Modal's config file (MODAL_CONFIG_PATH, else
    ~/.modal.toml; its active profile). No network call: a bad token would hang."""
    name = "modal credentials"
    hint = "run `modal token new` or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    try:
        from modal_workers.remote import modal_credentials_present

        present = modal_credentials_present()
    except Exception as exc:  # modal.config refuses a malformed config file on import
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return CheckResult(name, False, f"Modal's configuration cannot be read: {detail}")
    if not present:
        return CheckResult(name, False, f"no Modal token found: {hint}")
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return CheckResult(name, True, "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set")
    from modal.config import user_config_path

    return CheckResult(name, True, f"token in {user_config_path}")


def check_prefect(api_url: str, api_key: SecretStr | None, timeout_s: float) -> CheckResult:
    """GET {PREFECT_API_URL}/health (with PREFECT_API_KEY for Prefect Cloud)."""
    endpoint = f"{api_url.rstrip('/')}/health"
    headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
    try:
        response = httpx.get(endpoint, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as error:
        return CheckResult("prefect api", False, f"{endpoint}: {type(error).__name__}")
    detail = f"{endpoint} answered HTTP {response.status_code}"
    return CheckResult("prefect api", response.is_success, detail)


def run_doctor(settings: Settings) -> dict[str, Any]:
    """Connectivity and configuration checks that write nothing."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    api_key = PREFECT_API_KEY.value()
    checks = run_checks(
        _supabase_target(settings),
        backend=settings.embed.backend,
        prefect_api_url=PREFECT_API_URL.value() or None,
        prefect_api_key=SecretStr(api_key) if api_key else None,
        timeout_s=min(settings.supabase.timeout_s, 10.0),
    )
    writable = None if settings.store.store == "supabase" else _writable(settings)
    checks[:0] = [_config_check(settings), *([writable] if writable else [])]
    return {
        "ok": all(check.ok for check in checks),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }


def _supabase_target(settings: Settings) -> Any:
    """What doctor checks on Supabase: only when the catalog or the store lives there."""
    uses_table = settings.catalog.catalog == "supabase"
    uses_bucket = settings.store.store == "supabase"
    if not (uses_table or uses_bucket):
        return None
    catalog = settings.catalog
    buckets = [settings.supabase.bucket] if uses_bucket else []
    buckets += [catalog.image_bucket] if catalog.image_bucket else []
    return SupabaseTarget(
        url=settings.supabase.url,
        key=settings.supabase.key,
        table=catalog.catalog_table,
        id_column=catalog.catalog_id_column,
        url_column=catalog.catalog_url_column,
        brand_column=catalog.catalog_brand_column,
        buckets=buckets,
        store_bucket=settings.supabase.bucket if uses_bucket else None,
        shard_max_bytes=settings.store.shard_max_bytes if uses_bucket else None,
    )


def _config_check(settings: Settings) -> Any:
    """The local side: where the catalog and the store are, and whether they can be opened."""
    try:
        catalog = open_catalog(settings).describe()
        store = open_storage(settings).describe()
    except Exception as exc:
        return CheckResult("configuration", False, " ".join(str(exc).split()))
    return CheckResult("configuration", True, f"{catalog} -> {store}")


def _writable(settings: Settings) -> CheckResult | None:
    """A local store can take a write (LocalStore.check_writable: a temp file created, fsynced
    and removed in its folder, or before the first build in the nearest folder above it that
    exists; nothing is left). None when the store cannot even be opened (the configuration
    line says why) or cannot be probed."""
    try:
        probe = getattr(open_storage(settings), "check_writable", None)
    except Exception:
        return None
    if probe is None:
        return None
    try:
        return CheckResult("store writable", True, str(probe()))
    except Exception as exc:
        return CheckResult("store writable", False, " ".join(str(exc).split()))
