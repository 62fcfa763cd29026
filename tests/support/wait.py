"""Waiting in tests on a condition with a deadline, never on a bare sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["until"]


async def until(condition: Callable[[], bool], within: float = 5.0, what: str = "it",
                poll: float = 0.001) -> None:
    """Re-check `condition` (something real I/O changes: a datagram or bytes arriving) until
    it holds; fail after `within` seconds. `poll=0` only yields to the event loop between
    checks (no timer at all), for tests whose time is a FakeClock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(poll)
