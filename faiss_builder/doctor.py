"""Read-only checks: Supabase, buckets, key role, table, Modal, Prefect; no secrets shown."""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from application.connect import open_catalog, open_storage
from application.settings import Settings

MODAL_CONFIG = Path("~/.modal.toml")


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


def run_checks(
    supabase: SupabaseTarget | None,
    *,
    backend: str = "local",
    prefect_api_url: str | None = None,
    prefect_api_key: SecretStr | None = None,
    environ: Mapping[str, str] | None = None,
    modal_config: Path = MODAL_CONFIG,
    timeout_s: float = 10.0,
) -> list[CheckResult]:
    """Every check in order, one result each; nothing is written anywhere.

    `supabase` is None when neither the catalog nor the store uses Supabase. `environ` is the
    process environment (the caller passes os.environ) for the Modal token variables.
    """
    results = check_supabase(supabase, timeout_s) if supabase is not None else []
    if backend == "modal":
        results.append(check_modal_credentials(environ or {}, modal_config))
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
    results = [check_reachable(target.url, key, timeout_s), check_key_role(key)]
    names = ["catalog table", *(f"bucket {bucket}" for bucket in dict.fromkeys(target.buckets))]
    if not results[0].ok:
        return results + [CheckResult(n, False, "not checked: Supabase unreachable") for n in names]
    from sharding.supabase_store import create_supabase_client

    client = create_supabase_client(target.url, target.key, timeout_s, retry_reads=False)
    checks = [lambda: _table_detail(client, target)]
    checks += [_bucket_check(client, bucket) for bucket in dict.fromkeys(target.buckets)]
    return results + [_guarded(name, key, check) for name, check in zip(names, checks, strict=True)]


def _bucket_check(client: Any, bucket: str) -> Callable[[], str]:
    return lambda: _bucket_detail(client, bucket)


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


def _bucket_detail(client: Any, bucket: str) -> str:
    found = client.storage.get_bucket(bucket)
    return f"present ({'public' if found.public else 'private'})"


def _guarded(name: str, key: str, detail: Callable[[], str]) -> CheckResult:
    """Run one check; any failure becomes a FAIL line whose text never holds the key."""
    try:
        return CheckResult(name, True, detail())
    except Exception as error:
        text = " ".join(str(getattr(error, "message", None) or error).split())
        return CheckResult(name, False, text.replace(key, "***") or type(error).__name__)


# --- Modal and Prefect ------------------------------------------------------------------------


def check_modal_credentials(environ: Mapping[str, str], config: Path) -> CheckResult:
    """Token present in the environment or ~/.modal.toml; no network call (a bad token hangs)."""
    name = "modal credentials"
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return CheckResult(name, True, "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET set")
    profile = _modal_profile_with_token(config.expanduser())
    if profile is not None:
        return CheckResult(name, True, f"token in {config} (profile {profile})")
    hint = "run `modal token new` or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    return CheckResult(name, False, f"no Modal token found: {hint}")


def _modal_profile_with_token(config: Path) -> str | None:
    try:
        profiles = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    usable = [
        (bool(values.get("active")), profile)
        for profile, values in profiles.items()
        if isinstance(values, dict) and values.get("token_id") and values.get("token_secret")
    ]
    return max(usable)[1] if usable else None  # the active profile first


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
    import os

    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    api_key = PREFECT_API_KEY.value()
    checks = run_checks(
        _supabase_target(settings),
        backend=settings.embed.backend,
        prefect_api_url=PREFECT_API_URL.value() or None,
        prefect_api_key=SecretStr(api_key) if api_key else None,
        environ=os.environ,
        timeout_s=min(settings.supabase.timeout_s, 10.0),
    )
    checks.insert(0, _config_check(settings))
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
    )


def _config_check(settings: Settings) -> Any:
    """The local side: where the catalog and the store are, and whether they can be opened."""
    try:
        catalog = open_catalog(settings).describe()
        store = open_storage(settings).describe()
    except Exception as exc:
        return CheckResult("configuration", False, " ".join(str(exc).split()))
    return CheckResult("configuration", True, f"{catalog} -> {store}")
