"""A fake time line for lease tests: one monotonic clock, wall clocks that may be skewed."""

from __future__ import annotations

from collections.abc import Callable


class Time:
    """One real time line; each process reads it through its own (skewed) wall clock."""

    def __init__(self) -> None:
        self.mono = 5_000.0
        self.wall = 1_700_000_000.0
        self.on_sleep: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds
        self.on_sleep()

    def monotonic(self) -> float:
        return self.mono

    def clock(self, skew_s: float = 0.0) -> Callable[[], float]:
        return lambda: self.wall + skew_s
