"""The time a router node reads, behind one small interface so that timers can be tested
without sleeping: `SYSTEM_CLOCK` in the daemon, `tests/support/clock.FakeClock` in tests."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines and intervals)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (for ids and timestamps people read)."""
        ...


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
