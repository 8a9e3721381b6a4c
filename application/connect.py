"""Builds the store, catalog and embedding backend a run needs from settings, failing before any write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from application.backends import BACKENDS, EmbedBackend
from application.catalog.base import Catalog
from application.errors import ConfigError
from application.settings import Settings

if TYPE_CHECKING:
    from modal_workers.types import FetchLimits
    from sharding.storage import Storage


def open_storage(settings: Settings) -> Storage:
    """The index store named by `store`: a local folder, or `supabase`."""
    if settings.store.store == "supabase":
        return _open_supabase_storage(settings)
    from sharding.local_store import LocalStore

    return LocalStore(Path(settings.store.store))


def open_catalog(settings: Settings) -> Catalog:
    """The product source named by `catalog`: a CSV/JSONL file, or `supabase`."""
    if settings.catalog.catalog == "supabase":
        return _open_supabase_catalog(settings)
    from application.catalog.local import CatalogError, LocalCatalog

    try:
        return LocalCatalog(settings.catalog.catalog)
    except CatalogError as exc:
        raise ConfigError(str(exc)) from exc


def open_backend(settings: Settings, embedder: str, model: str | None) -> EmbedBackend:
    """The embedding backend `settings.embed.backend` names (validated by the settings)."""
    factory = BACKENDS[settings.embed.backend]
    return factory(settings, embedder, model if embedder == "clip" else None)


def fetch_limits(settings: Settings, local_root: str | None) -> FetchLimits:
    """Fetch limits. Local file paths (relative to `local_root`, or absolute) are accepted only
    when `local_root` is set, i.e. for a local catalog file, never for the Supabase table."""
    from modal_workers.types import FetchLimits

    fetch = settings.fetch
    return FetchLimits(
        max_bytes=fetch.fetch_max_bytes,
        timeout_s=fetch.fetch_timeout_s,
        max_pixels=fetch.fetch_max_pixels,
        allow_private_urls=fetch.allow_private_urls,
        local_root=local_root,
    )


def supabase_credentials(settings: Settings) -> tuple[str, Any]:
    """(url, SecretStr key) or a ConfigError naming the missing variables."""
    supabase = settings.supabase
    missing = [
        name
        for name, value in (("SUPABASE_URL", supabase.url), ("SUPABASE_KEY", supabase.key))
        if not value
    ]
    if missing:
        raise ConfigError(f"Supabase is selected but {' and '.join(missing)} not set")
    assert supabase.url is not None and supabase.key is not None
    return supabase.url, supabase.key


def _open_supabase_storage(settings: Settings) -> Storage:
    from sharding.supabase_store import SupabaseStore, create_supabase_client

    url, key = supabase_credentials(settings)
    client = create_supabase_client(url, key, settings.supabase.timeout_s)
    return SupabaseStore(client, settings.supabase.bucket, prefix=settings.store.store_prefix)


def _open_supabase_catalog(settings: Settings) -> Catalog:
    from application.catalog.supabase import SupabaseCatalog
    from sharding.supabase_store import create_supabase_client

    url, key = supabase_credentials(settings)
    catalog = settings.catalog
    return SupabaseCatalog(
        create_supabase_client(url, key, settings.supabase.timeout_s),
        table=catalog.catalog_table,
        id_column=catalog.catalog_id_column,
        url_column=catalog.catalog_url_column,
        brand_column=catalog.catalog_brand_column,
        sign_bucket=catalog.image_bucket,
        sign_expires_s=catalog.signed_url_ttl_s,
    )
