"""Retry policy for Prefect tasks: retry transient faults only, never auth, 4xx or bad configuration."""

from __future__ import annotations

from typing import Any

import httpx

RETRY_DELAYS_S: list[float] = [2.0, 5.0, 15.0]


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: continue to the retry policy only for transient faults."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


#: Task options for I/O tasks: up to two retries, and only when the fault may pass by itself.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": RETRY_DELAYS_S,
    "retry_condition_fn": retry_transient_only,
}


def is_transient(exc: BaseException) -> bool:
    """True for faults that may pass on their own: 5xx, timeouts, resets, Modal capacity hiccups."""
    if getattr(exc, "transient", False):
        return True
    if isinstance(exc, httpx.TimeoutException | httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return _is_transient_modal_error(exc)


def _is_transient_modal_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    if not module.startswith("modal"):
        return False
    # Auth and invalid-argument errors are permanent; connection and timeouts are not.
    return type(exc).__name__ in {"ConnectionError", "TimeoutError", "FunctionTimeoutError"}
