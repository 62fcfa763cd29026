"""The test kit's FakeClock (tests/support/clock.py): time moves only on advance(), timers fire
in deadline order at their own deadline, a loop that re-arms its timer fires as often as the
window allows, and a cancelled sleep leaves no timer behind. Nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from router.clock import SYSTEM_CLOCK, Clock
from tests.support.clock import FakeClock


def test_it_is_a_clock_and_time_stands_still() -> None:
    clock: Clock = FakeClock(start=10.0, wall_start=1_700_000_000.0)
    assert (clock.monotonic(), clock.wall()) == (10.0, 1_700_000_000.0)
    assert clock.monotonic() == 10.0  # reading it moves nothing
    assert isinstance(SYSTEM_CLOCK.monotonic(), float)


async def test_a_sleeper_wakes_only_when_its_deadline_is_reached() -> None:
    clock = FakeClock(start=0.0)
    sleeper = asyncio.create_task(clock.sleep(1.0))
    await clock.wait_for_sleepers(1)
    assert clock.pending == [1.0]
    assert await clock.advance(0.999) == 0
    assert not sleeper.done()
    assert await clock.advance(0.001) == 1
    await sleeper
    assert clock.monotonic() == 1.0 and clock.pending == []
    assert clock.wall() == 1_800_000_001.0  # the wall clock moves with it


async def test_a_loop_that_rearms_fires_as_often_as_the_window_allows() -> None:
    clock = FakeClock(start=0.0)
    seen: list[float] = []

    async def every_half_second() -> None:
        while True:
            seen.append(clock.monotonic())
            await clock.sleep(0.5)

    task = asyncio.create_task(every_half_second())
    await clock.wait_for_sleepers(1)
    assert await clock.advance(2.0) == 4
    assert seen == [0.0, 0.5, 1.0, 1.5, 2.0]  # each round at its own time, not at 2.0
    assert clock.monotonic() == 2.0 and clock.pending == [2.5]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending == []  # a cancelled sleep leaves no timer


async def test_timers_fire_in_deadline_order_and_ties_in_arming_order() -> None:
    clock = FakeClock(start=0.0)
    order: list[str] = []
    clock.call_later(2.0, lambda: order.append("b"))
    clock.call_later(1.0, lambda: order.append("a"))
    clock.call_later(2.0, lambda: order.append("c"))
    dropped = clock.call_later(1.5, lambda: order.append("never"))
    dropped.cancel()

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append(name)

    task = asyncio.create_task(sleeper("d", 3.0))
    await clock.wait_for_sleepers(1)
    assert await clock.advance(5.0) == 4
    await task
    assert order == ["a", "b", "c", "d"]


async def test_a_task_that_ends_after_its_timer_does_not_hold_advance() -> None:
    clock = FakeClock(start=0.0)
    tasks = [asyncio.create_task(clock.sleep(s)) for s in (1.0, 2.0)]
    await clock.wait_for_sleepers(2)
    assert await clock.advance(10.0) == 2
    assert all(t.done() for t in tasks)


async def test_zero_and_negative() -> None:
    clock = FakeClock(start=0.0)
    await clock.sleep(0)  # a yield only
    assert clock.pending == [] and clock.monotonic() == 0.0
    with pytest.raises(ValueError, match="does not go back"):
        await clock.advance(-1.0)
    with pytest.raises(AssertionError, match="timed out"):
        await clock.wait_for_sleepers(1, within=0.01)  # nobody sleeps: a bounded wait fails
