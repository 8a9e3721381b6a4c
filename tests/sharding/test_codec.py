"""Byte formats: id maps round-trip every id type; digests of parts equal digests of the whole."""

from __future__ import annotations

import hashlib

import pytest

from sharding.codec import decode_ids, encode_ids, sha256_hex, xxh3_hex


def test_id_maps_round_trip_ints_and_strings() -> None:
    ids = [1, 2**63 - 1, "sku-é-42", "0042", -7]
    data = encode_ids(ids)
    assert decode_ids(data) == ids
    assert data == b'[1,9223372036854775807,"sku-\\u00e9-42","0042",-7]'  # stable bytes


@pytest.mark.parametrize("data", [b'{"a": 1}', b"[1,", b"", b"not json"])
def test_a_broken_id_map_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_ids(data)


def test_digests_of_parts_equal_digests_of_the_joined_bytes() -> None:
    whole = bytes(range(256)) * 1000
    parts = [memoryview(whole)[:45], bytearray(whole[45:1000]), whole[1000:]]
    assert sha256_hex(*parts) == hashlib.sha256(whole).hexdigest() == sha256_hex(whole)
    assert xxh3_hex(*parts) == xxh3_hex(whole) != xxh3_hex(whole[:-1])
