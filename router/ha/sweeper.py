"""Finds backend connections that went silent (half-open links) and closes them.

A periodic sweep, not a timer per request: the hot path only keeps, per pipelined connection,
when its oldest request began to wait (pgwire's `waiting_since`, set as replies complete).
Each sweep looks at every node. A node is checked when one of its pipelined connections has
waited `database.connect_timeout_seconds` for a reply, or when the node is not up (the
monitor's probe failed: its own connection may have gone silent, and so may the pools').
A check opens a new connection to the node and asks which of the router's sessions the server
still serves (router/core/liveness.py decides); the lost connections are closed, their
requests failed as connections lost (a write's outcome unknown, never "not applied"), and
idle pooled ones leave the pool. When the node cannot be reached at all, the silent
connections are closed too and the node is marked down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from router.backend.tls import connect_asyncpg
from router.clock import SYSTEM_CLOCK, Clock
from router.core.health import HealthEvent, NodeHealth
from router.core.liveness import SESSIONS_SQL, ServerSession, lost_sessions
from router.ha.topology import NodeState, Topology

__all__ = ["SilentLinkSweeper"]

log = logging.getLogger("georoute.liveness")

_UNREACHABLE = (OSError, TimeoutError, asyncpg.InterfaceError)


class SilentLinkSweeper:
    """`run()` runs for the daemon's life. `topology` is asked each sweep, as a reload
    replaces the daemon's. The interval between sweeps sleeps on `clock`."""

    def __init__(self, topology: Callable[[], Topology], clock: Clock = SYSTEM_CLOCK) -> None:
        self._topology = topology
        self._clock = clock
        self._checks: dict[str, asyncio.Task[int]] = {}  # node name -> its check running
        self._checked_at: dict[str, float] = {}  # node name -> when its last check began
        self.checks = 0
        self.lost = 0  # connections closed as lost

    async def run(self) -> None:
        """Sweep until cancelled (the daemon spawns it; a check running then is cancelled)."""
        try:
            while True:
                interval = 1.0
                try:
                    interval = self.sweep()
                except Exception:  # the sweeper must never die
                    log.exception("sweeping backend connections failed")
                await self._clock.sleep(interval)
        finally:
            for task in list(self._checks.values()):
                task.cancel()

    def sweep(self) -> float:
        """Start a check of each node that needs one; returns the interval to the next sweep
        (a third of the shortest bound)."""
        now = time.monotonic()  # pgwire's times are on this clock
        shortest = 3.0
        for node in self._topology().nodes():
            bound = node.pool.database.connect_timeout_seconds
            shortest = min(shortest, bound)
            if node.name in self._checks or now - self._checked_at.get(node.name, -1e9) < bound:
                continue  # one check at a time, at most one per bound per node
            silent = any(since is not None and now - since >= bound
                         for since in _waits(node))
            unwell = node.health is not NodeHealth.UP and _has_connections(node)
            if silent or unwell:
                self._checked_at[node.name] = now
                task = asyncio.create_task(self.check(node, bound), name=f"liveness:{node.name}")
                self._checks[node.name] = task
                task.add_done_callback(self._checked)
        return max(0.05, shortest / 3)

    def _checked(self, task: asyncio.Task[int]) -> None:
        for name, running in list(self._checks.items()):
            if running is task:
                del self._checks[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("checking backend connections failed", exc_info=task.exception())

    async def check(self, node: NodeState, bound: float) -> int:
        """Ask the node which of our sessions it still serves; close the connections that
        are lost. Returns how many were closed."""
        self.checks += 1
        pipelined = {c.backend_pid: c for c in node.pool.pipeline.open_connections()
                     if c.backend_pid is not None}
        pooled = node.pool.sessions()
        if not pipelined and not pooled:
            return 0
        started = time.monotonic()
        waits = {pid: c.waiting_since for pid, c in pipelined.items()}
        ours: dict[int, float | None] = dict.fromkeys(pooled)
        for pid, since in waits.items():
            ours[pid] = None if since is None else started - since
        try:
            seen = await self._ask(node, list(ours), bound)
        except asyncpg.PostgresError as exc:  # the server answered, and refused: it is up
            log.info("cannot check %s's connections: %s", node.name, exc)
            return 0
        except _UNREACHABLE as exc:
            return self._unreachable(node, pipelined.values(), started, bound, exc)
        lost = lost_sessions(ours, seen, bound)
        closed = 0
        for pid, why in lost.items():
            conn = pipelined.get(pid)
            if conn is None:
                continue
            if waits[pid] is not None and conn.waiting_since != waits[pid]:
                continue  # a reply came while we asked: it is alive after all
            log.warning("%s: pipelined connection (pid %d) is lost: %s", node.name, pid, why)
            conn.declare_lost(why)
            closed += 1
        dead_pooled = {pid for pid in lost if pid in pooled}
        if dead_pooled:
            log.warning("%s: %d pooled connection(s) lost: their server sessions are gone",
                        node.name, len(dead_pooled))
            closed += node.pool.drop_lost(dead_pooled)
        self._count(node, closed)
        return closed

    async def _ask(self, node: NodeState, pids: list[int],
                   bound: float) -> dict[int, ServerSession]:
        conn = await connect_asyncpg(node.pool.database, node.address,
                                     {"application_name": "georoute-liveness"},
                                     statement_cache_size=0)
        try:
            rows = await conn.fetch(SESSIONS_SQL, pids, timeout=bound)
        except BaseException:
            conn.terminate()
            raise
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), bound)
        return {r[0]: ServerSession(r[0], r[1], r[2]) for r in rows}

    def _unreachable(self, node: NodeState, conns: Any, started: float, bound: float,
                     exc: BaseException) -> int:
        """The node cannot be reached: the connections silent past the bound cannot be
        answered either; the node is down (as when any connection cannot be made)."""
        closed = 0
        for conn in conns:
            since = conn.waiting_since
            if since is not None and started - since >= bound:
                conn.declare_lost(f"no reply for {started - since:.1f}s and {node.name} cannot "
                                  f"be reached ({type(exc).__name__}: {exc})")
                closed += 1
        if closed:
            log.warning("%s: %d silent pipelined connection(s) closed: the node cannot be "
                        "reached: %s", node.name, closed, exc)
        node.record(HealthEvent.CONNECT_FAILED, f"{type(exc).__name__}: {exc}")
        self._count(node, closed)
        return closed

    def _count(self, node: NodeState, closed: int) -> None:
        if closed:
            self.lost += closed
            node.pool.closed_total["lost"] += closed


def _waits(node: NodeState) -> list[float | None]:
    return [c.waiting_since for c in node.pool.pipeline.open_connections()]


def _has_connections(node: NodeState) -> bool:
    return node.pool.size > 0 or bool(node.pool.pipeline.open_connections())
