"""In-process progress events, so the CLI can draw a bar while the flow runs in the same process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(event, data)` for "start" ({"total"}) and "batch" ({"done", "failed"}) events."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def publish(event: str, **data: Any) -> None:
    for listener in list(_listeners):
        listener(event, data)
