"""A local Supabase Storage server and an official client pointed at it (from tests/support)."""

from __future__ import annotations

from tests.support.storage_fixtures import sleeps, storage_server, supabase_store

__all__ = ["sleeps", "storage_server", "supabase_store"]
