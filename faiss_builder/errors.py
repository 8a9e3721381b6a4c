"""Exit codes of the CLI and the one-line reason shown for each known failure."""

from __future__ import annotations

from application.errors import UsageError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the alignment check (or doctor) found a problem
EXIT_CONFIG = 2  # bad configuration or usage: nothing was written
EXIT_STORAGE = 3  # storage unreachable or refusing our credentials
EXIT_STATE = 4  # resume refused or corrupted store state: nothing was overwritten
EXIT_BUSY = 5  # another run holds the store's lease
EXIT_PREFECT = 6  # no Prefect API: PREFECT_API_URL unreachable, or its server did not start

__all__ = ["UsageError", "describe"]


def describe(exc: BaseException) -> tuple[int | None, str]:
    """(exit code, one-line reason) for a known failure; (None, ...) lets it surface as a bug."""
    for kinds, code in _table():
        if isinstance(exc, kinds):
            return code, _one_line(exc)
    return None, _one_line(exc)


def _table() -> list[tuple[tuple[type[BaseException], ...], int]]:
    # Imported here: the CLI's first output must not wait for heavy modules.
    from pydantic import ValidationError

    from application.catalog.local import CatalogError
    from application.catalog.supabase import CatalogAuthError, CatalogUnavailable
    from application.errors import CatalogMismatch, ConfigError
    from faiss_builder.runner import PrefectUnavailable
    from modal_workers.embedders import EmbedderLoadError
    from modal_workers.remote import ModalNotConfigured
    from sharding.errors import (
        LeaseHeld,
        LeaseLost,
        ProductIdRefused,
        StateError,
        StorageError,
        StoreConfigError,
    )

    return [
        ((StateError, CatalogMismatch), EXIT_STATE),
        ((LeaseHeld, LeaseLost), EXIT_BUSY),
        ((PrefectUnavailable,), EXIT_PREFECT),
        # The Supabase catalog unreachable or refusing the key: as for the store, exit 3.
        ((StorageError, CatalogUnavailable, CatalogAuthError), EXIT_STORAGE),
        (
            (
                UsageError,
                ConfigError,
                CatalogError,
                ValidationError,
                EmbedderLoadError,
                ModalNotConfigured,
                # Settings or ids the store refuses: shard_max_bytes below one vector, a
                # lease TTL below its minimum, an id outside int64/uint64.
                StoreConfigError,
                ProductIdRefused,
            ),
            EXIT_CONFIG,
        ),
        # Any other file-system or network failure (a full disk, a folder where a shard
        # should be, a read-only store): storage, one line, after the specific kinds above.
        ((OSError,), EXIT_STORAGE),
    ]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 600 else text[:597] + "..."
