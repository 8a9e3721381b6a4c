"""SupabaseCatalog against real PostgREST through the official supabase client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from application.catalog import supabase as catalog_module
from application.catalog.base import Product, ProductId, split_refused
from application.catalog.supabase import (
    NOT_SIGNED,
    CatalogAuthError,
    CatalogUnavailable,
    SupabaseCatalog,
    SupabaseCatalogError,
)
from application.errors import CatalogMismatch
from modal_workers.types import FailedProduct
from sharding.supabase_store import create_supabase_client
from tests.integration.storage_stub import MISSING, StorageStub
from tests.support.postgrest_stack import SupabaseStack, make_jwt

UUID_EDGES = [
    "00000000-0000-0000-0000-000000000000",
    "9fffffff-ffff-ffff-ffff-ffffffffffff",  # the digit/letter boundary of the first nibble
    "a0000000-0000-0000-0000-000000000000",
    "0000000a-0000-0000-0000-000000000000",
    "00000009-ffff-ffff-ffff-ffffffffffff",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
]


def read_all(catalog: SupabaseCatalog, batch: int) -> list[ProductId]:
    """Every id, the way the flow reads: page after page from the last id seen."""
    ids: list[ProductId] = []
    after: ProductId | None = None
    while products := catalog.page(after, batch):
        ids.extend(product.id for product in products)
        after = products[-1].id
    return ids


@pytest.fixture(scope="module")
def uuid_table(supabase_stack: SupabaseStack) -> list[str]:
    """product_images_uuid: 2,600 random v4 uuids plus edge values, as PostgreSQL orders them."""
    supabase_stack.sql(
        "drop table if exists product_images_uuid;"
        "create table product_images_uuid (id uuid primary key default gen_random_uuid(),"
        " image_url text not null, brand text);"
        "insert into product_images_uuid (image_url) select 'https://img.test/' || g"
        " from generate_series(1, 2600) g;"
        "insert into product_images_uuid (id, image_url) select v::uuid, 'https://img.test/edge'"
        f" from unnest(array{UUID_EDGES!r}) v"
    )
    supabase_stack.reload_schema("product_images_uuid")
    ordered = supabase_stack.sql("select id from product_images_uuid order by id")
    return ordered.splitlines()


def test_bigint_ids_come_once_each_in_order_as_ints(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    ids = read_all(catalog, batch=700)
    assert ids == list(range(1, product_rows + 1))
    assert all(type(product_id) is int for product_id in ids)


def test_uuid_ids_come_once_each_in_postgres_order(
    supabase_stack: SupabaseStack, uuid_table: list[str]
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    ids = read_all(catalog, batch=900)
    assert len(ids) == 2600 + len(UUID_EDGES)
    assert ids == uuid_table


def test_python_string_order_of_uuids_is_postgres_uuid_order(uuid_table: list[str]) -> None:
    # The writer and resume logic compare cursors with Python `>`; they must agree with PG.
    assert uuid_table == sorted(uuid_table)
    assert uuid_table == sorted(uuid_table, key=lambda text: uuid.UUID(text).bytes)
    assert all(text == str(uuid.UUID(text)) for text in uuid_table)  # lowercase canonical form


def test_uuid_resume_from_a_cursor(supabase_stack: SupabaseStack, uuid_table: list[str]) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    cursor = uuid_table[1500]
    assert [p.id for p in catalog.page(cursor, 1200)] == uuid_table[1501:2701]


def test_resume_from_a_cursor_returns_what_follows_it(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    assert [p.id for p in catalog.page(1234, 10)] == list(range(1235, 1245))
    assert catalog.page(product_rows, 10) == []


def test_products_inserted_after_a_pass_are_picked_up_by_the_next(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    cursor = read_all(catalog, batch=1000)[-1]
    supabase_stack.sql(
        "insert into product_images (image_url, brand) values ('https://img.test/new1.jpg', 'n'),"
        " ('https://img.test/new2.jpg', null)"
    )
    fresh = catalog.page(cursor, 100)
    assert [p.id for p in fresh] == [product_rows + 1, product_rows + 2]
    assert [(p.image_url, p.brand) for p in fresh] == [
        ("https://img.test/new1.jpg", "n"),
        ("https://img.test/new2.jpg", None),
    ]


def test_page_size_above_the_server_cap_loses_no_rows(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), page_size=5000)
    assert catalog.request_rows == 1000
    assert [p.id for p in catalog.page(None, 2500)] == list(range(1, 2501))


def test_a_silently_capped_answer_is_not_taken_for_the_end(
    supabase_stack: SupabaseStack, product_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ask PostgREST for more rows per request than its db-max-rows: it answers 1,000 without
    # saying so; the catalog must keep going instead of treating that as the last page.
    monkeypatch.setattr(catalog_module, "POSTGREST_MAX_ROWS", 5000)
    catalog = SupabaseCatalog(supabase_stack.client(), page_size=5000)
    assert catalog.request_rows == 5000
    assert [p.id for p in catalog.page(None, 2600)] == list(range(1, product_rows + 1))


def test_rows_keep_url_and_brand(supabase_stack: SupabaseStack, product_rows: int) -> None:
    products = SupabaseCatalog(supabase_stack.client()).page(6, 2)
    assert [(p.id, p.image_url, p.brand) for p in products] == [
        (7, "https://img.test/7.jpg", None),
        (8, "https://img.test/8.jpg", "brand-3"),
    ]


def test_get_returns_existing_ids_in_order_across_chunks(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    wanted = [2000, 5, 3, 99_999, *range(100, 350)]
    assert [p.id for p in catalog.get(wanted)] == [3, 5, *range(100, 350), 2000]


def test_get_uuid_ids(supabase_stack: SupabaseStack, uuid_table: list[str]) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    wanted = [uuid_table[10], uuid_table[3], str(uuid.uuid4())]
    assert [p.id for p in catalog.get(wanted)] == [uuid_table[3], uuid_table[10]]


def test_count_after(supabase_stack: SupabaseStack, product_rows: int) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    assert catalog.count_after(None) == product_rows
    assert catalog.count_after(2000) == product_rows - 2000


def test_describe_names_table_and_host_only(supabase_stack: SupabaseStack) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    assert catalog.describe() == f"Supabase table product_images at {supabase_stack.url}"
    assert catalog.local_root is None


def test_missing_table_is_named(supabase_stack: SupabaseStack) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table="no_such_table")
    with pytest.raises(SupabaseCatalogError, match="no_such_table") as caught:
        catalog.page(None, 10)
    assert "0001_product_images.sql" in str(caught.value)
    assert not caught.value.transient


def test_missing_column_is_named(supabase_stack: SupabaseStack) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), brand_column="maker")
    with pytest.raises(SupabaseCatalogError, match=r"product_images\.maker does not exist"):
        catalog.page(None, 10)


def test_anon_key_gets_a_clear_permission_error(supabase_stack: SupabaseStack) -> None:
    key = supabase_stack.anon_key
    catalog = SupabaseCatalog(supabase_stack.client(key))
    with pytest.raises(SupabaseCatalogError, match="service_role key") as caught:
        catalog.page(None, 10)
    assert "permission denied" in str(caught.value)
    assert key not in str(caught.value)


def test_a_key_signed_with_another_secret_is_rejected(supabase_stack: SupabaseStack) -> None:
    key = make_jwt("another-secret-that-is-at-least-32-chars", "service_role")
    catalog = SupabaseCatalog(supabase_stack.client(key))
    with pytest.raises(SupabaseCatalogError, match="rejected the API key") as caught:
        catalog.page(None, 10)
    assert key not in str(caught.value)


def test_unreachable_supabase_is_transient(supabase_stack: SupabaseStack) -> None:
    from pydantic import SecretStr

    from tests.support.postgrest_stack import free_port

    url, key = f"http://127.0.0.1:{free_port()}", SecretStr(supabase_stack.service_key)
    client = create_supabase_client(url, key, 2.0, retry_reads=False)
    with pytest.raises(CatalogUnavailable, match="cannot reach Supabase") as caught:
        SupabaseCatalog(client).page(None, 10)
    assert caught.value.transient
    assert supabase_stack.service_key not in str(caught.value)


def test_catalog_client_reads_with_the_service_key(
    supabase_stack: SupabaseStack, product_rows: int
) -> None:
    from pydantic import SecretStr

    client = create_supabase_client(supabase_stack.url, SecretStr(supabase_stack.service_key), 5.0)
    assert [p.id for p in SupabaseCatalog(client).page(None, 3)] == [1, 2, 3]


def test_rest_calls_without_an_api_key_are_refused_like_supabase(
    supabase_stack: SupabaseStack,
) -> None:
    import httpx

    response = httpx.get(f"{supabase_stack.url}/rest/v1/product_images")
    assert response.status_code == 401
    assert response.json() == {"message": "No API key found in request"}


def test_random_uuids_inserted_below_the_cursor_are_missed_by_design(
    supabase_stack: SupabaseStack, uuid_table: list[str]
) -> None:
    # Why the migration recommends bigint identity (or UUIDv7) ids: keyset pagination only
    # sees rows after the cursor, and a random v4 uuid can land before it.
    catalog = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    cursor, late = uuid_table[2000], "00000000-0000-0000-0000-000000000001"
    supabase_stack.sql(f"insert into product_images_uuid (id, image_url) values ('{late}', 'x')")
    try:
        assert late not in [p.id for p in catalog.page(cursor, 1000)]
        assert [p.id for p in catalog.get([late])] == [late]  # it exists, the next pass skips it
    finally:
        supabase_stack.sql(f"delete from product_images_uuid where id = '{late}'")


# --- issue 13: counting what the cursor hides, exact ids, exit classes, refused signatures ----


def test_count_at_or_below_counts_rows_added_under_the_cursor(
    supabase_stack: SupabaseStack, product_rows: int, uuid_table: list[str]
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client())
    assert catalog.count_at_or_below(2000) == 2000
    supabase_stack.sql("insert into product_images (id, image_url) values (-1, 'late')")
    assert catalog.count_at_or_below(2000) == 2001  # -1 sorts below any cursor: never read
    assert catalog.count_at_or_below(-5) == 0
    uuids = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    assert uuids.count_at_or_below(uuid_table[99]) == 100


def test_a_cursor_of_the_other_id_type_is_a_mismatch(
    supabase_stack: SupabaseStack, product_rows: int, uuid_table: list[str]
) -> None:
    bigint = SupabaseCatalog(supabase_stack.client())
    with pytest.raises(CatalogMismatch, match="integer ids but the store's cursor 'P9'"):
        bigint.page("P9", 10)
    with pytest.raises(CatalogMismatch):
        bigint.count_at_or_below("12")  # text "12" would compare as a string
    uuids = SupabaseCatalog(supabase_stack.client(), table="product_images_uuid")
    with pytest.raises(CatalogMismatch, match="string ids but the store's cursor 5"):
        uuids.count_after(5)
    with pytest.raises(CatalogMismatch):
        uuids.get([5])


def test_refused_keys_are_auth_errors(supabase_stack: SupabaseStack) -> None:
    # Exit 3 (storage refusing our credentials), like the store, not 2.
    with pytest.raises(CatalogAuthError, match="permission denied"):
        SupabaseCatalog(supabase_stack.client(supabase_stack.anon_key)).page(None, 1)
    other = make_jwt("another-secret-that-is-at-least-32-chars", "service_role")
    with pytest.raises(CatalogAuthError, match="rejected the API key"):
        SupabaseCatalog(supabase_stack.client(other)).page(None, 1)


@pytest.fixture
def numeric_table(supabase_stack: SupabaseStack) -> Iterator[str]:
    supabase_stack.sql(
        "drop table if exists product_images_numeric;"
        "create table product_images_numeric (id numeric primary key, image_url text, brand text);"
        "insert into product_images_numeric values (1, 'a', repeat('B', 5000))"
    )
    supabase_stack.reload_schema("product_images_numeric")
    yield "product_images_numeric"
    supabase_stack.sql("drop table product_images_numeric")


def test_long_brands_are_cut_and_ids_outside_uint64_refused(
    supabase_stack: SupabaseStack, numeric_table: str
) -> None:
    catalog = SupabaseCatalog(supabase_stack.client(), table=numeric_table)
    assert catalog.page(None, 1) == [Product(1, "a", "B" * 200)]
    supabase_stack.sql(f"insert into {numeric_table} values (18446744073709551616, 'b', null)")
    with pytest.raises(
        SupabaseCatalogError, match=r"column id: integer id .* outside int64/uint64"
    ):
        catalog.page(None, 10)
    supabase_stack.sql(f"insert into {numeric_table} values ({'9' * 5000}, 'c', null)")
    with pytest.raises(SupabaseCatalogError, match="wider than int64/uint64 are refused") as caught:
        catalog.page(1, 10)
    assert len(str(caught.value)) < 600


def test_an_unsignable_private_path_is_refused_with_its_own_reason(
    supabase_stack: SupabaseStack, storage: StorageStub
) -> None:
    supabase_stack.sql(
        "truncate product_images restart identity;"
        "insert into product_images (image_url) values ('a/1.jpg'), ('gone/9.jpg')"
    )
    catalog = SupabaseCatalog(supabase_stack.client(), sign_bucket="images", sign_expires_s=60)
    ready, failed = split_refused(catalog.sign_for_fetch(catalog.page(None, 10)))
    assert [p.id for p in ready] == [1] and "token=" in ready[0].image_url
    assert failed == [
        FailedProduct(
            id=2,
            reason=NOT_SIGNED,
            message=f"'gone/9.jpg' not signed in bucket images: {MISSING}",
        )
    ]
    assert NOT_SIGNED != "bad_scheme"
