"""The time a router node reads and the timers it waits on, behind one small interface so that
timers can be tested without sleeping: `SYSTEM_CLOCK` in the daemon,
`tests/support/clock.FakeClock` in tests (its `advance()` moves time and fires the timers due).

The HA timers read it: heartbeats (router/ha/heartbeat.py), the lag monitor's rounds
(router/ha/monitor.py) and the idempotency sweeper (router/engine/idempotency.py). Pure code
(router/core/) never reads a clock: it is handed `now`."""

from __future__ import annotations

import asyncio
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

    async def sleep(self, seconds: float) -> None:
        """Return once `monotonic()` has moved on by `seconds` (a timer: heartbeat intervals,
        monitor rounds). Cancellable, like asyncio.sleep."""
        ...


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
