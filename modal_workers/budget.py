"""A cap on the decoded pixels that a batch's preparing threads hold at the same time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """At most `capacity` pixels held at once; one image larger than that runs alone.

    Threads call `hold(pixels)` around decode + prepare: it waits until the pixels fit (or nothing
    else is held), so 16 threads decoding 40-megapixel images cannot hold 16 x 40 M pixels.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"pixel budget must be positive, not {capacity}")
        self.capacity = capacity
        self.held = 0
        self.peak = 0  # the most pixels ever held at once (for tests and benches)
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(int(pixels), 0)
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + pixels <= self.capacity)
            self.held += pixels
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._changed:
                self.held -= pixels
                self._changed.notify_all()
