"""Draining the client connections of a node that is stopping: requests in flight and open
transactions finish within a grace period. Everything is waited on, never polled: request
tasks, the pipelines' idle events, and, when only transactions are left open, `ended` (set
when a transaction ends or a client connection goes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from typing import Protocol

from router.engine.session import Session

__all__ = ["Draining", "Pipeline", "drain"]

log = logging.getLogger("georoute.router")


class Draining(Protocol):
    """A client connection, as a drain sees it (ClientConnection is one)."""

    tasks: set[asyncio.Task[None]]
    session: Session


class Pipeline(Protocol):
    """A node's pipelined connections, as a drain sees them."""

    @property
    def in_flight(self) -> int: ...

    async def drain(self, grace: float) -> None:
        """Return when nothing is in flight, or after `grace` seconds."""
        ...


async def drain(connections: Collection[Draining], pipelines: Sequence[Pipeline],
                ended: asyncio.Event, grace: float) -> None:
    """Let requests in flight and open transactions finish, within `grace` seconds. Those on
    the pipelined fast path are not tasks (their replies go out when their statements finish),
    and one that finishes may start a task (a write's token read apart, a read run again): so
    wait for tasks and pipelines in turn until both are idle. A client with a transaction open
    may still send its statements and its commit meanwhile (new requests outside transactions
    are refused); with only transactions left, wait until one ends or a client goes. Tasks
    still running at the deadline are cancelled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    logged: tuple[int, int, int] | None = None
    while True:
        ended.clear()  # before looking: an end from here on wakes the wait below
        tasks = [t for c in connections for t in c.tasks]
        busy = [p for p in pipelines if p.in_flight]
        open_tx = sum(len(c.session.transactions) for c in connections)
        left = deadline - loop.time()
        if not tasks and not busy and not open_tx:
            return
        if left <= 0:
            for task in tasks:
                task.cancel()
            return
        state = (len(tasks), len(busy), open_tx)
        if state != logged:  # only what changed
            logged = state
            log.info("draining %d requests in tasks, %d pipelines busy, %d transactions open",
                     *state)
        if tasks:
            await asyncio.wait(tasks, timeout=left)
        await asyncio.gather(*(p.drain(max(0.0, deadline - loop.time())) for p in busy))
        if not tasks and not busy:  # only transactions: until one ends, or a client goes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), max(0.0, left))
