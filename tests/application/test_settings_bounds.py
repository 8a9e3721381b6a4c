"""Settings refuse values the layers below cannot work with, before anything is opened."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from application.settings import load_settings
from sharding.lease import MIN_TTL_S


def test_a_lease_ttl_below_the_store_minimum_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="lease_ttl_s"):
        load_settings(lease_ttl_s=MIN_TTL_S / 200)
    assert load_settings(lease_ttl_s=MIN_TTL_S).store.lease_ttl_s == MIN_TTL_S


def test_unknown_embedders_and_backends_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="unknown embedder 'siglip'"):
        load_settings(embedder="siglip")
    with pytest.raises(ValidationError, match="unknown backend 'gpu'"):
        load_settings(backend="gpu")
