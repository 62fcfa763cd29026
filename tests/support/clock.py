"""A `router.clock.Clock` whose time moves only when the test says so.

    clock = FakeClock()
    service = HeartbeatService(config, topology, clock=clock)   # its timers sleep on `clock`
    await clock.wait_for_sleepers(1)      # the service's loop is parked on its interval
    await clock.advance(2.0)              # four 0.5 s intervals pass: four rounds, no sleeping

`advance()` fires the timers that fall due in the window in deadline order, setting the time
to each deadline as it fires; after each it lets the woken task run until it sleeps on this
clock again or ends, so a loop that re-arms its timer fires as often as the window allows.
Only waits on real events (with a deadline) are used: nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FakeClock", "FakeTimer"]

# How long (real seconds) `advance` lets a woken task take before it sleeps again or ends:
# a deadline on a condition, far above what a step of the code under test needs.
SETTLE_SECONDS = 5.0


@dataclass(order=True)
class FakeTimer:
    deadline: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    task: asyncio.Task[object] | None = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[FakeTimer] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None  # made on the loop that first needs it
        self.fired = 0

    # ---- router.clock.Clock ----------------------------------------------------------------

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # a yield, as asyncio.sleep(0): no time passes
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self._add(self._now + seconds, wake, asyncio.current_task())
        try:
            await future
        finally:
            if not future.done() or future.cancelled():
                self._remove(timer)

    # ---- timers without a task -------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        """`callback()` when the clock reaches now + `delay` (as loop.call_later)."""
        return self._add(self._now + max(0.0, delay), callback, None)

    # ---- driving time ----------------------------------------------------------------------

    @property
    def pending(self) -> list[float]:
        """The deadlines of the timers still armed, earliest first."""
        return sorted(t.deadline for t in self._timers if not t.cancelled)

    async def advance(self, seconds: float) -> int:
        """Move time on by `seconds`, firing every timer that falls due on the way (those armed
        by the woken tasks too). Returns how many fired."""
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._now + seconds
        fired = 0
        while self._timers and self._timers[0].deadline <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.deadline)
            timer.callback()
            fired += 1
            self.fired += 1
            await self._settle(timer)
        self._now = target
        return fired

    async def wait_for_sleepers(self, count: int = 1, within: float = SETTLE_SECONDS) -> None:
        """Until at least `count` tasks are asleep on this clock (their loops are parked)."""
        await self._wait(lambda: self._sleepers() >= count, within,
                         f"{count} task(s) sleeping on the fake clock")

    # ---- inside ----------------------------------------------------------------------------

    def _add(self, deadline: float, callback: Callable[[], None],
             task: asyncio.Task[object] | None) -> FakeTimer:
        timer = FakeTimer(deadline, next(self._seq), callback, task)
        heapq.heappush(self._timers, timer)
        self._notify()
        return timer

    def _remove(self, timer: FakeTimer) -> None:
        timer.cancel()
        if timer in self._timers:
            self._timers.remove(timer)
            heapq.heapify(self._timers)
        self._notify()

    def _sleepers(self) -> int:
        return sum(1 for t in self._timers if t.task is not None and not t.cancelled)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _settle(self, timer: FakeTimer) -> None:
        """Let what `timer` woke run: its task until it sleeps on this clock again or ends; a
        plain callback needs nothing but the loop's next turn."""
        task = timer.task
        if task is None:
            await asyncio.sleep(0)
            return
        task.add_done_callback(lambda _: self._notify())

        def parked_or_done() -> bool:
            return task.done() or any(t.task is task and not t.cancelled for t in self._timers)

        await self._wait(parked_or_done, SETTLE_SECONDS,
                         f"task {task.get_name()} to sleep again or end after its timer fired")

    async def _wait(self, condition: Callable[[], bool], within: float, what: str) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        try:
            async with asyncio.timeout(within):
                while not condition():
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within}s waiting for {what}") from None
