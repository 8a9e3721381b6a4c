"""Private-bucket image paths become signed URLs in bulk; http(s) URLs pass through untouched."""

from __future__ import annotations

import httpx
import pytest

from application.catalog import supabase as catalog_module
from application.catalog.base import Product
from application.catalog.supabase import SupabaseCatalog, SupabaseCatalogError, sign_image_urls
from tests.integration.conftest import PHOTO
from tests.integration.storage_stub import MISSING, StorageStub
from tests.support.postgrest_stack import SupabaseStack

PRODUCTS = [
    Product(1, "a/1.jpg", "x"),
    Product(2, "https://cdn.example.com/2.jpg", None),
    Product(3, "/b/2.jpg", "y"),  # a leading slash is tolerated
    Product(4, "a/1.jpg", "x"),  # same object twice: signed once
]


def test_paths_are_signed_and_urls_left_alone(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    signed = sign_image_urls(supabase_stack.client(), "images", PRODUCTS, 600)
    assert signed.failures == []
    assert [p.id for p in signed.products] == [1, 2, 3, 4]
    assert signed.products[1] == PRODUCTS[1]
    assert storage.sign_requests == [["a/1.jpg", "b/2.jpg"]]
    prefix = f"{supabase_stack.url}/storage/v1/object/sign/images/"
    assert signed.products[0].image_url.startswith(prefix + "a/1.jpg?token=")
    assert signed.products[2].image_url.startswith(prefix + "b/2.jpg?token=")


def test_a_signed_url_downloads_without_any_key(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    signed = sign_image_urls(supabase_stack.client(), "images", PRODUCTS[:1], 600)
    response = httpx.get(signed.products[0].image_url)  # what a GPU worker does: no apikey
    assert response.status_code == 200
    assert response.content == PHOTO


def test_missing_objects_are_reported_and_keep_their_path(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    products = [Product(1, "a/1.jpg"), Product(9, "gone/9.jpg")]
    signed = sign_image_urls(supabase_stack.client(), "images", products, 600)
    assert signed.products[1] == products[1]
    assert [(f.id, f.path, f.message) for f in signed.failures] == [(9, "gone/9.jpg", MISSING)]


def test_signing_is_chunked(
    supabase_stack: SupabaseStack, storage: StorageStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "SIGN_CHUNK", 2)
    storage.buckets["images"].update({f"c/{n}.jpg": PHOTO for n in range(5)})
    products = [Product(n, f"c/{n}.jpg") for n in range(5)]
    signed = sign_image_urls(supabase_stack.client(), "images", products, 600)
    assert [len(paths) for paths in storage.sign_requests] == [2, 2, 1]
    assert signed.failures == []
    assert all("token=" in p.image_url for p in signed.products)


def test_missing_bucket_is_a_clear_error(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    with pytest.raises(SupabaseCatalogError, match="bucket nope: Bucket not found"):
        sign_image_urls(supabase_stack.client(), "nope", PRODUCTS, 600)


def test_anon_key_cannot_sign(supabase_stack: SupabaseStack, storage: StorageStub) -> None:
    key = supabase_stack.anon_key
    with pytest.raises(SupabaseCatalogError, match="bucket images") as caught:
        sign_image_urls(supabase_stack.client(key), "images", PRODUCTS, 600)
    assert key not in str(caught.value)


def test_catalog_signs_pages_for_fetch_only_with_a_bucket(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    supabase_stack.sql(
        "truncate product_images restart identity;"
        "insert into product_images (image_url) values ('a/1.jpg'), ('https://cdn.test/2.jpg')"
    )
    client = supabase_stack.client()
    plain = SupabaseCatalog(client).page(None, 10)
    assert [p.image_url for p in SupabaseCatalog(client).sign_for_fetch(plain)] == [
        "a/1.jpg",
        "https://cdn.test/2.jpg",
    ]
    signing = SupabaseCatalog(client, sign_bucket="images", sign_expires_s=60)
    ready = signing.sign_for_fetch(signing.page(None, 10))
    assert httpx.get(ready[0].image_url).content == PHOTO
    assert ready[1].image_url == "https://cdn.test/2.jpg"
