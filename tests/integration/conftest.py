"""Integration tests run against the real local Supabase stack (PostgreSQL + PostgREST)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.storage_stub import StorageStub
from tests.support.postgrest_stack import SupabaseStack, supabase_stack

__all__ = ["supabase_stack"]

PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg"


@pytest.fixture
def product_rows(supabase_stack: SupabaseStack) -> Iterator[int]:
    """product_images refilled with 2,600 rows (ids 1..2600; every 7th brand null)."""
    supabase_stack.sql(
        "truncate product_images restart identity;"
        "insert into product_images (image_url, brand) select 'https://img.test/' || g || '.jpg',"
        " case when g % 7 = 0 then null else 'brand-' || (g % 5) end"
        " from generate_series(1, 2600) g"
    )
    yield 2600


@pytest.fixture
def storage(supabase_stack: SupabaseStack) -> Iterator[StorageStub]:
    """A private bucket `images` with two objects, mounted at {stack.url}/storage/v1."""
    stub = StorageStub(supabase_stack.jwt_secret, {"images": {"a/1.jpg": PHOTO, "b/2.jpg": PHOTO}})
    supabase_stack.gateway.mount("/storage/v1", stub.url)
    yield stub
    supabase_stack.gateway.routes.pop("/storage/v1", None)
    stub.close()
