"""Settings of the HTTP service, read like the rest (env FAISS_BUILDER_SERVICE_*, .env, flags)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """How the service answers: reload interval, bounds on queries and uploads, access."""

    model_config = SettingsConfigDict(
        env_prefix="FAISS_BUILDER_SERVICE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free one).")
    poll_s: float = Field(
        2.0, gt=0, description="How often progress.json is read for a new commit."
    )
    min_reload_interval_s: float = Field(
        10.0,
        ge=0,
        description="Least seconds between the end of one reload and the start of the next: "
        "a build committing every batch costs one load per interval, not one per commit.",
    )
    search_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="Threads one query's search and model forward may use (OpenMP, torch). "
        "Concurrent queries already run in parallel; more threads per query mostly leave idle "
        "OpenMP threads spinning against the other requests.",
    )
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a query may ask for.")
    max_upload_bytes: int = Field(
        10_000_000, gt=0, description="Largest image upload accepted (413 above it)."
    )
    max_upload_pixels: int = Field(
        40_000_000, gt=0, description="Largest decoded upload accepted (400 above it)."
    )
    max_text_chars: int = Field(1000, gt=0, description="Longest text query accepted.")
    api_key: SecretStr | None = Field(
        None, description="When set, /search* require it in the X-API-Key header."
    )
    cors_origins: str | None = Field(
        None, description="Comma-separated origins allowed by CORS (off when unset)."
    )
