"""Settings, one class per concern, read once at the edge (CLI or flow entry) and passed down frozen."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modal_workers.embedders import DEFAULT_CLIP_MODEL
from modal_workers.names import APP_NAME, CLS_NAME
from modal_workers.types import KINDS, check_kinds
from sharding.lease import MIN_TTL_S

#: The index kinds as a type: an enum over modal_workers' KINDS, so forms and JSON schemas list them.
Kind = StrEnum("Kind", [(kind, kind) for kind in KINDS])  # type: ignore[misc]
ALL_KINDS: tuple[str, ...] = KINDS
#: `clip`, the weight-free `histogram`, or any name in modal_workers.embedders.LOADERS.
EmbedderName = str
#: `local`, `modal`, or a name registered with application.connect.register_backend.
Backend = str

_ENV = {"env_file": ".env", "env_file_encoding": "utf-8", "extra": "ignore", "frozen": True}


class StoreSettings(BaseSettings):
    """Where the index lives and how it is sharded."""

    model_config = SettingsConfigDict(env_prefix="FAISS_BUILDER_", **_ENV)  # type: ignore[typeddict-item]

    store: str = Field(
        "faiss-store", description="A local folder, or `supabase` for Supabase Storage."
    )
    store_prefix: str = Field("faiss/", description="Object prefix inside the Supabase bucket.")
    shard_max_vectors: int = Field(1000, gt=0, description="Seal a shard at this many vectors.")
    shard_max_bytes: int = Field(
        45_000_000, gt=0, description="Seal a shard before its file could pass this size."
    )
    cache_dir: str | None = Field(None, description="Local cache for downloaded shards (search).")
    lease_ttl_s: float = Field(
        60.0,
        ge=MIN_TTL_S,
        description="Store lease lifetime; renewed in the background while running.",
    )
    lease_wait_s: float = Field(0.0, ge=0, description="How long a second writer waits.")
    crash_after_writes: int | None = Field(
        None, description="Testing hook: raise after this many storage writes."
    )
    ann_min_vectors: int = Field(
        100_000,
        ge=0,
        description="Build and maintain an approximate (IVF) index for a kind above this many "
        "live vectors.",
    )
    ann_min_recall: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Serve the approximate index only at or above this recall@10 (else exact).",
    )
    compact_threshold: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="`compact` rewrites a kind whose dead slots reach this fraction of its slots.",
    )


class CatalogSettings(BaseSettings):
    """Where pending products come from."""

    model_config = SettingsConfigDict(env_prefix="FAISS_BUILDER_", **_ENV)  # type: ignore[typeddict-item]

    catalog: str = Field(
        "catalog.csv", description="A CSV/JSONL file, or `supabase` for the product table."
    )
    catalog_table: str = Field("product_images", description="Supabase table of products.")
    catalog_id_column: str = "id"
    catalog_url_column: str = "image_url"
    catalog_brand_column: str = "brand"
    image_bucket: str | None = Field(
        None, description="Private bucket whose object paths in image_url are signed before fetch."
    )
    signed_url_ttl_s: int = Field(3600, gt=0, description="Lifetime of signed image URLs.")
    reconcile: bool = Field(
        False,
        description="Also find rows deleted from a Supabase table (a pass over its ids alone).",
    )
    sync_overlap_s: float = Field(
        300.0,
        ge=0,
        le=7 * 86_400,
        description="Seconds below the sync position re-read at each sync, for rows whose "
        "transaction committed late (longer than any catalog transaction).",
    )


class EmbedSettings(BaseSettings):
    """What embeds the images, where, and in which batches."""

    model_config = SettingsConfigDict(env_prefix="FAISS_BUILDER_", **_ENV)  # type: ignore[typeddict-item]

    kinds: Annotated[tuple[str, ...], NoDecode] = Field(
        ALL_KINDS, description="Index kinds to build, comma-separated."
    )
    embedder: EmbedderName = Field(
        "clip", description="`clip`, the weight-free `histogram`, or another registered embedder."
    )
    model: str | None = Field(
        None,
        description=f"Model id or local folder for the embedder (clip: {DEFAULT_CLIP_MODEL}).",
    )
    backend: Backend = Field(
        "local", description="`local` (in-process), `modal` (A10G) or a registered backend."
    )
    batch_size: int = Field(256, gt=0, le=4096, description="Products per embedding batch.")
    max_in_flight: int | None = Field(
        None,
        gt=0,
        le=64,
        description="Embedding batches in flight at once (default: 2 local; for modal, the "
        "deployment's max_containers x inputs per container).",
    )
    commit_size: int | None = Field(
        None,
        gt=0,
        le=65_536,
        description="Products per commit (one Prefect task chain), split into calls of "
        "batch_size on the shared in-flight pool (default: max_in_flight x batch_size).",
    )
    max_images: int | None = Field(None, gt=0, description="Stop after this many products.")
    device: str | None = Field(None, description="Torch device for local CLIP (auto if unset).")
    retry_failed: bool = Field(
        False, description="First re-fetch and re-embed the products recorded as failed."
    )

    @field_validator("kinds", mode="before")
    @classmethod
    def _split_kinds(cls, value: object) -> object:
        return parse_kinds(value)

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        from modal_workers.embedders import LOADERS

        if value not in LOADERS:
            raise ValueError(f"unknown embedder {value!r}; choose from {', '.join(LOADERS)}")
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from application.backends import BACKENDS

        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose from {', '.join(BACKENDS)}")
        return value


class FetchSettings(BaseSettings):
    """Limits on fetching untrusted image URLs."""

    model_config = SettingsConfigDict(env_prefix="FAISS_BUILDER_", **_ENV)  # type: ignore[typeddict-item]

    allow_private_urls: bool = Field(
        False, description="Allow loopback/private/link-local image hosts (local testing only)."
    )
    fetch_timeout_s: float = Field(20.0, gt=0, description="Wall-clock deadline per image.")
    fetch_max_bytes: int = Field(20_000_000, gt=0, description="Largest image body accepted.")
    fetch_max_pixels: int = Field(40_000_000, gt=0, description="Largest decoded image accepted.")
    local_image_root: str | None = Field(
        None,
        description="Folder a local catalog's image paths may reach (default: the catalog "
        "file's own folder); paths resolving outside it are failed as outside_catalog_folder.",
    )


class SupabaseSettings(BaseSettings):
    """The Supabase project (storage bucket and product table)."""

    model_config = SettingsConfigDict(env_prefix="SUPABASE_", **_ENV)  # type: ignore[typeddict-item]

    url: str | None = Field(None, description="Project URL, https://<ref>.supabase.co")
    key: SecretStr | None = Field(None, description="Service-role key (server side only).")
    bucket: str = Field("faiss-indexes", description="Storage bucket for the index objects.")
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout for Supabase requests.")


class ModalSettings(BaseSettings):
    """The deployed Modal app that embeds on A10G GPUs."""

    model_config = SettingsConfigDict(env_prefix="FAISS_BUILDER_MODAL_", **_ENV)  # type: ignore[typeddict-item]

    app_name: str = Field(APP_NAME, description="Deployed Modal app name.")
    class_name: str = Field(CLS_NAME, description="Modal class inside the app.")


class Settings:
    """All concerns together; built once by `load_settings`."""

    def __init__(self, **overrides: object) -> None:
        self.store = StoreSettings(**_pick(StoreSettings, overrides))
        self.catalog = CatalogSettings(**_pick(CatalogSettings, overrides))
        self.embed = EmbedSettings(**_pick(EmbedSettings, overrides))
        self.fetch = FetchSettings(**_pick(FetchSettings, overrides))
        self.supabase = SupabaseSettings(**_pick_prefixed("supabase_", overrides))
        self.modal = ModalSettings(**_pick_prefixed("modal_", overrides))


def load_settings(**overrides: object) -> Settings:
    """Settings from env/.env, with explicit (non-None) overrides from the CLI or flow parameters."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def parse_kinds(value: object) -> tuple[str, ...]:
    """`"color,structure"` or a sequence → validated, de-duplicated kinds in canonical order."""
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    wanted = {str(item).strip() for item in items if str(item).strip()}
    unknown = wanted - set(KINDS)
    if unknown or not wanted:
        raise ValueError(f"unknown index kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    return check_kinds(sorted(wanted))


def _pick(model: type[BaseSettings], overrides: dict[str, object]) -> dict[str, Any]:
    return {key: value for key, value in overrides.items() if key in model.model_fields}


def _pick_prefixed(prefix: str, overrides: dict[str, object]) -> dict[str, Any]:
    return {
        key.removeprefix(prefix): value
        for key, value in overrides.items()
        if key.startswith(prefix)
    }
