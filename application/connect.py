"""Builds the store, catalog and embedding backend a run needs from settings, failing before any write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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

    return LocalStore(local_store_path(settings.store.store))


def local_store_path(store: str) -> Path:
    """The folder a local store lives in; ConfigError (exit 2, nothing written) for an empty
    name (it would be the current folder) or a path that is, or lies under, a file."""
    if not store.strip():
        raise ConfigError(
            "--store / FAISS_BUILDER_STORE is empty: name the store's folder (or `supabase`)"
        )
    path = Path(store)
    for folder in (path, *path.parents):
        try:
            if folder.exists() and not folder.is_dir():
                at = "is" if folder == path else f"lies under {folder}, which is"
                raise ConfigError(f"store {store}: {path} {at} a file, not a folder")
        except OSError as exc:  # e.g. a name too long, or a folder we may not look into
            raise ConfigError(f"store {store}: cannot look at {folder}: {exc.strerror}") from exc
    return path


def open_catalog(settings: Settings) -> Catalog:
    """The product source named by `catalog`: a CSV/JSONL file, or `supabase`."""
    if settings.catalog.catalog == "supabase":
        return _open_supabase_catalog(settings)
    from application.catalog.local import CatalogError, LocalCatalog

    _image_root(settings.fetch.local_image_root)  # refused here, before a build writes anything
    try:
        return LocalCatalog(settings.catalog.catalog)
    except CatalogError as exc:
        raise ConfigError(str(exc)) from exc


def open_backend(settings: Settings, embedder: str, model: str | None) -> EmbedBackend:
    """The embedding backend `settings.embed.backend` names (validated by the settings)."""
    factory = BACKENDS[settings.embed.backend]
    return factory(settings, embedder, model)


def fetch_limits(settings: Settings, local_root: str | None) -> FetchLimits:
    """Fetch limits. Local file paths (relative to `local_root`, or absolute) are accepted only
    when `local_root` is set, i.e. for a local catalog file, never for the Supabase table; they
    must resolve inside `local_root`, or inside FAISS_BUILDER_LOCAL_IMAGE_ROOT when set
    (ConfigError when that is not a folder)."""
    from modal_workers.types import FetchLimits

    fetch = settings.fetch
    return FetchLimits(
        max_bytes=fetch.fetch_max_bytes,
        timeout_s=fetch.fetch_timeout_s,
        max_pixels=fetch.fetch_max_pixels,
        allow_private_urls=fetch.allow_private_urls,
        local_root=local_root,
        local_allowed_root=_image_root(fetch.local_image_root) if local_root else None,
    )


def _image_root(root: str | None) -> str | None:
    if root is None:
        return None
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"FAISS_BUILDER_LOCAL_IMAGE_ROOT {root!r} is not a folder: name the folder a local "
            "catalog's image paths may reach, or unset it (the catalog's folder)"
        )
    return str(path.resolve())


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
    check_supabase_url(supabase.url)
    check_supabase_key(supabase.key.get_secret_value())
    return supabase.url, supabase.key


def check_supabase_url(url: str) -> None:
    """ConfigError unless `url` is an http(s) URL with a host (https://<ref>.supabase.co)."""
    hint = "SUPABASE_URL must look like https://<project-ref>.supabase.co"
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if (
        parts is None
        or not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(char.isspace() for char in url)
        or not url.isprintable()
    ):
        raise ConfigError(f"SUPABASE_URL {_shown_url(url)} is not a valid URL: {hint}")


def check_supabase_key(key: str) -> None:
    """ConfigError (never showing the key) unless it is printable ASCII without spaces: HTTP
    headers cannot carry anything else, and a key with such characters is a copy slip."""
    if key.isascii() and key.isprintable() and not any(char.isspace() for char in key):
        return
    raise ConfigError(
        "SUPABASE_KEY holds a non-ASCII, space or control character, which no Supabase key "
        "has: copy the service_role key again (Project Settings -> API)"
    )


def _shown_url(url: str) -> str:
    """The URL for a message: cut, and without any user:password part."""
    shown = url.split("@", 1)[-1] if "://" in url and "@" in url else url
    return repr(shown if len(shown) <= 80 else shown[:77] + "...")


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
