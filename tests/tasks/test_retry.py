"""Prefect retries happen for transient faults only: never auth, 4xx or bad configuration."""

from __future__ import annotations

import httpx
import pytest
from prefect.states import Completed, Failed

from application.catalog.supabase import CatalogUnavailable
from application.connect import ConfigError
from sharding.errors import ObjectNotFound, StorageAuthError, StorageUnavailable
from tasks.retry import is_transient, retry_transient_only

_REQUEST = httpx.Request("GET", "http://127.0.0.1/x")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StorageUnavailable("503 after retries"), True),
        (CatalogUnavailable("cannot reach Supabase"), True),
        (httpx.ReadTimeout("slow", request=_REQUEST), True),
        (httpx.ConnectError("reset", request=_REQUEST), True),
        (httpx.HTTPStatusError("502", request=_REQUEST, response=httpx.Response(502)), True),
        (httpx.HTTPStatusError("429", request=_REQUEST, response=httpx.Response(429)), True),
        (httpx.HTTPStatusError("404", request=_REQUEST, response=httpx.Response(404)), False),
        (StorageAuthError("403 bad key"), False),
        (ObjectNotFound("missing"), False),
        (ConfigError("SUPABASE_URL not set"), False),
        (ValueError("bad kinds"), False),
    ],
)
def test_only_transient_faults_are_retried(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient
    assert retry_transient_only(None, None, Failed(data=exc)) is transient


def test_a_completed_state_is_never_retried() -> None:
    assert retry_transient_only(None, None, Completed(data=1)) is False
